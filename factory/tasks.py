"""A task is data, not code: ``configs/tasks/<name>.yaml`` holds the label set, where each image's label comes
from, the two questions, the answer format and its parsing rule, and the attribute teacher's lexicon.

Training (rows, rewards, evaluation), the CoT teachers, the data readers and imports, the export manifests and
so the runtime and the demo all take a :class:`Task`; nothing below this module names a label. EmoSet's 8
emotions (``emoset``) are the default task; ``facial_expression`` (EmoSet's six expressions, labelled from the
annotation attribute) ships beside it.

A run records its task: ``svlm train`` writes the resolved task as ``task.yaml`` into every stage folder, so
export, inference and the demo read a trained stage's task from the stage itself, never from a default.

    task: emoset                      # a shipped task, by name
    task: configs/tasks/mine.yaml     # or any task file (a path: it has a "/" or ends in .yaml)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from svlm_runtime.answer_format import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, AnswerFormat, ParsedAnswer

from factory import config as config_lib
from factory.errors import ConfigError

DEFAULT_TASK = "emoset"
TASK_FILENAME = "task.yaml"  # the resolved task, beside every stage's adapter
SCALES = ("brightness", "colorfulness")  # numeric attributes in [0, 1]
CATEGORIES = ("scene", "object", "facial_expression", "human_action")
#: EmoSet's annotation attributes (its info.json); a task's label may come from one of them.
ATTRIBUTES = SCALES + CATEGORIES
LABEL_ATTRIBUTES = ("scene", "facial_expression", "human_action")  # one value per image ("object" is a list)
# Shipped tasks are package data; the repository's configs/tasks spells them out (a test keeps them equal) and is
# where `svlm tasks --new` writes a project's own tasks.
_SHIPPED = Path(__file__).resolve().parent / "assets" / "tasks"


@dataclass
class AnswerSpec:
    """The answer tags and the rule's options (``svlm_runtime.answer_format``)."""

    think: list[str] = field(default_factory=lambda: [THINK_OPEN, THINK_CLOSE])
    answer: list[str] = field(default_factory=lambda: [ANSWER_OPEN, ANSWER_CLOSE])
    case_sensitive: bool = False
    aliases: dict[str, str] = field(default_factory=dict)  # another spelling -> the label it means


@dataclass
class Lexicon:
    """What the attribute teacher (``factory.cot.attributes``) knows: common-sense links from EmoSet's
    annotation attributes to the task's labels. A score is the sum of the links an image's attributes hit."""

    # numeric attribute -> {label: weight}; the score moves by (value - 0.5) * weight
    scales: dict[str, dict[str, float]] = field(default_factory=dict)
    # categorical attribute -> value -> {label: weight}
    categories: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # label -> {word: weight}: words matched inside scene, object and action names
    keywords: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Task:
    """One image-classification-with-reasoning task. Questions may use ``{labels}`` (the label list),
    ``{think}`` and ``{answer}`` (the empty tag pairs)."""

    name: str = ""
    description: str = ""  # one sentence; model cards open with it
    tags: list[str] = field(default_factory=list)  # hub tags for every card (e.g. visual-emotion-recognition)
    labels: list[str] = field(default_factory=list)
    # where an image's label comes from: "split" (the label each split-file entry carries: EmoSet's emotion,
    # an import's folder) or an annotation attribute (images without it are left out of the task)
    label_from: str = "split"
    questions: dict[str, str] = field(default_factory=dict)  # cot and label
    answer: AnswerSpec = field(default_factory=AnswerSpec)
    teacher: Lexicon = field(default_factory=Lexicon)

    def __post_init__(self):
        if not self.name:
            raise ConfigError("a task needs a name")
        if len(self.labels) < 2:
            raise ConfigError(f"task {self.name!r}: give at least two labels, got {self.labels}")
        try:
            self.answer_format  # noqa: B018 (checks labels, tags and aliases once, here)
        except ValueError as e:
            raise ConfigError(f"task {self.name!r}: {e}") from None
        if self.label_from != "split" and self.label_from not in LABEL_ATTRIBUTES:
            raise ConfigError(f"task {self.name!r}: label_from must be 'split' or one of {list(LABEL_ATTRIBUTES)} "
                              f"(an attribute with one value per image), got {self.label_from!r}")
        bad = [label for label in self.labels if label != label.strip() or any(c in label for c in ",/\\<>")]
        if bad:
            raise ConfigError(f"task {self.name!r}: labels {bad} have surrounding spaces or one of , / \\ < > "
                              "(a label is a folder name, a list item in the question and the text of an answer tag)")
        if set(self.questions) != {"cot", "label"}:
            raise ConfigError(f"task {self.name!r}: questions must have exactly 'cot' and 'label', got "
                              f"{sorted(self.questions)}")
        for style in self.questions:
            try:
                self.question(style)
            except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
                raise ConfigError(f"task {self.name!r}: question {style!r} uses an unknown placeholder {e}; "
                                  "known: {labels}, {think}, {answer}") from None
        self._check_lexicon()

    def _check_lexicon(self) -> None:
        lex, where = self.teacher, f"task {self.name!r}: teacher"
        unknown = set(lex.scales) - set(SCALES)
        unknown |= set(lex.categories) - set(CATEGORIES)
        if unknown:
            raise ConfigError(f"{where}: unknown attributes {sorted(unknown)}; scales: {list(SCALES)}, "
                              f"categories: {list(CATEGORIES)}")
        if self.label_from in lex.categories:
            raise ConfigError(f"{where}: the label's own attribute {self.label_from!r} cannot be evidence "
                              "(the teacher would read the answer)")
        weights = [*lex.scales.values(), *(w for values in lex.categories.values() for w in values.values())]
        named = {label for w in weights for label in w} | set(lex.keywords)
        if named - set(self.labels):
            raise ConfigError(f"{where}: names labels the task does not have: {sorted(named - set(self.labels))}")

    # --- what every stage, teacher and exporter asks of a task ------------------------------------------

    @cached_property
    def answer_format(self) -> AnswerFormat:
        """Tags, labels and parsing rule, shared with the runtime (the manifest carries them)."""
        return AnswerFormat(labels=tuple(self.labels), think=tuple(self.answer.think),
                            answer=tuple(self.answer.answer), aliases=self.answer.aliases,
                            case_sensitive=self.answer.case_sensitive)

    @cached_property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def question(self, style: str = "cot") -> str:
        """The question for ``style``: "cot" (reason, then answer) or "label" (the label-only baseline)."""
        if style not in self.questions:
            raise ValueError(f"unknown prompt style {style!r}; valid: {sorted(self.questions)}")
        fmt = self.answer_format
        return self.questions[style].format(labels=", ".join(self.labels), think="".join(fmt.think),
                                            answer="".join(fmt.answer))

    def messages(self, style: str = "cot", answer: str | None = None) -> list[dict]:
        """Chat messages with one image placeholder and the question; ``answer`` adds the assistant turn.
        The content-list form is what every family's chat template and trl's VLM collators understand."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.question(style)}]}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def render_prompt(self, processor, style: str = "cot") -> str:
        """The question as the model sees it: the processor's chat template with the generation prompt."""
        return processor.apply_chat_template(self.messages(style), add_generation_prompt=True)

    def format_answer(self, label: str, think: str | None = None) -> str:
        """A target answer; ``think=None`` gives the label-only form of the baseline."""
        if label not in self.label2id:
            raise ValueError(f"unknown label {label!r} for task {self.name!r}; valid: {self.labels}")
        return self.answer_format.render(label, think)

    def parse(self, text: str, allow_bare_label: bool = False) -> ParsedAnswer:
        """Parse a completion by the task's rule (``svlm_runtime.answer_format``)."""
        return self.answer_format.parse(text, allow_bare_label)

    def label_of(self, split_label: str, attributes: dict) -> str | None:
        """An image's label for this task: the split file's, or the annotation attribute's (None: the image
        has none and is not part of the task)."""
        if self.label_from == "split":
            return split_label
        value = attributes.get(self.label_from)
        return value if isinstance(value, str) else None

    def identity(self) -> dict:
        """What makes a model trained for this task what it is: labels, label source, questions, answer rule
        (not the description, tags or the teacher's lexicon). Outputs record it to notice a changed task."""
        return {k: v for k, v in config_lib.to_dict(self).items()
                if k in ("labels", "label_from", "questions", "answer")}

    def manifest(self) -> dict:
        """The manifest's ``task`` section (its labels and answer rule travel as ``labels`` and ``answer``)."""
        return {"name": self.name, "description": self.description, "tags": list(self.tags)}


def task_path(spec: str) -> Path:
    """The YAML file ``spec`` names: a path (has a "/" or ends in .yaml), ``./configs/tasks/<spec>.yaml``, or
    a shipped task."""
    if "/" in spec or spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"task file not found: {spec}")
        return path
    for folder in (Path("configs") / "tasks", _SHIPPED):
        if (folder / f"{spec}.yaml").is_file():
            return folder / f"{spec}.yaml"
    raise ConfigError(f"unknown task {spec!r}; shipped tasks: {', '.join(shipped_tasks())} "
                      "(or give a task file's path)")


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in _SHIPPED.glob("*.yaml"))


def load_task(spec: str | Task | None = None) -> Task:
    """The task named by ``spec`` (a name or a YAML path, ``task_path``); None: the shipped default, EmoSet's,
    whatever the working directory holds."""
    if isinstance(spec, Task):
        return spec
    path = task_path(spec) if spec else _SHIPPED / f"{DEFAULT_TASK}.yaml"
    return _load(str(path.resolve()))


_CACHE: dict[tuple[str, int, int], Task] = {}


def _load(path: str) -> Task:
    stat = Path(path).stat()
    key = (path, stat.st_mtime_ns, stat.st_size)  # an edit within the same second still shows
    if key not in _CACHE:
        data = config_lib.read_yaml(path)
        try:
            _CACHE[key] = config_lib.build(Task, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return _CACHE[key]


def save_task(task: Task, folder: str | Path) -> Path:
    """Write the resolved task beside an output (``task.yaml``), so the output says which task it learned."""
    return config_lib.save(task, folder, TASK_FILENAME)


def folder_task(folder: str | Path) -> Task:
    """The task an output folder (a trained stage) was made for: its ``task.yaml``; folders written before
    tasks existed were EmoSet's."""
    path = Path(folder) / TASK_FILENAME
    return _load(str(path.resolve())) if path.is_file() else load_task()


def new_task(name: str, labels: list[str], noun: str = "class", folder: str | Path = Path("configs") / "tasks",
             description: str = "") -> Path:
    """Write ``<folder>/<name>.yaml``: a task over ``labels`` labelled by the data's folders, with the two
    questions phrased around ``noun``, no aliases and an empty teacher lexicon (the attribute teacher reasons
    only from EmoSet annotations; an imported dataset needs a model teacher, ``configs/teachers.example.yaml``).
    Refuses to replace an existing file. The file is checked by loading it back before it is kept."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"task name {name!r}: use letters, digits, '_', '-' or '.'")
    path = Path(folder) / f"{name}.yaml"
    if path.exists():
        raise ConfigError(f"{path} exists; edit it, or choose another name")
    data = {
        "name": name,
        "description": description or f"Which {noun} an image shows.",
        "tags": [],
        "labels": list(labels),
        "label_from": "split",
        "questions": {
            "cot": f"Which {noun} does this image show? Choose one of: {{labels}}. First reason about the visual "
                   f"evidence inside {{think}}, then give the {noun} inside {{answer}}.",
            "label": f"Which {noun} does this image show? Choose one of: {{labels}}. Answer with the {noun} only, "
                     f"inside {{answer}}.",
        },
        "answer": config_lib.to_dict(AnswerSpec()),
        "teacher": config_lib.to_dict(Lexicon()),
    }
    import yaml

    config_lib.build(Task, data)  # a bad label list fails here, before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"# Task {name}, written by `svlm tasks --new`; every key is described in factory/tasks.py.\n"
                   + yaml.safe_dump(data, sort_keys=False, width=110))
    tmp.replace(path)
    return path
