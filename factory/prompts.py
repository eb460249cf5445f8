"""The default task's question, labels and answer rule as module names, for tests, doctests and quick use.

Production code takes a :class:`factory.tasks.Task` (a run's ``task``), so nothing that trains, teaches,
exports or evaluates is tied to EmoSet; these names are the shipped ``emoset`` task's. The format is the R1
convention (DESIGN.md §1, OURS), its parser ``svlm_runtime.answer_format``'s:

    <think>free-text reasoning</think><answer>label</answer>

Parsing is tolerant of case and whitespace and strict about the label set: "  Sadness " is sadness, "sad" is
not an answer (EmoSet's task has no aliases).
"""

from __future__ import annotations

from svlm_runtime.answer_format import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, ParsedAnswer

from factory.tasks import load_task

FORMAT_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

EMOSET = load_task()  # the shipped file, whatever the working directory holds
#: EmoSet's emotions in the official index order (info.json): positives first, not alphabetical.
EMOTIONS: tuple[str, ...] = tuple(EMOSET.labels)
LABEL2ID: dict[str, int] = dict(EMOSET.label2id)
ANSWER_FORMAT = EMOSET.answer_format
COT_QUESTION = EMOSET.question("cot")  # stages 1-4 and the teachers
LABEL_QUESTION = EMOSET.question("label")  # the label-only baseline (the paper's comparison model)
QUESTIONS = {"cot": COT_QUESTION, "label": LABEL_QUESTION}


def question(style: str = "cot") -> str:
    """Return the question text for ``style`` ("cot" or "label")."""
    return EMOSET.question(style)


def build_messages(style: str = "cot", answer: str | None = None) -> list[dict]:
    """Chat messages with one image placeholder and the question; add ``answer`` as the assistant turn.

    >>> build_messages()[0]["content"][0]
    {'type': 'image'}
    """
    return EMOSET.messages(style, answer)


def render_prompt(processor, style: str = "cot") -> str:
    """The question as the model sees it: the processor's chat template with the generation prompt."""
    return EMOSET.render_prompt(processor, style)


def format_answer(label: str, think: str | None = None) -> str:
    """Render a target answer; ``think=None`` gives the label-only form used by the baseline.

    >>> format_answer("awe", "A vast mountain under a starry sky.")
    '<think>A vast mountain under a starry sky.</think><answer>awe</answer>'
    >>> format_answer("fear")
    '<answer>fear</answer>'
    """
    return EMOSET.format_answer(label, think)


def normalize_label(text: str) -> str | None:
    """Map free text to an emotion if it *is* one (case and surrounding whitespace ignored), else None.

    >>> normalize_label("  Sadness\\n"), normalize_label("sad"), normalize_label("anger.")
    ('sadness', None, None)
    """
    return ANSWER_FORMAT.normalize_label(text)


def parse_answer(text: str, allow_bare_label: bool = False) -> ParsedAnswer:
    """Parse a completion (``ANSWER_FORMAT``; the rule is ``svlm_runtime.answer_format``'s).

    >>> parse_answer("<think>dark, rain</think><answer>Sadness</answer>")
    ParsedAnswer(label='sadness', well_formed=True, think='dark, rain')
    >>> parse_answer("<answer>joy</answer>").label is None
    True
    """
    return ANSWER_FORMAT.parse(text, allow_bare_label)
