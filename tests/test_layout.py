"""The run layout: one module names the run's files, and its freshness helpers."""

from __future__ import annotations

import re
from pathlib import Path

from factory.layout import RunLayout, changes

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("done.json", "base_eval.json", "base_model", "heldout_data", "made_from.json", "data_reports")


def test_only_the_layout_module_spells_the_run_files():
    """Train, export, svlm run, ablate and the demo take run paths from RunLayout (a test like the family
    registry's: a file name spelled elsewhere fails here)."""
    offenders = []
    for folder in ("factory", "export", "demo", "benchmarks", "runtime/svlm_runtime"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "layout.py" or "results" in path.parts:
                continue
            for name in NAMES:
                if re.search(rf"[\"']{re.escape(name)}[\"']", path.read_text()):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders


def test_changes_name_the_nested_keys_that_differ():
    made = {"stage": {"learning_rate": 1e-4, "max_steps": 4}, "base": "<run>/base_model", "parent": None}
    assert changes(made, made) == []
    now = {"stage": {"learning_rate": 1e-3, "max_steps": 4}, "base": "<run>/base_model", "parent": "ab12"}
    assert changes(made, now) == ["parent", "stage.learning_rate"]
    assert changes({"a": 1}, {"b": 1}) == ["a", "b"]


def test_paths_are_recorded_relative_to_the_run_inside_it(tmp_path):
    layout = RunLayout(tmp_path / "runs" / "x")
    layout.data.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert layout.relative(layout.data) == "<run>/data"
    assert layout.relative(tmp_path / "runs" / "x" / ".." / "x" / "data") == "<run>/data"
    assert layout.relative(tmp_path / "elsewhere") == str((tmp_path / "elsewhere").resolve())
    assert layout.relative("OpenGVLab/InternVL3-1B-hf") == "OpenGVLab/InternVL3-1B-hf"  # a hub id


def test_finished_stages_come_in_training_order(tmp_path):
    layout = RunLayout(tmp_path)
    for name in ("2_grpo_format", "0_baseline", "notes"):
        layout.stage(name).mkdir()
        (layout.stage(name) / "done.json").write_text("{}")
    assert layout.finished() == ["0_baseline", "2_grpo_format"]


def test_the_folder_index_orders_the_stages_as_the_stage_table_does(tmp_path):
    from factory.train.stages import STAGE_ORDER

    layout = RunLayout(tmp_path / "run")
    assert layout.finished() == []  # no run folder yet
    for name in reversed(STAGE_ORDER):
        layout.stage(name).mkdir(parents=True)
        (layout.stage(name) / "done.json").write_text("{}")
    assert layout.finished() == list(STAGE_ORDER)
