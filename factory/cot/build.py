"""``svlm cot build``: ask teachers, keep label-verified traces, write resumable JSONL and a summary.

Output folder:

* ``results.jsonl`` — one line per image: every teacher's attempt (raw response, parsed answer, status or
  failure kind), how many teachers agreed with the label, and the accepted traces. It is the resume log:
  a line is written whole and flushed once an image is finished, so a crash loses at most the images in
  flight; a partial last line from a crash is detected and dropped on restart.
* ``cot.jsonl`` — accepted traces, one per line (teacher, response, agreement, rationalized flag).
* ``summary.json`` / ``summary.md`` — acceptance per teacher and per class, agreement histogram, failures.
* ``svlm_config.yaml`` — the resolved config (no secrets: only the *name* of the key's env var).

Self-supervision (DESIGN.md §1, OURS): teachers never see the label; a trace is accepted only when it is
well formed and its answer equals the label. ``policy: first_k`` stops asking once ``k`` teachers agreed.
``rationalize: true`` adds a second pass for images no teacher got right, showing the label as a hint;
those records are marked ``rationalized`` and excluded from training data unless asked for.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from factory import config as config_lib
from factory.cot.teachers import TeacherConfig, TeacherError, make_teacher
from factory.data.emoset import EmoSetRecord, SplitResult, read_split
from factory.errors import ConfigError, DataError
from factory.files import folder_lock, write_json
from factory.tasks import Task, load_task

RESULTS, TRACES = "results.jsonl", "cot.jsonl"


@dataclass
class CotConfig:
    """``svlm cot build``: which data, which teachers, how to verify."""

    data: str = ""  # EmoSet root
    task: str = "emoset"  # the labels, question and answer rule (factory.tasks)
    split: str = "train"
    out: str = ""
    teachers: list[TeacherConfig] = field(default_factory=lambda: [TeacherConfig()])
    policy: str = "all"  # all: ask every teacher | first_k: stop once k teachers agreed with the label
    k: int = 1
    rationalize: bool = False  # second pass with the label as a hint for images no teacher got right
    limit: int = 0  # first N images of the split (0: all)
    strict_data: bool = False  # bad data: skip with a report (false) or stop (true)
    check_images: str = "decode"  # a truncated image would fail its teacher requests (and cost them) again on every resume

    def __post_init__(self):
        if self.policy not in ("all", "first_k"):
            raise ConfigError(f"policy must be 'all' or 'first_k', got {self.policy!r}")
        if self.k < 1:
            raise ConfigError(f"k must be ≥ 1, got {self.k}")
        if not self.teachers:
            raise ConfigError("at least one teacher is needed (teachers: [...])")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ConfigError(f"teacher names must be unique, got {names}")


def _classify(raw: str, label: str, task: Task) -> tuple[str, str | None]:
    parsed = task.parse(raw)
    if parsed.label is None:
        return "unparsable", None
    if parsed.label != label:
        return "wrong_answer", parsed.label
    return ("accepted" if parsed.well_formed else "bad_format"), parsed.label


REJECTS = "results.rejects.jsonl"


def read_results(path: Path) -> list[dict]:
    """Read the resume log, keeping every valid line: a partial last line (a crash mid-write) is dropped, a
    damaged line elsewhere is moved to ``results.rejects.jsonl`` beside it, a repeated image keeps its first
    result. When anything was dropped the log is rewritten atomically, so valid, paid-for results are never
    cut off with a bad line before them."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows, kept, rejects, seen = [], [], [], set()
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            continue  # the line a kill cut short: its image is simply asked again
        try:
            row = json.loads(line)
            valid = isinstance(row, dict) and isinstance(row.get("image_id"), str)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            valid = False
        if not valid:
            rejects.append(line)
        elif row["image_id"] not in seen:
            seen.add(row["image_id"])
            rows.append(row)
            kept.append(line)
    if sum(map(len, kept)) != len(data):
        if rejects:
            with open(path.with_name(REJECTS), "ab") as fh:
                fh.writelines(rejects)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.writelines(kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return rows


class Builder:
    def __init__(self, cfg: CotConfig):
        self.cfg, self.task = cfg, load_task(cfg.task)
        self.teachers = [make_teacher(t, self.task) for t in cfg.teachers]
        self.slots = {t.name: threading.BoundedSemaphore(t.concurrency) for t in self.teachers}

    def _ask(self, teacher, record: EmoSetRecord, hint: str | None = None) -> dict:
        attempt = {"teacher": teacher.name, "kind": teacher.cfg.kind}
        with self.slots[teacher.name]:
            try:
                raw = teacher.respond(record, hint)
            except TeacherError as exc:
                return attempt | {"status": exc.kind}
            except Exception as exc:  # a broken backend must not kill a long build
                return attempt | {"status": "teacher_error", "detail": type(exc).__name__}
        status, parsed = _classify(raw, record.label, self.task)
        return attempt | {"status": status, "parsed": parsed, "response": raw}

    def process(self, record: EmoSetRecord) -> dict:
        attempts = []
        for teacher in self.teachers:
            if self.cfg.policy == "first_k" and sum(a["status"] == "accepted" for a in attempts) >= self.cfg.k:
                break
            attempts.append(self._ask(teacher, record))
        agreed = sum(a["status"] == "accepted" for a in attempts)
        accepted = [{"teacher": a["teacher"], "kind": a["kind"], "response": a["response"], "rationalized": False}
                    for a in attempts if a["status"] == "accepted"]
        if self.cfg.rationalize and agreed == 0:
            for teacher in self.teachers:
                hinted = self._ask(teacher, record, hint=record.label) | {"hinted": True}
                attempts.append(hinted)
                if hinted["status"] == "accepted":
                    accepted.append({"teacher": teacher.name, "kind": teacher.cfg.kind, "response": hinted["response"],
                                     "rationalized": True})
                    break
        return {"image_id": record.image_id, "label": record.label, "image": str(record.image_path),
                "n_asked": sum(not a.get("hinted") for a in attempts), "n_agreed": agreed,
                "attempts": attempts, "accepted": accepted}


def _check_resume_compatible(cfg: CotConfig, out: Path) -> None:
    saved_path = out / config_lib.CONFIG_FILENAME
    if not saved_path.is_file() or not (out / RESULTS).is_file():
        return
    import yaml

    saved = yaml.safe_load(saved_path.read_text())
    now = config_lib.to_dict(cfg)
    keys = ("data", "task", "split", "teachers", "policy", "k", "rationalize")
    saved.setdefault("task", "emoset")  # builds made before tasks were EmoSet's
    changed = [k for k in keys if saved.get(k) != now.get(k)]
    if changed:
        raise DataError(f"{out} holds a CoT build made with other settings ({', '.join(changed)} differ); "
                        f"choose another --out or delete it to start over")


def build(cfg: CotConfig, progress: bool = True, split: SplitResult | None = None) -> dict:
    """Run (or resume) a build; return the summary.

    ``split``: the already-read ``cfg.split`` of ``cfg.data``, when the caller has it (``svlm run`` checks
    every split first); otherwise it is read here.
    """
    if not cfg.data or not cfg.out:
        raise ConfigError("cot build needs data (an EmoSet root) and out (an output folder)")
    builder = Builder(cfg)  # teachers validated (key variables set) before anything is written
    out = Path(cfg.out)
    with folder_lock(out):  # two builds appending to one log duplicated traces
        return _build(cfg, builder, out, progress, split)


def _build(cfg: CotConfig, builder: Builder, out: Path, progress: bool, split: SplitResult | None) -> dict:
    _check_resume_compatible(cfg, out)
    if split is None:
        split = read_split(cfg.data, cfg.split, task=builder.task, strict=cfg.strict_data,
                           check_images=cfg.check_images)
    if split.skipped:
        split.write_report(out / "data_report.json")
    records = split.records[: cfg.limit] if cfg.limit else split.records
    config_lib.save(cfg, out)
    results_path = out / RESULTS
    done = {row["image_id"] for row in read_results(results_path)}
    todo = [r for r in records if r.image_id not in done]
    workers = min(64, sum(t.concurrency for t in builder.teachers))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="CoT build", unit="img")
    with open(results_path, "a", encoding="utf-8") as log, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(builder.process, r) for r in todo]
        try:
            for future in as_completed(futures):
                # One write of a whole line, flushed: a killed process loses only images in flight (the
                # kernel keeps flushed bytes). No fsync per line: it cost more than the attribute teacher.
                log.write(json.dumps(future.result()) + "\n")
                log.flush()
                if bar is not None:
                    bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
    return finalize(out, {r.image_id for r in records}, builder.task)


def row_label(row: dict) -> str:
    """The label of a results / cot.jsonl row (builds made before tasks wrote it as ``emotion``)."""
    return row["label"] if "label" in row else row["emotion"]


def finalize(out: Path, wanted: set[str] | None = None, task: Task | None = None) -> dict:
    """Write cot.jsonl and the summary from the resume log."""
    task = load_task(task)
    rows = [r for r in read_results(out / RESULTS) if wanted is None or r["image_id"] in wanted]
    rows.sort(key=lambda r: (task.label2id[row_label(r)], r["image_id"]))
    tmp = out / (TRACES + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            for trace in row["accepted"]:
                fh.write(json.dumps({"image_id": row["image_id"], "label": row_label(row), "image": row["image"],
                                     "teacher": trace["teacher"], "teacher_kind": trace["kind"],
                                     "response": trace["response"],
                                     "n_agreed": row["n_agreed"], "n_asked": row["n_asked"],
                                     "rationalized": trace["rationalized"]}) + "\n")
    tmp.replace(out / TRACES)
    summary = summarize(rows, task)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def summarize(rows: list[dict], task: Task | None = None) -> dict:
    per_teacher: dict[str, Counter] = defaultdict(Counter)
    failures: Counter = Counter()
    per_class = {label: Counter() for label in load_task(task).labels}
    agreement: Counter = Counter()
    rationalized = 0
    for row in rows:
        agreement[row["n_agreed"]] += 1
        has_trace = any(not t["rationalized"] for t in row["accepted"])
        per_class[row_label(row)]["images"] += 1
        per_class[row_label(row)]["accepted"] += has_trace
        rationalized += any(t["rationalized"] for t in row["accepted"])
        for a in row["attempts"]:
            if a.get("hinted"):
                continue
            per_teacher[a["teacher"]]["asked"] += 1
            per_teacher[a["teacher"]][a["status"]] += 1
            if a["status"] != "accepted":
                failures[a["status"]] += 1
    teachers = {}
    for name, c in per_teacher.items():
        teachers[name] = {"asked": c["asked"], "accepted": c["accepted"],
                          "acceptance_rate": c["accepted"] / c["asked"] if c["asked"] else 0.0,
                          "failures": {k: v for k, v in c.items() if k not in ("asked", "accepted")}}
    images = len(rows)
    with_trace = sum(c["accepted"] for c in per_class.values())
    return {
        "task": load_task(task).name,
        "images": images,
        "images_with_trace": with_trace,
        "image_acceptance_rate": with_trace / images if images else 0.0,
        "traces": sum(len([t for t in r["accepted"] if not t["rationalized"]]) for r in rows),
        "rationalized_images": rationalized,
        "per_teacher": teachers,
        "per_class": {e: {"images": c["images"], "with_trace": c["accepted"],
                          "acceptance_rate": c["accepted"] / c["images"] if c["images"] else 0.0}
                      for e, c in per_class.items()},
        "agreement_histogram": {str(k): agreement[k] for k in sorted(agreement)},
        "failures_by_kind": dict(failures.most_common()),
    }


def summary_markdown(s: dict) -> str:
    lines = ["# CoT build summary", "",
             f"{s['images']} images; {s['images_with_trace']} with at least one verified trace "
             f"({s['image_acceptance_rate']:.1%}); {s['traces']} traces; "
             f"{s['rationalized_images']} rationalized images.", "",
             "## Per teacher", "", "| teacher | asked | accepted | rate | failures |", "|---|---:|---:|---:|---|"]
    for name, t in s["per_teacher"].items():
        fails = ", ".join(f"{k} {v}" for k, v in t["failures"].items()) or "-"
        lines.append(f"| {name} | {t['asked']} | {t['accepted']} | {t['acceptance_rate']:.1%} | {fails} |")
    lines += ["", "## Per class", "", "| label | images | with trace | rate |", "|---|---:|---:|---:|"]
    for e, c in s["per_class"].items():
        lines.append(f"| {e} | {c['images']} | {c['with_trace']} | {c['acceptance_rate']:.1%} |")
    lines += ["", "## Teachers agreeing with the label", "", "| teachers | images |", "|---:|---:|"]
    lines += [f"| {k} | {v} |" for k, v in s["agreement_histogram"].items()]
    lines += ["", "## Failures by kind", "", "| kind | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in s["failures_by_kind"].items()] or ["| none | 0 |"]
    return "\n".join(lines) + "\n"
