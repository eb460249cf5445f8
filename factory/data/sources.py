"""Data sources beyond the EmoSet layout, imported into it: an image folder (``root/<label>/*.jpg``) or a
Hugging Face ``datasets`` dataset (saved with ``save_to_disk``, or anything ``load_dataset`` reads from a
local path) with an image column and a label column.

    svlm data import imagefolder /data/FI --out data/fi
    svlm data import hf /data/my_dataset --image-column image --label-column label --out data/mine

Everything downstream (CoT, training, evaluation, export validation, benchmarks) reads one layout, so an
import writes that layout: ``image/<label>/<id>.<ext>``, ``annotation/<label>/<id>.json``, ``train.json``,
``val.json``, ``test.json``, ``info.json``. Splits come from the source when it has them (``train/``,
``val/`` or ``validation/``, ``test/`` subfolders; a dataset's own splits), else they are drawn per label
with a seed (``--fractions``). Labels must be the task's (``--task``, default EmoSet's 8 emotions; matched by
the task's rule, so its own aliases count; ``--alias`` maps other names onto them). As with the reader, a bad item is an error (strict, the default) or
skipped and counted in ``import_report.json`` (``--lenient``); the output is then read back with the
reader's own checks. Built in ``<out>.tmp``, renamed when complete; an existing ``--out`` is replaced only
with ``--overwrite`` and only if an import wrote it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from factory.errors import DataError
from factory.files import write_json
from factory.tasks import load_task

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MARK = ".svlm-import"  # an import's output folder holds it: only such folders are replaced
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val", "test": "test"}


@dataclass
class ImportConfig:
    source: str = "imagefolder"  # imagefolder | hf
    path: str = ""  # the image folder, or the dataset (a save_to_disk folder or a load_dataset path)
    out: str = ""
    image_column: str = "image"  # hf
    label_column: str = "label"  # hf
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train/val/test when unsplit
    seed: int = 0
    task: str = "emoset"  # whose labels the source's are (factory.tasks)
    aliases: dict[str, str] = field(default_factory=dict)  # source label -> task label, e.g. {happy: amusement}
    strict: bool = True  # a bad item stops the import (False: skipped and reported)
    overwrite: bool = False

    def __post_init__(self):
        if self.source not in ("imagefolder", "hf"):
            raise DataError(f"unknown source {self.source!r}; sources: imagefolder, hf")
        if not self.path or not self.out:
            raise DataError("give the source path and --out")
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise DataError(f"fractions must be three shares (train, val, test) summing to 1, got {self.fractions}")
        labels = load_task(self.task).labels
        bad = {k: v for k, v in self.aliases.items() if v not in labels}
        if bad:
            raise DataError(f"aliases must map onto the task's labels {labels}; got {bad}")


@dataclass
class _Item:
    label: str
    image_id: str
    split: str | None  # None: drawn later
    write: object  # callable(dst_without_suffix) -> written path (copies or encodes the image)


class _Skip(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _label(name: str, cfg: ImportConfig) -> str:
    """The task label a source label stands for (by the task's rule, or with separators ignored), or a _Skip."""
    task, key = load_task(cfg.task), str(name).strip()
    folded = key if task.answer.case_sensitive else key.lower()
    spellings = (key, folded, folded.replace(" ", "_").replace("-", "_"))
    for candidate in spellings:
        if candidate in cfg.aliases:
            return cfg.aliases[candidate]
        if (label := task.answer_format.normalize_label(candidate)) is not None:
            return label
    raise _Skip("unknown_label", f"label {name!r} is not one of {task.labels} (map it with aliases)")


def _folder_items(cfg: ImportConfig, skipped: list) -> list[_Item]:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    split_dirs = [d for d in subdirs if d.name.lower() in _SPLIT_NAMES]
    groups = [(_SPLIT_NAMES[d.name.lower()], d) for d in split_dirs] if split_dirs else [(None, root)]
    items: list[_Item] = []
    for split, folder in groups:
        for label_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            files = sorted(f for f in label_dir.rglob("*") if f.is_file())
            try:
                label = _label(label_dir.name, cfg)
            except _Skip as e:
                _problem(cfg, skipped, str(label_dir), e, count=len(files))
                continue
            for f in files:
                if f.suffix.lower() not in IMAGE_SUFFIXES:  # notes, thumbnails databases: left out, even strict
                    skipped.append({"where": str(f), "kind": "not_an_image", "items": 1,
                                    "detail": f"suffix {f.suffix!r} is not one of {list(IMAGE_SUFFIXES)}"})
                    continue
                rel = f.relative_to(root).with_suffix("")
                image_id = "_".join(rel.parts)  # unique across label and split folders
                items.append(_Item(label, image_id, split, _copier(f)))
    return items


def _copier(src: Path):
    def write(dst: Path) -> Path:
        _check_decodes(src)
        target = dst.with_suffix(src.suffix.lower())
        try:
            os.link(src, target)  # no second copy of a large dataset on the same disk
        except OSError:
            shutil.copyfile(src, target)
        return target
    return write


def _check_decodes(path: Path) -> None:
    from factory.data.emoset import _Problem, check_image

    try:
        check_image(path, "decode")
    except _Problem as e:
        raise _Skip(e.kind, e.detail) from None


def _dataset_items(cfg: ImportConfig, skipped: list) -> list[_Item]:
    import datasets

    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    try:
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    except Exception as e:  # noqa: BLE001 (datasets raises many kinds; each becomes one line)
        raise DataError(f"{path}: datasets could not load it: {type(e).__name__}: {str(e)[:300]}") from None
    if isinstance(loaded, datasets.Dataset):
        parts = [(None, loaded)]
    else:
        parts = [(_SPLIT_NAMES.get(name.lower()), ds) for name, ds in loaded.items()]
        unknown = [name for name in loaded if name.lower() not in _SPLIT_NAMES]
    if not isinstance(loaded, datasets.Dataset) and unknown:
        raise DataError(f"{path}: splits {unknown} are not train / validation / test; save only those")
    items: list[_Item] = []
    for split, ds in parts:
        for column in (cfg.image_column, cfg.label_column):
            if column not in ds.column_names:
                raise DataError(f"{path}: no column {column!r}; columns: {ds.column_names} (set --image-column / "
                                "--label-column)")
        feature = ds.features[cfg.label_column]
        names = getattr(feature, "names", None)  # a ClassLabel column holds ints
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False)) \
            if isinstance(ds.features[cfg.image_column], datasets.Image) else ds
        for index, row in enumerate(ds):
            where = f"{split or 'dataset'}[{index}]"
            value = row[cfg.label_column]
            try:
                name = names[value] if names is not None and isinstance(value, int) else value
                label = _label(name, cfg)
            except (_Skip, IndexError, TypeError) as e:
                _problem(cfg, skipped, where, e if isinstance(e, _Skip) else _Skip("unknown_label", repr(value)))
                continue
            items.append(_Item(label, f"{split or 'all'}_{index:07d}", split, _encoder(row[cfg.image_column], where)))
    return items


def _encoder(value, where: str):
    """Write a dataset's image cell: its original bytes when it has them (no re-encoding), else encoded."""
    def write(dst: Path) -> Path:
        import io

        from PIL import Image

        data = value.get("bytes") if isinstance(value, dict) else None
        src = value.get("path") if isinstance(value, dict) else None
        try:
            if data is None and src:
                data = Path(src).read_bytes()
            image = Image.open(io.BytesIO(data)) if data is not None else value
            image.load()
        except Exception as e:  # noqa: BLE001
            raise _Skip("unreadable_image", f"{where}: {type(e).__name__}: {e}") from None
        if data is not None:
            suffix = "." + (image.format or "png").lower().replace("jpeg", "jpg")
            target = dst.with_suffix(suffix)
            target.write_bytes(data)
            return target
        target = dst.with_suffix(".png")
        image.save(target)
        return target
    return write


def _problem(cfg: ImportConfig, skipped: list, where: str, e: _Skip, count: int = 1) -> None:
    if cfg.strict:
        raise DataError(f"{where}: {e.kind}: {e.detail} (pass --lenient to skip such items and report them)")
    skipped.append({"where": where, "kind": e.kind, "detail": e.detail, "items": count})


def _draw_splits(items: list[_Item], fractions: list[float], seed: int) -> None:
    """Give unsplit items a split, per label (stratified), reproducibly."""
    by_label: dict[str, list[_Item]] = {}
    for item in items:
        if item.split is None:
            by_label.setdefault(item.label, []).append(item)
    rng = random.Random(seed)
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda i: i.image_id)
        rng.shuffle(group)
        n_val, n_test = round(len(group) * fractions[1]), round(len(group) * fractions[2])
        for k, item in enumerate(group):
            item.split = "val" if k < n_val else "test" if k < n_val + n_test else "train"


def import_dataset(cfg: ImportConfig, progress: bool = False) -> dict:
    """Import ``cfg.path`` into the EmoSet layout at ``cfg.out``; returns the report."""
    from tqdm import tqdm

    from factory.data.emoset import SPLITS, read_split

    out, task = Path(cfg.out), load_task(cfg.task)
    if out.exists() and any(out.iterdir()):
        if not (out / MARK).is_file():
            raise DataError(f"{out} exists and was not written by svlm data import; refusing to replace it")
        if not cfg.overwrite:
            raise DataError(f"{out} exists; pass --overwrite to replace it")
    skipped: list[dict] = []
    items = (_folder_items if cfg.source == "imagefolder" else _dataset_items)(cfg, skipped)
    _draw_splits(items, cfg.fractions, cfg.seed)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / MARK).write_text("written by svlm data import\n")
        (tmp / "info.json").write_text(resources.files("factory.data").joinpath("info.json").read_text())
        entries: dict[str, list] = {s: [] for s in SPLITS}
        for item in tqdm(items, desc="importing", unit="img", disable=not progress):
            (tmp / "image" / item.label).mkdir(parents=True, exist_ok=True)
            (tmp / "annotation" / item.label).mkdir(parents=True, exist_ok=True)
            try:
                image = item.write(tmp / "image" / item.label / item.image_id)
            except _Skip as e:
                _problem(cfg, skipped, f"{item.split}/{item.label}/{item.image_id}", e)
                continue
            ann = f"annotation/{item.label}/{item.image_id}.json"
            # the layout's class field, and the attribute a task may be labelled from
            (tmp / ann).write_text(json.dumps({"image_id": item.image_id, "emotion": item.label}
                                              | ({task.label_from: item.label} if task.label_from != "split" else {})))
            entries[item.split].append([item.label, item.image_id, str(image.relative_to(tmp)), ann])
        for split, rows in entries.items():
            write_json(tmp / f"{split}.json", rows)
        empty = [s for s in ("train", "val") if not entries[s]]
        if empty:
            raise DataError(f"the import has no {' or '.join(empty)} images; a run needs both (check the source "
                            "or --fractions)")
        for split in SPLITS:  # what was written reads back with the reader's own checks
            read_split(tmp, split, task=task, strict=True, check_images="header")
        report = {"source": cfg.source, "path": str(Path(cfg.path).resolve()), "task": task.name,
                  "splits": {s: dict(sorted(Counter(r[0] for r in rows).items())) for s, rows in entries.items()},
                  "images": {s: len(rows) for s, rows in entries.items()},
                  "skipped": skipped, "skipped_by_kind": dict(Counter(s["kind"] for s in skipped))}
        write_json(tmp / "import_report.json", report, indent=2)
        from factory import config as config_lib

        config_lib.save(cfg, tmp)  # how it was made, beside what was made
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report
