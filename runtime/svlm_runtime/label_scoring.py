"""Answer probabilities for any tokenizer: what to score, and how the scores become probabilities.

Pure Python (no numpy, torch or transformers), so the ONNX runtime and the PyTorch path share it; each
scores the returned token sequences with its own forward pass (``svlm_runtime.package`` with its KV cache,
``factory.inference.TorchModel`` with a batched forward). The tags are the ``AnswerFormat``'s: a package's
own, or the defaults.

Why not "the label's first token after ``<answer>``": with a real BPE tokenizer ``<answer>`` is several
tokens (Qwen2.5: ``<``, ``answer``, ``>``), and a label's tokens depend on the text before it
(``>fear`` → ``>f``, ``ear``; ``>sadness`` → ``>s``, ``ad``, ``ness``), so neither "the ``<answer>``
token" nor "a label's first token" exists. Instead each label is scored as a whole sequence in context:

1. Find the model's answer in the decoded text: the text up to and including the ``<answer>`` of the last
   answer block, when that block holds a valid label. Otherwise the result is *forced*: the text up to its
   reasoning's end (before ``</think>``, or before ``<answer>``) with ``</think><answer>`` appended
   (``<answer>`` for the label-only style).
2. Tokenize prefix + label + ``</answer>`` for every label. ``</answer>`` is included so a label's score is
   the probability of that exact, closed answer: without it "awe" would also collect the mass of "awesome",
   which the parser rejects.
3. Keep as context the generated tokens that every label's tokenization shares with what the model produced
   (the longest common token prefix). This backs off to a token boundary at or before the end of the
   ``<answer>`` text by itself, so merges such as ``>f`` are scored as part of the label. Tokens after it
   that all labels share (a forced ``</think><answer>``, or a re-tokenized tail) are a common ``bridge``.
4. Each label's remaining tokens are scored after context + bridge; summed log-probs are renormalized over
   the labels (a softmax), so what every label shares cancels out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from svlm_runtime.answer_format import DEFAULT, AnswerFormat


@dataclass(frozen=True)
class LabelScoring:
    """What to score: ``generated[:kept] + bridge`` is the context, then each label's ``labels[label]``."""

    kept: int  # generated tokens kept as context (their KV cache is reused)
    bridge: list[int]  # tokens after them that every label shares (e.g. a forced "</think><answer>")
    labels: dict[str, list[int]]  # each label's tokens to score after the context and the bridge
    forced: bool  # the model gave no valid answer: scored after its reasoning + "</think><answer>"


def _answer_prefix(text: str, labels: Sequence[str], style: str, fmt: AnswerFormat) -> tuple[str, bool]:
    """The text the label follows, and whether it was forced (no valid answer in ``text``)."""
    (_, think_close), (answer_open, answer_close) = fmt.think, fmt.answer
    blocks = list(re.finditer(re.escape(answer_open) + r"(.*?)" + re.escape(answer_close), text, re.S))
    valid = {lab.lower() for lab in labels}
    if blocks and blocks[-1].group(1).strip().lower() in valid:
        return text[:blocks[-1].start(1)], False
    cuts = [i for i in (text.find(think_close), text.find(answer_open)) if i >= 0]
    reasoning = text[:min(cuts)] if cuts else text
    return reasoning + (answer_open if style == "label" else think_close + answer_open), True


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_label_scoring(generated: Sequence[int], encode: Callable[[str], list[int]],
                       decode: Callable[[Sequence[int]], str], labels: Sequence[str],
                       style: str = "cot", answer_format: AnswerFormat = DEFAULT) -> LabelScoring:
    """What to score for each label after the model's generated ids (see the module docstring).

    Args:
        generated: the completion's token ids, without the end-of-sequence token.
        encode: text -> ids without special tokens (``tokenizer.encode(text, add_special_tokens=False)``).
        decode: ids -> text without special tokens (``tokenizer.decode(ids, skip_special_tokens=True)``).
        labels: the label set, in the order the probabilities are returned.
        style: "cot" (a forced answer follows "</think><answer>") or "label" (it follows "<answer>").
        answer_format: whose tags to use (a package's own; its labels are not used, ``labels`` are).

    >>> enc = lambda text: [ord(c) for c in text]
    >>> dec = lambda ids: "".join(map(chr, ids))
    >>> plan = plan_label_scoring(enc("<think>x</think><answer>awe</answer>"), enc, dec, ["awe", "anger"])
    >>> plan.kept, plan.bridge, {k: dec(v) for k, v in plan.labels.items()}, plan.forced
    (25, [], {'awe': 'we</answer>', 'anger': 'nger</answer>'}, False)
    >>> plan = plan_label_scoring(enc("<think>x"), enc, dec, ["awe", "anger"])
    >>> plan.kept, dec(plan.bridge), plan.forced
    (8, '</think><answer>a', True)
    """
    generated = list(generated)
    prefix, forced = _answer_prefix(decode(generated), labels, style, answer_format)
    full = {lab: encode(prefix + lab + answer_format.answer[1]) for lab in labels}
    kept = min(_common_prefix(generated, ids) for ids in full.values())
    tails = [ids[kept:] for ids in full.values()]
    shared = min(_common_prefix(tails[0], t) for t in tails)
    rest = {lab: ids[kept + shared:] for lab, ids in full.items()}
    empty = [lab for lab, ids in rest.items() if not ids]
    if empty:
        raise ValueError(f"labels {empty} tokenize as a prefix of another label's answer; cannot score them apart")
    return LabelScoring(kept=kept, bridge=tails[0][:shared], labels=rest, forced=forced)


def label_probabilities(logprob_sums: dict[str, float]) -> dict[str, float]:
    """Summed log-probs per label -> probabilities renormalized over the labels (a softmax).

    >>> probs = label_probabilities({"awe": math.log(0.2), "fear": math.log(0.6)})
    >>> round(probs["awe"], 6), round(probs["fear"], 6)
    (0.25, 0.75)
    """
    top = max(logprob_sums.values())
    weights = {lab: math.exp(v - top) for lab, v in logprob_sums.items()}
    total = sum(weights.values())
    return {lab: w / total for lab, w in weights.items()}
