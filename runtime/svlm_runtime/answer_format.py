"""The answer format and the rule that parses it: the one implementation, shared by training (``factory.prompts``
builds its format from here) and the runtime (which takes the tags and labels from the package's manifest).

The format is the R1 convention:

    <think>free-text reasoning</think><answer>label</answer>

Parsing rule ``RULE`` ("last-answer-block"): the label comes from the last answer block, matched against the
label set ignoring case and surrounding whitespace ("  Sadness " is sadness, "sad" is not an answer). A task
may add aliases (other spellings that mean a label, ``{"grey": "gray"}``) and make the match case-sensitive;
both travel in the manifest's ``answer`` section, so a runtime that predates them refuses the package.
``well_formed`` holds only for the strict shape: one think block with non-empty reasoning and no tag inside,
then one answer block with a valid label, nothing but whitespace around them. A manifest names the rule, so a
runtime that does not know a package's rule refuses the package instead of judging its answers differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
RULE = "last-answer-block"
RULES = (RULE,)  # the rules this runtime applies


@dataclass(frozen=True)
class ParsedAnswer:
    """What a completion says: the label (None when unparsable) and whether the strict format holds."""

    label: str | None
    well_formed: bool
    think: str | None = None


@dataclass(frozen=True)
class AnswerFormat:
    """Tags, label set and parsing rule of the answers (``labels`` may be empty where only the tags matter).

    >>> fmt = AnswerFormat(labels=("awe", "fear"))
    >>> fmt.parse("<think>dark, rain</think><answer> Fear</answer>")
    ParsedAnswer(label='fear', well_formed=True, think='dark, rain')
    >>> fmt.parse("<answer>joy</answer>").label is None
    True
    """

    labels: tuple[str, ...] = ()
    think: tuple[str, str] = (THINK_OPEN, THINK_CLOSE)
    answer: tuple[str, str] = (ANSWER_OPEN, ANSWER_CLOSE)
    rule: str = RULE
    aliases: tuple[tuple[str, str], ...] = ()  # (alias, label) pairs; a dict is accepted too
    case_sensitive: bool = False

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "think", tuple(self.think))
        object.__setattr__(self, "answer", tuple(self.answer))
        pairs = self.aliases.items() if isinstance(self.aliases, dict) else self.aliases
        object.__setattr__(self, "aliases", tuple(sorted((str(a), str(lab)) for a, lab in pairs)))
        tags = (*self.think, *self.answer)
        if len(tags) != 4 or not all(isinstance(t, str) and t for t in tags):
            raise ValueError(f"think and answer must each be two non-empty tags, got {self.think}, {self.answer}")
        if not isinstance(self.case_sensitive, bool):
            raise ValueError(f"case_sensitive must be true or false, got {self.case_sensitive!r}")
        if not all(isinstance(lab, str) and lab.strip() for lab in self.labels) or \
                len({self._key(lab) for lab in self.labels}) != len(self.labels):
            raise ValueError(f"labels must be distinct non-empty strings, got {list(self.labels)}")
        spellings = {self._key(lab) for lab in self.labels}
        for alias, label in self.aliases:
            if label not in self.labels:
                raise ValueError(f"alias {alias!r} names {label!r}, which is not a label ({list(self.labels)})")
            if not alias.strip() or self._key(alias) in spellings:
                raise ValueError(f"alias {alias!r} is empty or already spells a label or another alias")
            spellings.add(self._key(alias))
        if self.rule not in RULES:
            raise ValueError(f"answer rule {self.rule!r} is unknown to this runtime (it knows {', '.join(RULES)}); "
                             "a newer svlm-runtime may read it")

    @property
    def tags(self) -> tuple[str, str, str, str]:
        return (*self.think, *self.answer)

    def _key(self, text: str) -> str:
        return text.strip() if self.case_sensitive else text.strip().lower()

    @cached_property
    def _by_key(self) -> dict[str, str]:
        return {self._key(lab): lab for lab in self.labels} | {self._key(a): lab for a, lab in self.aliases}

    @cached_property
    def _strict(self) -> re.Pattern:
        (t_open, t_close), (a_open, a_close) = [map(re.escape, pair) for pair in (self.think, self.answer)]
        # the answer holds no character that starts a tag ("[^<]*" for the default tags)
        no_tag = "[^" + re.escape("".join(sorted({t[0] for t in self.tags}))) + "]*"
        return re.compile(rf"\A\s*{t_open}(?P<think>.+?){t_close}\s*{a_open}(?P<answer>{no_tag}){a_close}\s*\Z",
                          re.S)

    def _last_answer(self, text: str) -> str | None:
        """The body of the last closed answer, the same as the last of ``re.findall("<answer>(.*?)</answer>")``
        but in linear time: that regex rescans the rest of the text from every unclosed opening tag (64 kB of
        "<answer>" took 1.9 s, a hostile 1 MB teacher reply minutes)."""
        (a_open, a_close), pos, last = self.answer, 0, None
        while (start := text.find(a_open, pos)) >= 0:
            end = text.find(a_close, start + len(a_open))
            if end < 0:  # no closing tag after this one, so none after any later opening tag either
                break
            last, pos = text[start + len(a_open):end], end + len(a_close)
        return last

    def render(self, label: str, think: str | None = None) -> str:
        """The answer text for ``label`` (with reasoning ``think`` unless None).

        >>> AnswerFormat().render("awe", " stars ")
        '<think>stars</think><answer>awe</answer>'
        """
        answer = f"{self.answer[0]}{label}{self.answer[1]}"
        return answer if think is None else f"{self.think[0]}{think.strip()}{self.think[1]}{answer}"

    def normalize_label(self, text: str) -> str | None:
        """The label ``text`` *is*, or an alias of (surrounding whitespace and, unless ``case_sensitive``, case
        ignored), else None.

        >>> AnswerFormat(labels=("gray", "red"), aliases={"grey": "gray"}).normalize_label(" Grey")
        'gray'
        >>> AnswerFormat(labels=("OK", "NG"), case_sensitive=True).normalize_label("ok") is None
        True
        """
        return self._by_key.get(self._key(text))

    def parse(self, text: str, allow_bare_label: bool = False) -> ParsedAnswer:
        """Parse a completion by the rule (module docstring); ``allow_bare_label`` also accepts a completion
        that is nothing but a label (label-only baselines)."""
        strict = self._strict.match(text)
        if strict:
            label = self.normalize_label(strict.group("answer"))
            think = strict.group("think").strip()
            nested = any(tag in strict.group("think") for tag in self.tags)
            return ParsedAnswer(label, label is not None and bool(think) and not nested, think)
        answer = self._last_answer(text)
        if answer is not None:
            return ParsedAnswer(self.normalize_label(answer), False)
        if allow_bare_label:
            return ParsedAnswer(self.normalize_label(text), False)
        return ParsedAnswer(None, False)

    def reasoning(self, text: str) -> str:
        """The reasoning in a completion, strict or not: the text after the first think tag up to its closing
        tag (or the answer tag, or the end); "" when there is no think tag.

        >>> AnswerFormat().reasoning("<think> grey sky </think><answer>awe</answer>")
        'grey sky'
        >>> AnswerFormat().reasoning("<think>still thinking"), AnswerFormat().reasoning("<answer>awe</answer>")
        ('still thinking', '')
        """
        start = text.find(self.think[0])
        if start < 0:
            return ""
        body = text[start + len(self.think[0]):]
        cuts = [i for i in (body.find(self.think[1]), body.find(self.answer[0])) if i >= 0]
        return body[:min(cuts)].strip() if cuts else body.strip()

    def to_manifest(self) -> dict:
        """The manifest's ``answer`` section (the labels travel as the manifest's ``labels``). Aliases and a
        case-sensitive match are written only when a task sets them, so packages of tasks without them read
        in every runtime that reads the three-key section."""
        section = {"think": list(self.think), "answer": list(self.answer), "rule": self.rule}
        if self.aliases:
            section["aliases"] = dict(self.aliases)
        if self.case_sensitive:
            section["case_sensitive"] = True
        return section

    @classmethod
    def from_manifest(cls, manifest: dict) -> AnswerFormat:
        """The format of a package: its ``answer`` section and ``labels``; packages written before the section
        existed used the default tags and rule. Raises ValueError on a malformed or unknown format."""
        section = manifest.get("answer", {})
        if not isinstance(section, dict) or set(section) - {"think", "answer", "rule", "aliases", "case_sensitive"}:
            raise ValueError("answer must be an object with think, answer, rule and optionally aliases and "
                             f"case_sensitive, got {section!r}")
        aliases = section.get("aliases", {})
        if not isinstance(aliases, dict):
            raise ValueError(f"answer aliases must be an object (alias -> label), got {aliases!r}")
        labels = manifest.get("labels")
        if not isinstance(labels, list):
            raise ValueError(f"labels must be a list, got {labels!r}")
        pairs = {key: section.get(key, default) for key, default in (("think", (THINK_OPEN, THINK_CLOSE)),
                                                                     ("answer", (ANSWER_OPEN, ANSWER_CLOSE)))}
        if not all(isinstance(p, (list, tuple)) for p in pairs.values()):
            raise ValueError(f"answer tags must be pairs of strings, got {section!r}")
        return cls(labels=tuple(labels), rule=section.get("rule", RULE), aliases=aliases,
                   case_sensitive=section.get("case_sensitive", False), **pairs)


DEFAULT = AnswerFormat()  # the default tags and rule, no labels (what label scoring needs without a manifest)
