"""svlm ablate runs independent arm-seeds at once (``jobs``), each in a spawned process: the report does not
depend on how many run at once or in which order they finish, a finished parallel run resumes without
retraining, and a unit that fails is named by its arm and seed."""

from __future__ import annotations

import json

import pytest

from test_method_stats import RUN_ARGS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from factory.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "--output-dir", str(out), "--name", "j", *RUN_ARGS]) == 0
    return out / "j"


def _cfg(run, name, jobs, arms, seeds=(0, 1)):
    from factory import ablate, config as config_lib

    return config_lib.build(ablate.AblateConfig, {"run": str(run), "name": name, "seeds": list(seeds),
                                                  "reference": next(iter(arms)), "jobs": jobs, "arms": arms})


ARMS = {"again": {"start": "1_sft", "stages": ["2_grpo_format"]},
        "fresh": {"start": "base", "stages": ["1_sft"]},  # a LoRA whose initialisation and data order follow the seed
        "sft": {"start": "1_sft", "stages": []},
        "sft_again": {"start": "1_sft", "stages": []}}  # scores the same run folder as sft: one unit for both


def test_parallel_arms_report_as_one_after_another_and_resume_without_retraining(tiny_run, capsys):
    from safetensors.torch import load_file

    from factory import ablate

    parallel = ablate.run(_cfg(tiny_run, "parallel", 2, ARMS), progress=False)
    log = capsys.readouterr().out
    assert "5 arm-seeds to train or score, 2 at a time (" in log  # 4 trainings, sft's folder scored once
    serial = ablate.run(_cfg(tiny_run, "serial", 1, ARMS), progress=False)
    assert [(r["arm"], r["stage"], r["seeds"]) for r in parallel["rows"]] == [
        ("again", "2_grpo_format", [0, 1]), ("fresh", "1_sft", [0, 1]), ("sft", "1_sft", [0]),
        ("sft_again", "1_sft", [0])]
    assert json.dumps(parallel["rows"]) == json.dumps(serial["rows"])
    assert (tiny_run / "parallel" / "ablation.md").read_text() == (tiny_run / "serial" / "ablation.md").read_text()
    for arm, stage in (("again", "2_grpo_format"), ("fresh", "1_sft")):
        for seed in (0, 1):
            assert f"{arm} seed {seed}: held-out accuracy" in log
            assert (tiny_run / "parallel" / arm / f"seed{seed}" / stage / "done.json").is_file()
    # training on a CPU is deterministic given the seed, whatever process it runs in: the same weights
    adapter = "1_sft/adapter/adapter_model.safetensors"
    (p0, p1), (s0, s1) = ([load_file(str(tiny_run / name / "fresh" / f"seed{k}" / adapter)) for k in (0, 1)]
                          for name in ("parallel", "serial"))
    assert all((p0[k] == s0[k]).all() and (p1[k] == s1[k]).all() for k in p0)
    assert any(not (p0[k] == p1[k]).all() for k in p0)  # and the seeds differ, so the check is not vacuous
    # a rerun of the finished parallel run trains and scores nothing
    folder = tiny_run / "parallel"
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/seed*/*/*.json")}
    assert len(stamps) >= 8
    again = ablate.run(_cfg(tiny_run, "parallel", 2, ARMS), progress=False)
    assert json.dumps(again["rows"]) == json.dumps(parallel["rows"])
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/seed*/*/*.json")} == stamps
    assert "at a time" not in capsys.readouterr().out  # nothing pending: no worker process started


def test_a_failing_arm_seed_is_named_and_the_finished_ones_are_kept(tiny_run):
    from factory import ablate
    from factory.errors import SVLMError

    arms = {"fine": ARMS["again"],  # an override that only the stage config (built in the worker) can refuse
            "broken": {"start": "1_sft", "stages": ["2_grpo_format"],
                       "overrides": {"2_grpo_format": {"no_such_setting": 1}}}}
    with pytest.raises(SVLMError, match=r"1 arm-seed\(s\) failed: broken seed 0 \(ConfigError: .*no_such_setting"):
        ablate.run(_cfg(tiny_run, "failing", 2, arms, seeds=[0]), progress=False)
    assert (tiny_run / "failing" / "fine" / "seed0" / "2_grpo_format" / "done.json").is_file()
    assert not (tiny_run / "failing" / "ablation.json").exists()


@pytest.mark.parametrize("jobs,pending,cuda,want", [(0, 21, False, 2), (0, 1, False, 1), (0, 21, True, 1),
                                                     (3, 21, True, 3), (4, 2, False, 2), (1, 21, False, 1)])
def test_jobs_zero_is_one_per_cpu_on_a_cpu_and_one_on_a_gpu(monkeypatch, jobs, pending, cuda, want):
    import torch

    from factory import ablate

    monkeypatch.setattr(ablate, "_cpus", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert ablate.workers(jobs, pending) == want


def test_negative_jobs_is_a_config_error():
    from factory import ablate, config as config_lib
    from factory.errors import ConfigError

    with pytest.raises(ConfigError, match="jobs must be 0"):
        config_lib.build(ablate.AblateConfig, {"jobs": -1})
