"""How an ONNX package is checked against PyTorch at export: the prefill logit gap and greedy-token and label
agreement on real images (``export.build`` fails an fp32 export that does not match and records the figures
of the quantized ones in their manifests).

Its own module so that the rule can be tested on synthetic divergences and ties, and mutation-tested
(``benchmarks/mutation.sh``), without exporting a model.
"""

from __future__ import annotations

import numpy as np



def until_eos(tokens, eos_ids) -> list[int]:
    """The tokens before the first end-of-sequence token, as the runtime stops there.

    >>> until_eos([5, 6, 2, 7], {2})
    [5, 6]
    """
    out = []
    for t in tokens:
        if t in eos_ids:
            break
        out.append(t)
    return out


def first_divergence(got, want) -> int:
    """The first position where two token lists differ (the shorter length when one is a prefix of the other).

    >>> first_divergence([1, 2, 3], [1, 5, 3]), first_divergence([1, 2], [1, 2, 3])
    (1, 2)
    """
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def compare(package, refs, max_new_tokens: int, tie: float = 1e-4) -> dict:
    """Prefill logit gap and greedy-token agreement of an ONNX package against the PyTorch references.

    Args:
        package: an ``svlm_runtime.Package`` (or anything with its ``vision``, ``prefill``, ``generate``,
            ``eos_ids`` and ``tokenizer``).
        refs: per image, from ``export.build.torch_reference``: ``pixel_values``, PyTorch's prefill
            ``logits``, its greedy ``tokens`` and ``top2_gaps`` (the gap between the two largest logits at
            each generated step).
        max_new_tokens: the generation budget, the same as the references'.
        tie: a divergence counts as agreement only where PyTorch's top-2 gap at the first differing step is
            below this: there the two runtimes' rounding, not the export, picks the token.
    """
    gaps, same_tokens, same_labels, labels, ties, valid = [], 0, 0, [], 0, 0
    for ref in refs:
        feats = package.vision.run(None, {"pixel_values": ref["pixel_values"].astype(np.float32)})[0]
        # M-RoPE packages (Qwen) place the image by its grid, which their vision input's shape carries
        grid = package.image_grid(ref["pixel_values"]) if getattr(package, "mrope", False) else None
        logits, _ = package.prefill(feats, all_logits=True, **({"grid": grid} if grid else {}))
        gaps.append(float(np.abs(logits[0] - ref["logits"]).max()))
        gen = package.generate(pixel_values=ref["pixel_values"], max_new_tokens=max_new_tokens, label_probs=False)
        want = until_eos(ref["tokens"], package.eos_ids)
        got = gen.token_ids
        if got == want:
            same_tokens += 1
        else:
            first = first_divergence(got, want)
            at_tie = first < len(ref["top2_gaps"]) and ref["top2_gaps"][first] < tie
            ties += at_tie
            same_tokens += at_tie
        # judged by the package's own answer format (its task's labels and rule), as the runtime judges gen
        ref_label = package.answer_format.parse(package.tokenizer.decode(want, skip_special_tokens=True)).label
        if ref_label is not None:  # "agreement" on two parse failures would say nothing about the labels
            valid += 1
            same_labels += gen.label == ref_label
        labels.append([ref_label, gen.label])
    n = len(refs)
    return {"images": n, "max_abs_logit_diff": max(gaps), "greedy_tokens_identical": same_tokens / n,
            "diverged_at_ties": ties, "labels_valid_torch": valid,
            "label_agreement": same_labels / valid if valid else None, "labels_torch_onnx": labels}


def agreement_text(v: dict) -> str:
    """The label agreement as the card and the logs state it: over the images where PyTorch gave a label.

    >>> agreement_text({"images": 32, "labels_valid_torch": 20, "label_agreement": 0.95})
    '95% of the 20 of 32 images where PyTorch gave a valid label'
    >>> agreement_text({"images": 4, "labels_valid_torch": 0, "label_agreement": None})
    'not measured: PyTorch gave no valid label on any of the 4 images'
    """
    if not v.get("labels_valid_torch"):
        return f"not measured: PyTorch gave no valid label on any of the {v['images']} images"
    return (f"{v['label_agreement']:.0%} of the {v['labels_valid_torch']} of {v['images']} images where PyTorch "
            "gave a valid label")
