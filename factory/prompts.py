"""The one place that owns the question and the label set; the answer format and its parser come from the
runtime (``svlm_runtime.answer_format``), so training and a deployed package judge answers with one code.

Every stage, benchmark, exporter and the demo imports from here, so a trained model is always asked the
same question and always judged by the same parser. The format is the R1 convention (DESIGN.md §1, OURS):

    <think>free-text reasoning</think><answer>label</answer>

``label`` is one of the 8 EmoSet emotions in lower case. Parsing is tolerant of case and whitespace and
strict about the label set: "  Sadness " is sadness, "sad" is not an answer. The export writes the tags and
the rule's name into each package's manifest (``ANSWER_FORMAT.to_manifest()``).
"""

from __future__ import annotations

import json
from importlib import resources

from svlm_runtime.answer_format import (ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, AnswerFormat,
                                        ParsedAnswer)

FORMAT_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def _load_emotions() -> tuple[str, ...]:
    info = json.loads(resources.files("factory.data").joinpath("info.json").read_text())
    idx2label = info["emotion"]["idx2label"]
    return tuple(idx2label[str(i)] for i in range(len(idx2label)))


#: EmoSet's emotions in the official index order (info.json): positives first, not alphabetical.
EMOTIONS: tuple[str, ...] = _load_emotions()
LABEL2ID: dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}
#: The answer format every stage trains and every package carries: default tags, EmoSet's labels.
ANSWER_FORMAT = AnswerFormat(labels=EMOTIONS)

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
    return ANSWER_FORMAT.render(label, think)


def normalize_label(text: str) -> str | None:
    """Map free text to an emotion if it *is* one (case and surrounding whitespace ignored), else None.

    >>> normalize_label("  Sadness\\n"), normalize_label("sad"), normalize_label("anger.")
    ('sadness', None, None)
    """
    return ANSWER_FORMAT.normalize_label(text)


def parse_answer(text: str, allow_bare_label: bool = False) -> ParsedAnswer:
    """Parse a completion (``ANSWER_FORMAT``; the rule is ``svlm_runtime.answer_format``'s).

    The label comes from the last ``<answer>…</answer>`` block; ``well_formed`` is True only for the strict
    ``<think>…</think><answer>…</answer>`` shape with a valid label and non-empty reasoning.
    ``allow_bare_label`` also accepts a completion that is nothing but a label (label-only baselines).

    >>> parse_answer("<think>dark, rain</think><answer>Sadness</answer>")
    ParsedAnswer(label='sadness', well_formed=True, think='dark, rain')
    >>> parse_answer("<answer>joy</answer>").label is None
    True
    """
    return ANSWER_FORMAT.parse(text, allow_bare_label)
