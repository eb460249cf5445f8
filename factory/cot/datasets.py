"""Turn a CoT build into the training stages' datasets.

* SFT (stage 1): conversational ``prompt`` / ``completion`` columns plus an ``image`` column, so trl puts
  the loss on the answer only (DESIGN.md §3: a plain ``messages`` column trains on every token).
* Label-only SFT (stage 0, the paper's baseline): the same images, completion ``<answer>label</answer>``.
* GRPO (stages 2-4): ``prompt`` + ``image`` + ``emotion`` (the accuracy reward's ground truth).
"""

from __future__ import annotations

import json
from pathlib import Path

from factory.cot.build import TRACES
from factory.data.emoset import EmoSetRecord
from factory.prompts import build_messages, format_answer


def sft_rows(cot_dir: str | Path, traces: str = "all", include_rationalized: bool = False) -> list[dict]:
    """Rows for CoT SFT. ``traces``: "all" accepted traces, or "first" (one per image, teacher order)."""
    if traces not in ("all", "first"):
        raise ValueError(f"traces must be 'all' or 'first', got {traces!r}")
    rows, seen = [], set()
    for line in (Path(cot_dir) / TRACES).read_text().splitlines():
        rec = json.loads(line)
        if rec["rationalized"] and not include_rationalized:
            continue
        if traces == "first" and rec["image_id"] in seen:
            continue
        seen.add(rec["image_id"])
        user, assistant = build_messages("cot", answer=rec["response"].strip())
        rows.append({"image": rec["image"], "prompt": [user], "completion": [assistant],
                     "emotion": rec["emotion"], "teacher": rec["teacher"]})
    return rows


def label_rows(records: list[EmoSetRecord]) -> list[dict]:
    """Rows for the label-only baseline."""
    rows = []
    for r in records:
        user, assistant = build_messages("label", answer=format_answer(r.emotion))
        rows.append({"image": str(r.image_path), "prompt": [user], "completion": [assistant], "emotion": r.emotion})
    return rows


def grpo_rows(records: list[EmoSetRecord]) -> list[dict]:
    """Rows for GRPO: the question, the image and the label for the accuracy reward."""
    return [{"image": str(r.image_path), "prompt": build_messages("cot"), "emotion": r.emotion} for r in records]


def to_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` with the image column decoded lazily."""
    import datasets

    ds = datasets.Dataset.from_list(rows)
    return ds.cast_column("image", datasets.Image(mode="RGB"))
