"""The run folder's layout, and the one rule for reusing what is in it.

    runs/<name>/
      data/  cot/  base_model/  data_reports/  base_eval.json  summary.json  stages.png
      0_baseline/ … 4_clgrpo/        one folder per stage: adapter/, checkpoints/, done.json, made_from.json
      heldout_data/  heldout/        the clean held-out set and its report
      export/<quant>/  bench/        packages and their benchmark

Train, export, the benchmarks of ``svlm run`` and the demo take their paths from ``RunLayout``. Freshness: an
output records what it was made from (``made_from``: the settings and inputs that decide it); it is reused
only when that record equals what the current config would make (``changes`` lists the differences). Stages
are expensive, so a stale one is an error that names the differences (``--overwrite`` retrains); derived
reports are cheap and are redone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DONE = "done.json"  # a finished stage: its metrics, and what it was made from
MADE_FROM = "made_from.json"  # what a stage (or a report, beside it) was made from


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    data = property(lambda self: self.root / "data")
    cot = property(lambda self: self.root / "cot")
    base_model = property(lambda self: self.root / "base_model")
    data_reports = property(lambda self: self.root / "data_reports")
    base_eval = property(lambda self: self.root / "base_eval.json")
    summary = property(lambda self: self.root / "summary.json")
    stages_plot = property(lambda self: self.root / "stages.png")
    heldout_data = property(lambda self: self.root / "heldout_data")
    heldout = property(lambda self: self.root / "heldout")
    export = property(lambda self: self.root / "export")
    bench = property(lambda self: self.root / "bench")

    def export_for(self, layout: str) -> Path:
        """Where ``svlm export --layout LAYOUT`` writes by default: ``export/`` for the project's own layout,
        ``export-<layout>/`` for the others (so that exporting one layout never replaces another)."""
        return self.export if layout == "svlm" else self.root / f"export-{layout}"

    def stage(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> Path:
        return self.root / name / DONE

    def finished(self) -> list[str]:
        """The finished stages, in training order: stage folders are named ``<index>_<name>`` (the stage
        table's names), so the index orders them without the layout importing the training code."""
        if not self.root.is_dir():
            return []
        stages = [d.name for d in self.root.iterdir() if d.name.split("_", 1)[0].isdigit() and (d / DONE).is_file()]
        return sorted(stages, key=lambda name: (int(name.split("_", 1)[0]), name))

    def packages(self) -> list[Path]:
        """The exported packages (folders with a manifest)."""
        return [m.parent for m in self.export.glob("*/manifest.json")]

    def relative(self, path: str | Path) -> str:
        """A path as a record keeps it: ``<run>/…`` inside the run (so a moved or copied run still matches its
        records), absolute outside it; a hub id as it is."""
        if not Path(path).exists():
            return str(path)
        resolved, run = Path(path).resolve(), self.root.resolve()
        return f"<run>/{resolved.relative_to(run)}" if resolved.is_relative_to(run) else str(resolved)


def changes(recorded: dict, now: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between what an output was made from and what would make it now."""
    out = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out
