"""Reader for the official EmoSet-118K layout (DESIGN.md §2).

    data_root/info.json  train.json  val.json  test.json
    data_root/annotation/<emotion>/<image_id>.json
    data_root/image/<emotion>/<image_id>.jpg

A split file is a JSON list of ``[emotion, image_id, "image/…jpg", "annotation/…json"]``. Annotations hold
``image_id``, ``emotion`` and whichever attributes exist; every attribute may be missing.

The reader serves a task (``factory.tasks``): the split file's label is checked against the task's labels
when the task is labelled by it (EmoSet's emotions, an import's folders); a task labelled from an annotation
attribute (``facial_expression``) takes each image's label from there, and images without it are not part of
the task: they are counted (``SplitResult.unlabelled``), not errors.

Bad data is either an error (``strict=True``: a ``DataError`` naming the file, entry and problem) or is
skipped and reported (``strict=False``: ``SplitResult.skipped`` and ``write_report``). Problems:

=================  ==============================================================================
kind               meaning
=================  ==============================================================================
malformed_entry    a split entry is not a 4-list of strings, or its paths leave the data root
unknown_label      the label is not one of the task's (EmoSet: the 8 emotions of info.json)
label_mismatch     the annotation's emotion disagrees with the split file
duplicate_id       the image id appeared earlier in the same split
missing_image      the image file does not exist
unreadable_image   the image cannot be decoded (corrupt, truncated, not an image)
bad_annotation     the annotation exists but is not a JSON object
=================  ==============================================================================

A split file that is not a JSON list at all is always an error: there is nothing to skip to. A missing
annotation file is tolerated (no attributes) and counted in ``warnings``.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from factory.errors import DataError
from factory.files import write_json
from factory.tasks import ATTRIBUTES, Task, load_task

SPLITS = ("train", "val", "test")
ImageCheck = Literal["decode", "header", "none"]


@lru_cache(maxsize=1)
def load_info() -> dict:
    """The official EmoSet ``info.json`` (label and attribute vocabularies), shipped as package data."""
    return json.loads(resources.files("factory.data").joinpath("info.json").read_text())


@dataclass(frozen=True)
class EmoSetRecord:
    """One labelled image. ``emotion`` is the split file's label (EmoSet's emotion, an import's folder),
    ``label`` the task's; ``attributes`` holds only the annotation attributes that exist."""

    image_id: str
    emotion: str
    image_path: Path
    attributes: dict = field(default_factory=dict, hash=False, compare=False)
    label: str = ""  # the task's label ("": the split file's)

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.emotion)


@dataclass
class Skipped:
    index: int
    image_id: str | None
    kind: str
    detail: str


@dataclass
class SplitResult:
    split: str
    records: list[EmoSetRecord]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)
    task: str = "emoset"
    labels: tuple[str, ...] = ()  # the task's, in its order (the report lists classes so)
    unlabelled: int = 0  # images without the task's label (a task labelled from an attribute)

    def summary(self) -> dict:
        counts = Counter(r.label for r in self.records)
        return {
            "split": self.split,
            "task": self.task,
            "records": len(self.records),
            "per_class": {label: counts[label] for label in self.labels or sorted(counts) if counts[label]},
            "unlabelled": self.unlabelled,
            "skipped": len(self.skipped),
            "skipped_by_kind": dict(Counter(s.kind for s in self.skipped)),
            "warnings_by_kind": dict(Counter(w.kind for w in self.warnings)),
        }

    def write_report(self, path: str | Path) -> Path:
        """Write what was read, skipped and why, as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = self.summary() | {
            "skipped_entries": [vars(s) for s in self.skipped],
            "warning_entries": [vars(w) for w in self.warnings],
        }
        write_json(path, report)
        return path


MAX_ANNOTATION_BYTES = 1_000_000  # EmoSet's are under 1 kB


class _Problem(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise _Problem("malformed_entry", f"path {rel!r} leaves the data root")
    return path


def check_image(path: Path, mode: ImageCheck) -> None:
    """Raise ``_Problem`` if the image is missing or (per ``mode``) cannot be read. The pixel count is
    checked from the header before anything is decoded: a 190-byte PNG may declare 30000 x 30000 pixels."""
    if not path.is_file():
        raise _Problem("missing_image", f"image file not found: {path}")
    if mode == "none":
        return
    from PIL import Image, UnidentifiedImageError
    from svlm_runtime.preprocess import MAX_PIXELS

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise _Problem("oversized_image", f"{path.name} is {img.width}x{img.height} pixels, over the "
                               f"{MAX_PIXELS:,} pixel limit")
            if mode == "header":
                img.verify()
            else:
                img.load()  # full decode: the only way to catch a truncated JPEG
    except Image.DecompressionBombError as exc:  # not an OSError
        raise _Problem("oversized_image", f"{path.name}: {exc}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise _Problem("unreadable_image", f"cannot decode {path.name}: {exc}") from None


def usable_images(root: str | Path, paths: list[str], mode: ImageCheck = "decode",
                  workers: int = 8) -> tuple[set[str], Counter]:
    """The ``paths`` (as given) that lie inside the data ``root`` and pass ``check_image``, and a count of
    the others by problem kind. Training and CoT data call this before a run, so one truncated JPEG is a
    skipped, counted sample instead of a crash mid-run (and again on every resume)."""
    root = Path(root).resolve()

    def check(path: str) -> str | None:
        try:
            resolved = Path(path).resolve()
            if not resolved.is_relative_to(root):
                raise _Problem("outside_data_root", f"{path} is not inside {root}")
            check_image(resolved, mode)
        except _Problem as exc:
            return exc.kind
        return None

    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        kinds = dict(zip(unique, pool.map(check, unique)))
    return {p for p, kind in kinds.items() if kind is None}, Counter(k for k in kinds.values() if k)


def _read_split_file(root: Path, split: str) -> list:
    path = root / f"{split}.json"
    if not path.is_file():
        available = [s for s in SPLITS if (root / f"{s}.json").is_file()]
        raise DataError(f"split file not found: {path} (splits present: {available or 'none'})")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a split file") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of [emotion, image_id, image, annotation], "
                        f"got {type(entries).__name__}")
    return entries


def _parse_entry(root: Path, entry, task: Task) -> tuple[str, str, Path, Path]:
    if not (isinstance(entry, list) and len(entry) == 4 and all(isinstance(x, str) for x in entry)):
        raise _Problem("malformed_entry", f"expected [emotion, image_id, image_path, annotation_path], got {entry!r}")
    emotion, image_id, image_rel, ann_rel = entry
    if task.label_from == "split" and emotion not in task.label2id:
        raise _Problem("unknown_label", f"label {emotion!r} is not one of task {task.name!r}'s {task.labels}")
    return emotion, image_id, _inside(root, image_rel), _inside(root, ann_rel)


def _read_annotation(path: Path, emotion: str) -> dict | None:
    """Attributes that exist in the annotation; None when the file is missing."""
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise _Problem("bad_annotation", f"{path.name}: {path.stat().st_size:,} bytes, over the "
                       f"{MAX_ANNOTATION_BYTES:,} an annotation may have")
    try:
        ann = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Problem("bad_annotation", f"{path.name}: not valid JSON ({exc})") from None
    except RecursionError:
        raise _Problem("bad_annotation", f"{path.name}: JSON nested too deeply") from None
    if not isinstance(ann, dict):
        raise _Problem("bad_annotation", f"{path.name}: expected a JSON object")
    if "emotion" in ann and ann["emotion"] != emotion:
        raise _Problem("label_mismatch", f"annotation says {ann['emotion']!r}, split file says {emotion!r}")
    return {k: ann[k] for k in ATTRIBUTES if ann.get(k) is not None}


def _check_import_task(root: Path, task: Task) -> None:
    """An imported folder (``svlm data import --task``) records its task; reading it for another one would
    quietly keep only the classes both share."""
    report = root / "import_report.json"
    if not report.is_file():
        return
    try:
        imported = json.loads(report.read_text()).get("task", "emoset")
    except (ValueError, AttributeError):
        return  # a damaged report says nothing; the labels are still checked entry by entry
    if imported != task.name:
        raise DataError(f"{root} was imported for task {imported!r}, not {task.name!r}; read it with "
                        f"task={imported} (or import it again with --task {task.name})")


def read_split(root: str | Path, split: str, *, task: str | Task | None = None, strict: bool = True,
               check_images: ImageCheck = "decode", workers: int = 8, progress: bool = False) -> SplitResult:
    """Read one split of an EmoSet-layout dataset for ``task`` (default: EmoSet's emotions).

    Args:
        root: the data root (holds ``train.json`` etc.).
        split: "train", "val", "test" (any ``<name>.json`` works).
        task: a ``Task`` or a task name / file (``factory.tasks.load_task``).
        strict: raise ``DataError`` on the first bad entry instead of skipping it.
        check_images: "decode" fully decodes every image (catches truncated JPEGs; slowest),
            "header" reads headers only, "none" checks that the file exists.
        workers: threads for image checks (Pillow releases the GIL while decoding).
        progress: show a progress bar.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    task = load_task(task)
    _check_import_task(root, task)
    entries = _read_split_file(root, split)
    result = SplitResult(split=split, records=[], task=task.name, labels=tuple(task.labels))
    seen: set[str] = set()
    candidates: list[tuple[int, EmoSetRecord]] = []

    def problem(index: int, image_id: str | None, exc: _Problem) -> None:
        if strict:
            raise DataError(f"{root / (split + '.json')} entry {index} ({image_id or '?'}): {exc.kind}: {exc.detail}")
        result.skipped.append(Skipped(index, image_id, exc.kind, exc.detail))

    for index, entry in enumerate(entries):
        image_id = entry[1] if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], str) else None
        try:
            emotion, image_id, image_path, ann_path = _parse_entry(root, entry, task)
            if image_id in seen:
                raise _Problem("duplicate_id", f"image id {image_id!r} appears more than once in {split}")
            seen.add(image_id)
            attributes = _read_annotation(ann_path, emotion)
        except _Problem as exc:
            problem(index, image_id, exc)
            continue
        if attributes is None:
            result.warnings.append(Skipped(index, image_id, "missing_annotation", f"no file {ann_path}"))
            attributes = {}
        label = task.label_of(emotion, attributes)
        if label is not None and task.label_from != "split":
            label = task.answer_format.normalize_label(label)  # the task's spelling (case, aliases)
            if label is None:
                problem(index, image_id, _Problem("unknown_label", f"{task.label_from} "
                                                  f"{attributes[task.label_from]!r} is not one of task "
                                                  f"{task.name!r}'s {task.labels}"))
                continue
        if label is None:
            result.unlabelled += 1
            continue
        candidates.append((index, EmoSetRecord(image_id, emotion, image_path, attributes, label)))

    def check(item: tuple[int, EmoSetRecord]) -> _Problem | None:
        try:
            check_image(item[1].image_path, check_images)
        except _Problem as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = pool.map(check, candidates)
        if progress:
            from tqdm import tqdm

            outcomes = tqdm(outcomes, total=len(candidates), desc=f"checking {split} images", unit="img")
        for (index, record), exc in zip(candidates, outcomes):
            if exc is None:
                result.records.append(record)
            else:
                problem(index, record.image_id, exc)
    return result


def to_hf_dataset(records: list[EmoSetRecord], task: str | Task | None = None):
    """A ``datasets.Dataset`` view (image column decoded lazily) for the trainers; ``label`` is the task's
    class index."""
    import datasets

    task = load_task(task)
    features = datasets.Features({
        "image": datasets.Image(),
        "image_id": datasets.Value("string"),
        "emotion": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(task.labels)),
        "attributes": datasets.Value("string"),
    })
    return datasets.Dataset.from_dict({
        "image": [str(r.image_path) for r in records],
        "image_id": [r.image_id for r in records],
        "emotion": [r.emotion for r in records],
        "label": [task.label2id[r.label] for r in records],
        "attributes": [json.dumps(r.attributes) for r in records],
    }, features=features)
