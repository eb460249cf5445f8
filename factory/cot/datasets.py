"""Turn a CoT build into the training stages' datasets.

* SFT (stage 1): conversational ``prompt`` / ``completion`` columns plus an ``image`` column, so trl puts
  the loss on the answer only (DESIGN.md §3: a plain ``messages`` column trains on every token).
* Label-only SFT (stage 0, the paper's baseline): the same images, completion ``<answer>label</answer>``.
* GRPO (stages 2-4): ``prompt`` + ``image`` + ``label`` (the accuracy reward's ground truth).

Every row builder takes the task (``factory.tasks``): its question and its answer format.
"""

from __future__ import annotations

import json
from pathlib import Path

from factory.cot.build import TRACES, row_label
from factory.data.emoset import EmoSetRecord
from factory.tasks import Task, load_task


def sft_rows(cot_dir: str | Path, traces: str = "all", include_rationalized: bool = False,
             task: Task | None = None) -> list[dict]:
    """Rows for CoT SFT. ``traces``: "all" accepted traces, or "first" (one per image, teacher order)."""
    if traces not in ("all", "first"):
        raise ValueError(f"traces must be 'all' or 'first', got {traces!r}")
    task = load_task(task)
    rows, seen, foreign = [], set(), set()
    for line in (Path(cot_dir) / TRACES).read_text().splitlines():
        rec = json.loads(line)
        if rec["rationalized"] and not include_rationalized:
            continue
        if traces == "first" and rec["image_id"] in seen:
            continue
        seen.add(rec["image_id"])
        label = row_label(rec)
        if label not in task.label2id:
            foreign.add(label)
            continue
        user, assistant = task.messages("cot", answer=rec["response"].strip())
        rows.append({"image": rec["image"], "prompt": [user], "completion": [assistant],
                     "label": label, "teacher": rec["teacher"]})
    if foreign:
        from factory.errors import SVLMError

        raise SVLMError(f"{cot_dir} holds traces labelled {sorted(foreign)}, which task {task.name!r} does not have: "
                        "it was built for another task; build the CoT data for this one (svlm cot build --task)")
    return rows


def label_rows(records: list[EmoSetRecord], task: Task | None = None) -> list[dict]:
    """Rows for the label-only baseline."""
    task, rows = load_task(task), []
    for r in records:
        user, assistant = task.messages("label", answer=task.format_answer(r.label))
        rows.append({"image": str(r.image_path), "prompt": [user], "completion": [assistant], "label": r.label})
    return rows


def grpo_rows(records: list[EmoSetRecord], task: Task | None = None) -> list[dict]:
    """Rows for GRPO: the question, the image and the label for the accuracy reward."""
    task = load_task(task)
    return [{"image": str(r.image_path), "prompt": task.messages("cot"), "label": r.label} for r in records]


def to_dataset(rows: list[dict]):
    """A ``datasets.Dataset`` with the image column decoded lazily."""
    import datasets

    ds = datasets.Dataset.from_list(rows)
    return ds.cast_column("image", datasets.Image(mode="RGB"))
