"""The one place that owns the question, the answer format and answer parsing.

Every stage, benchmark, exporter and the demo imports from here, so a trained model is always asked the
same question and always judged by the same parser. The format is the R1 convention (DESIGN.md §1, OURS):

    <think>free-text reasoning</think><answer>label</answer>

``label`` is one of the 8 EmoSet emotions in lower case. Parsing is tolerant of case and whitespace and
strict about the label set: "  Sadness " is sadness, "sad" is not an answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
FORMAT_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def _load_emotions() -> tuple[str, ...]:
    info = json.loads(resources.files("factory.data").joinpath("info.json").read_text())
    idx2label = info["emotion"]["idx2label"]
    return tuple(idx2label[str(i)] for i in range(len(idx2label)))


#: EmoSet's emotions in the official index order (info.json): positives first, not alphabetical.
EMOTIONS: tuple[str, ...] = _load_emotions()
LABEL2ID: dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}

_CHOICES = ", ".join(EMOTIONS)
#: The question for chain-of-thought answers (stages 1-4 and the teachers).
COT_QUESTION = (
    f"Which emotion does this image evoke? Choose one of: {_CHOICES}. "
    f"First reason about the visual evidence inside {THINK_OPEN}{THINK_CLOSE}, "
    f"then give the emotion inside {ANSWER_OPEN}{ANSWER_CLOSE}."
)
#: The question for the label-only baseline (the paper's comparison model).
LABEL_QUESTION = (
    f"Which emotion does this image evoke? Choose one of: {_CHOICES}. "
    f"Answer with the emotion only, inside {ANSWER_OPEN}{ANSWER_CLOSE}."
)
QUESTIONS = {"cot": COT_QUESTION, "label": LABEL_QUESTION}

# Strict shape: one think block with content, one answer block, nothing but whitespace around them.
_STRICT = re.compile(r"\A\s*<think>(?P<think>.+?)</think>\s*<answer>(?P<answer>[^<]*)</answer>\s*\Z", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


def question(style: str = "cot") -> str:
    """Return the question text for ``style`` ("cot" or "label")."""
    try:
        return QUESTIONS[style]
    except KeyError:
        raise ValueError(f"unknown prompt style {style!r}; valid: {sorted(QUESTIONS)}") from None


def build_messages(style: str = "cot", answer: str | None = None) -> list[dict]:
    """Chat messages with one image placeholder and the question; add ``answer`` as the assistant turn.

    The content-list form is what every family's chat template and trl's VLM collators understand.

    >>> build_messages()[0]["content"][0]
    {'type': 'image'}
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question(style)}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def render_prompt(processor, style: str = "cot") -> str:
    """The question as the model sees it: the processor's chat template with the generation prompt."""
    return processor.apply_chat_template(build_messages(style), add_generation_prompt=True)


def format_answer(label: str, think: str | None = None) -> str:
    """Render a target answer; ``think=None`` gives the label-only form used by the baseline.

    >>> format_answer("awe", "A vast mountain under a starry sky.")
    '<think>A vast mountain under a starry sky.</think><answer>awe</answer>'
    >>> format_answer("fear")
    '<answer>fear</answer>'
    """
    if label not in LABEL2ID:
        raise ValueError(f"unknown emotion {label!r}; valid: {list(EMOTIONS)}")
    answer = f"{ANSWER_OPEN}{label}{ANSWER_CLOSE}"
    if think is None:
        return answer
    return f"{THINK_OPEN}{think.strip()}{THINK_CLOSE}{answer}"


def normalize_label(text: str) -> str | None:
    """Map free text to an emotion if it *is* one (case and surrounding whitespace ignored), else None.

    >>> normalize_label("  Sadness\\n"), normalize_label("sad"), normalize_label("anger.")
    ('sadness', None, None)
    """
    candidate = text.strip().lower()
    return candidate if candidate in LABEL2ID else None


@dataclass(frozen=True)
class ParsedAnswer:
    """What a completion says: the label (None when unparsable) and whether the strict format holds."""

    label: str | None
    well_formed: bool
    think: str | None = None


def parse_answer(text: str, allow_bare_label: bool = False) -> ParsedAnswer:
    """Parse a completion.

    The label comes from the last ``<answer>…</answer>`` block; ``well_formed`` is True only for the strict
    ``<think>…</think><answer>…</answer>`` shape with a valid label and non-empty reasoning.
    ``allow_bare_label`` also accepts a completion that is nothing but a label (label-only baselines).

    >>> parse_answer("<think>dark, rain</think><answer>Sadness</answer>")
    ParsedAnswer(label='sadness', well_formed=True, think='dark, rain')
    >>> parse_answer("<answer>joy</answer>").label is None
    True
    """
    strict = _STRICT.match(text)
    if strict:
        label = normalize_label(strict.group("answer"))
        think = strict.group("think").strip()
        nested = any(tok in strict.group("think") for tok in FORMAT_TOKENS)
        return ParsedAnswer(label, label is not None and bool(think) and not nested, think)
    answers = _ANSWER.findall(text)
    if answers:
        return ParsedAnswer(normalize_label(answers[-1]), False)
    if allow_bare_label:
        return ParsedAnswer(normalize_label(text), False)
    return ParsedAnswer(None, False)
