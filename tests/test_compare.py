"""Export's comparison with PyTorch (``export.compare``) on synthetic packages: a divergence is agreement
only at a near-exact tie in PyTorch's logits, tokens after the end token are ignored, labels and the
logit gap are what the package produced."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from export.compare import agreement_text, compare, first_divergence, until_eos
from factory.prompts import ANSWER_FORMAT

EOS = 2
# a character per token: 10 -> "<", 11 -> "a", ...; what the fake tokenizer decodes
VOCAB = {10: "<answer>", 11: "awe", 12: "fear", 13: "</answer>", 14: "x"}
SPECIAL = {15: "<|pad|>"}  # a special token: decoded as text only when special tokens are not skipped


def _decode(ids, skip_special_tokens):
    return "".join(VOCAB.get(i) or ("" if skip_special_tokens is True else SPECIAL[i]) for i in ids)


def _vision(_, feed):
    assert feed["pixel_values"].dtype == np.float32  # what the graph takes (onnxruntime refuses float64)
    return [feed["pixel_values"][:, 0, 0, :1]]


class FakePackage:
    """Answers each image (its pixel value's first entry is the index) with scripted tokens and logits."""

    eos_ids = {EOS}
    answer_format = ANSWER_FORMAT  # a real package's comes from its manifest

    def __init__(self, answers: list[list[int]], logits: list[np.ndarray]):
        self.answers, self.logits, self.asked = answers, logits, []
        self.vision = SimpleNamespace(run=_vision)
        self.tokenizer = SimpleNamespace(decode=_decode)

    def prefill(self, feats, all_logits=False):
        assert all_logits  # the gap is over every prompt position, not only the last
        return self.logits[int(feats[0, 0])][None], []

    def generate(self, pixel_values, max_new_tokens, label_probs):
        self.asked.append((max_new_tokens, label_probs))
        ids = self.answers[int(pixel_values[0, 0, 0, 0])][:max_new_tokens]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return SimpleNamespace(token_ids=ids, label=self.answer_format.parse(text).label)


AWE, FEAR = [10, 11, 13], [10, 12, 13]


def _ref(i: int, tokens: list[int], gaps: list[float], logits: np.ndarray) -> dict:
    return {"pixel_values": np.full((1, 3, 2, 2), float(i)), "logits": logits, "tokens": tokens, "top2_gaps": gaps}


def _case(pairs, gaps=None, shift=0.0):
    """pairs: (PyTorch tokens, package tokens) per image; logits differ by ``shift`` on image 0."""
    logits = [np.arange(6, dtype=np.float32) * (i + 1) for i in range(len(pairs))]
    refs = [_ref(i, want, (gaps or {}).get(i, [1.0] * 8), logits[i] + (shift if i == 0 else 0.0))
            for i, (want, _) in enumerate(pairs)]
    return FakePackage([got for _, got in pairs], logits), refs


def test_identical_packages_agree_everywhere():
    pkg, refs = _case([(AWE + [EOS], AWE), (FEAR + [EOS, 0, 0], FEAR)])
    v = compare(pkg, refs, max_new_tokens=12)
    assert v == {"images": 2, "max_abs_logit_diff": 0.0, "greedy_tokens_identical": 1.0, "diverged_at_ties": 0,
                 "labels_valid_torch": 2, "label_agreement": 1.0,
                 "labels_torch_onnx": [["awe", "awe"], ["fear", "fear"]]}
    assert pkg.asked == [(12, False), (12, False)]  # the same budget; no label scoring during validation


def test_a_divergence_away_from_a_tie_is_disagreement():
    pkg, refs = _case([(AWE, FEAR), (AWE, AWE)], gaps={0: [1.0, 0.5, 1.0]})
    v = compare(pkg, refs, max_new_tokens=12)
    assert v["greedy_tokens_identical"] == 0.5 and v["diverged_at_ties"] == 0
    assert v["label_agreement"] == 0.5 and v["labels_torch_onnx"][0] == ["awe", "fear"]


@pytest.mark.parametrize("gap,agrees", [(0.0, True), (5e-5, True), (1e-4, False), (0.3, False)])
def test_a_divergence_at_a_tie_in_pytorchs_logits_counts_as_agreement(gap, agrees):
    pkg, refs = _case([(AWE, FEAR)], gaps={0: [1.0, gap, 1.0]})  # they part at step 1
    v = compare(pkg, refs, max_new_tokens=12, tie=1e-4)
    assert v["greedy_tokens_identical"] == float(agrees) and v["diverged_at_ties"] == int(agrees)
    assert v["label_agreement"] == 0.0  # the labels still differ, and say so


def test_only_the_first_divergence_is_judged():
    # a tie later on does not excuse an earlier divergence
    pkg, refs = _case([(AWE, FEAR)], gaps={0: [1.0, 0.5, 0.0]})
    assert compare(pkg, refs, max_new_tokens=12)["greedy_tokens_identical"] == 0.0


def test_a_package_that_stops_early_or_runs_on_diverges_where_the_shorter_one_ends():
    pkg, refs = _case([(AWE + [14], AWE), (AWE, AWE + [14])], gaps={0: [1.0, 1.0, 1.0, 0.0], 1: [1.0, 1.0, 1.0, 1.0]})
    v = compare(pkg, refs, max_new_tokens=12)
    assert v["greedy_tokens_identical"] == 0.5 and v["diverged_at_ties"] == 1  # image 0 ends at a tie
    # no recorded gap at the point of divergence: not excused
    pkg, refs = _case([(AWE, AWE + [14])], gaps={0: [1.0, 1.0, 1.0]})
    assert compare(pkg, refs, max_new_tokens=12)["greedy_tokens_identical"] == 0.0


def test_tokens_after_pytorchs_end_token_are_ignored():
    pkg, refs = _case([(AWE + [EOS, 14, 14], AWE)])
    assert compare(pkg, refs, max_new_tokens=12)["greedy_tokens_identical"] == 1.0


def test_the_logit_gap_is_the_largest_over_images_and_positions():
    pkg, refs = _case([(AWE, AWE), (AWE, AWE)], shift=0.25)
    refs[1]["logits"] = refs[1]["logits"].copy()
    refs[1]["logits"][3] -= 0.5
    assert compare(pkg, refs, max_new_tokens=12)["max_abs_logit_diff"] == pytest.approx(0.5)


def test_labels_are_parsed_from_pytorchs_tokens_and_the_packages_answer():
    pkg, refs = _case([([10, 14, 13], AWE), (FEAR, [10, 14])])  # not a label; cut before the label
    v = compare(pkg, refs, max_new_tokens=12)
    assert v["labels_torch_onnx"] == [[None, "awe"], ["fear", None]]
    assert v["labels_valid_torch"] == 1 and v["label_agreement"] == 0.0  # over the one valid PyTorch label


def test_agreement_counts_only_images_where_pytorch_gave_a_label():
    """Two parse failures are not an agreement: the default run's 4 validation images all gave no label in
    both runtimes, and the card said "label agreement 100 %"."""
    none = [10, 14, 13]  # not a label
    pkg, refs = _case([(none, none), (none, none)])
    v = compare(pkg, refs, max_new_tokens=12)
    assert v["labels_valid_torch"] == 0 and v["label_agreement"] is None
    assert agreement_text(v) == "not measured: PyTorch gave no valid label on any of the 2 images"
    pkg, refs = _case([(none, none), (AWE, AWE), (FEAR, AWE), (none, AWE)])
    v = compare(pkg, refs, max_new_tokens=12)
    assert v["labels_valid_torch"] == 2 and v["label_agreement"] == 0.5
    assert agreement_text(v) == "50% of the 2 of 4 images where PyTorch gave a valid label"


def test_helpers():
    assert until_eos([EOS, 1], {EOS}) == [] and until_eos([1, 3], {EOS}) == [1, 3]
    assert first_divergence([], [1]) == 0 and first_divergence([4, 5], [4, 5]) == 2


def test_reference_labels_are_decoded_as_the_runtime_decodes_its_own():
    """Special tokens are skipped on both sides (the runtime's ``generate`` skips them), so a special token
    inside PyTorch's answer does not turn its label into a parse failure; the vision graph gets float32."""
    pkg, refs = _case([([10, 11, 15, 13, EOS], AWE)])
    v = compare(pkg, refs, max_new_tokens=12)
    assert v["labels_torch_onnx"] == [["awe", "awe"]] and v["label_agreement"] == 1.0
