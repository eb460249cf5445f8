"""Claims about accuracy come with statistics: the intervals cover, the paired test holds its level, svlm run
scores every stage on a clean held-out set with paired tests, and svlm ablate trains arms from one adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory import stats


def test_bootstrap_interval_covers_the_true_accuracy():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        correct = rng.random(400) < 0.85
        lo, hi = stats.bootstrap_ci(correct, n_boot=500, seed=trial)
        hits += lo <= 0.85 <= hi
    assert 0.90 <= hits / 200 <= 0.99, f"coverage {hits / 200:.2f}"


def test_mcnemar_holds_its_level_and_detects_a_real_gap():
    rng = np.random.default_rng(1)
    same = [stats.mcnemar(rng.random(400) < 0.85, rng.random(400) < 0.85)["p_value"] < 0.05 for _ in range(300)]
    assert np.mean(same) <= 0.06  # two equally good models: few false alarms
    truth = rng.random(400)
    better, worse = truth < 0.90, truth < 0.85  # the better model is right wherever the worse one is, and more
    result = stats.mcnemar(better, worse)
    assert result["b_only"] == 0 and result["a_only"] == int((better & ~worse).sum())
    assert result["p_value"] < 1e-3


def test_paired_interval_is_tighter_than_two_separate_ones():
    rng = np.random.default_rng(2)
    truth = rng.random(400)
    a, b = truth < 0.88, truth < 0.85
    diff, lo, hi = stats.paired_diff_ci(a, b)
    assert diff == pytest.approx(a.mean() - b.mean()) and lo > 0  # separate intervals would overlap
    (alo, ahi), (blo, bhi) = stats.bootstrap_ci(a), stats.bootstrap_ci(b)
    assert alo < bhi


def test_t_interval_matches_scipy():
    from scipy import stats as sps

    values = [0.81, 0.86, 0.84]
    mean, lo, hi = stats.t_interval(values)
    want = sps.t.interval(0.95, 2, loc=np.mean(values), scale=sps.sem(values))
    assert (lo, hi) == pytest.approx(want)
    assert np.isnan(stats.t_interval([0.8])[1])


# --- svlm run's held-out step and svlm ablate on a tiny run ---------------------------------------------

RUN_ARGS = ["model.size=tiny", "data.synth.n=80", "data.synth.image_size=32", "eval.limit=4",
            "eval.max_new_tokens=6", "train.select=0-2", "heldout.n=24", "export.enabled=false",
            "bench.enabled=false", "train.stages.0_baseline.max_steps=30", "train.stages.0_baseline.save_steps=100",
            "train.stages.1_sft.max_steps=2", "train.stages.2_grpo_format.max_steps=1",
            "train.stages.2_grpo_format.max_completion_length=6"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from factory.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "--output-dir", str(out), "--name", "h", *RUN_ARGS]) == 0
    return out / "h"


def test_run_scores_every_stage_on_a_clean_heldout_set(tiny_run, capsys):
    import yaml

    summary = json.loads((tiny_run / "summary.json").read_text())
    held = summary["heldout"]
    assert held["images"] == 24 and list(held["stages"]) == ["0_baseline", "1_sft", "2_grpo_format"]
    synth = yaml.safe_load((tiny_run / "heldout_data" / "svlm_config.yaml").read_text())
    assert synth["label_noise"] == 0.0 and synth["seed"] == 1000 and synth["fractions"] == [0.0, 0.0, 1.0]
    report = json.loads((tiny_run / "heldout" / "accuracy.json").read_text())
    for name, s in held["stages"].items():
        row = next(r for r in report["models"] if r["path"].endswith(name))
        correct = [p["predicted"] == p["label"] for p in row["predictions"]]
        assert s["accuracy"] == pytest.approx(np.mean(correct))
        assert s["accuracy_ci"][0] <= s["accuracy"] <= s["accuracy_ci"][1]
    # every stage but the references is tested against both; 1_sft also against the baseline
    assert set(held["stages"]["2_grpo_format"]["vs"]) == {"0_baseline", "1_sft"}
    assert set(held["stages"]["1_sft"]["vs"]) == {"0_baseline"}
    vs = held["stages"]["2_grpo_format"]["vs"]["1_sft"]
    mine = [p["predicted"] == p["label"] for p in report["models"][2]["predictions"]]
    ref = [p["predicted"] == p["label"] for p in report["models"][1]["predictions"]]
    assert vs["diff"] == pytest.approx(np.mean(mine) - np.mean(ref))
    assert vs["only_this"] == sum(a and not b for a, b in zip(mine, ref))
    assert "accuracy [95 % CI]" in (tiny_run / "heldout" / "accuracy.md").read_text()


def test_ablate_trains_arms_from_the_same_adapter_and_reports(tiny_run, capsys):
    from safetensors.torch import load_file

    from factory import ablate, config as config_lib

    cfg = config_lib.build(ablate.AblateConfig, {
        "run": str(tiny_run), "name": "abl", "seeds": [0, 1], "reference": "again", "jobs": 1,  # in this process
        "arms": {"again": {"start": "1_sft", "stages": ["2_grpo_format"]},
                 "other_lr": {"start": "1_sft", "stages": ["2_grpo_format"],
                              "overrides": {"2_grpo_format": {"learning_rate": 1e-2}}},
                 "sft": {"start": "1_sft", "stages": []}}})
    report = ablate.run(cfg, progress=False)
    out = tiny_run / "abl"
    for arm in ("again", "other_lr"):
        for seed in (0, 1):
            where = out / arm / f"seed{seed}"
            start = load_file(str(where / "1_sft" / "adapter" / "adapter_model.safetensors"))
            source = load_file(str(tiny_run / "1_sft" / "adapter" / "adapter_model.safetensors"))
            assert start.keys() == source.keys() and all((start[k] == source[k]).all() for k in start)
            stage = yaml_load(where / "2_grpo_format" / "stage.yaml")
            assert stage["parent"] == "1_sft"
            assert (where / "2_grpo_format" / "done.json").is_file()
    assert yaml_load(out / "other_lr" / "seed0" / "2_grpo_format" / "stage.yaml")["learning_rate"] == 1e-2
    rows = {r["arm"]: r for r in report["rows"]}
    assert rows["again"]["seeds"] == [0, 1] and rows["sft"]["seeds"] == [0]  # no training: scored once
    assert rows["other_lr"]["accuracy"] == pytest.approx(np.mean(rows["other_lr"]["accuracy_per_seed"]))
    assert not rows["again"]["vs"] and "p_value" in rows["sft"]["vs"]["again"]
    for name in ("ablation.md", "ablation.json", "ablation.png"):
        assert (out / name).stat().st_size > 0
    # a rerun trains nothing and scores nothing again
    stamp = (out / "again" / "seed0" / "2_grpo_format" / "done.json").stat().st_mtime_ns
    again = ablate.run(cfg, progress=False)["rows"]
    assert [r["accuracy_per_seed"] for r in again] == [r["accuracy_per_seed"] for r in report["rows"]]
    assert (out / "again" / "seed0" / "2_grpo_format" / "done.json").stat().st_mtime_ns == stamp


def test_ablate_chain_from_the_base_compares_stages_of_the_same_seed(tiny_run):
    from safetensors.torch import load_file

    from factory import ablate, config as config_lib

    cfg = config_lib.build(ablate.AblateConfig, {
        "run": str(tiny_run), "name": "seeds", "seeds": [0, 1], "reference": "chain", "evaluate": "all", "jobs": 1,
        "compare_stages": ["0_baseline", "1_sft"],
        "arms": {"chain": {"start": "base", "stages": ["0_baseline", "1_sft", "2_grpo_format"]}}})
    report = ablate.run(cfg, progress=False)
    rows = {r["stage"]: r for r in report["rows"]}
    assert set(rows["2_grpo_format"]["vs"]) == {"chain/0_baseline", "chain/1_sft"}
    assert set(rows["1_sft"]["vs"]) == {"chain/0_baseline"} and set(rows["0_baseline"]["vs"]) == {"chain/1_sft"}
    # train.seed reaches the fresh adapter's initialisation, so seeds are independent replicates
    a, b = (load_file(str(tiny_run / "seeds" / "chain" / f"seed{k}" / "1_sft" / "adapter" /
                          "adapter_model.safetensors")) for k in (0, 1))
    assert any(not (a[k] == b[k]).all() for k in a)
    assert "Δ vs chain/1_sft" in (tiny_run / "seeds" / "ablation.md").read_text()


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_default_grid_equals_its_yaml_and_arm_parents_follow_the_chain(tiny_run, tmp_path):
    from pathlib import Path

    from factory import ablate, config as config_lib
    from factory.pipeline import RunConfig

    configs = Path(__file__).parents[1] / "configs"
    yaml_cfg = config_lib.load(ablate.AblateConfig, configs / "ablate_default.yaml")
    assert config_lib.to_dict(yaml_cfg) == config_lib.to_dict(ablate.AblateConfig())
    config_lib.load(ablate.AblateConfig, configs / "ablate_seeds.yaml")  # validates
    rcfg = config_lib.load(RunConfig, tiny_run / "svlm_config.yaml")
    parents = {}
    for arm in ("skip_stage2", "skip_stage3", "clip_low"):
        tcfg = ablate.arm_train_config(rcfg, tiny_run / "data", yaml_cfg.arms[arm], tmp_path / arm / "seed3", 3)
        parents[arm] = [tcfg.stage(s).parent for s in yaml_cfg.arms[arm].stages]
        assert tcfg.train.seed == 3 and tcfg.model.source == str(tiny_run / "base_model")
    assert parents == {"skip_stage2": ["1_sft", "3_grpo_accuracy"], "skip_stage3": ["2_grpo_format"],
                       "clip_low": ["3_grpo_accuracy"]}
    symmetric = ablate.arm_train_config(rcfg, tiny_run / "data", yaml_cfg.arms["symmetric"], tmp_path / "s", 0)
    assert (symmetric.stage("4_clgrpo").epsilon, symmetric.stage("4_clgrpo").epsilon_high) == (0.2, 0.2)


@pytest.mark.parametrize("data,message", [
    ({"reference": "nope"}, "reference arm 'nope'"),
    ({"arms": {"a": {"start": "9_x"}}, "reference": "a"}, "unknown stage"),
    ({"arms": {"a": {"stages": ["4_clgrpo"], "overrides": {"3_grpo_accuracy": {}}}}, "reference": "a"},
     "does not train"),
    ({"seeds": []}, "at least one seed"),
    ({"arms": {"a": {"start": "base", "stages": ["2_grpo_format"]}}, "reference": "a"}, "must start with an SFT"),
])
def test_ablate_config_errors(data, message):
    from factory import ablate, config as config_lib
    from factory.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        config_lib.build(ablate.AblateConfig, data)


@pytest.mark.parametrize("train_them", [True, False])
def test_a_grpo_stage_can_freeze_the_adapters_fully_trained_modules(tiny_run, train_them):
    from factory import config as config_lib
    from factory.pipeline import RunConfig, train_config
    from factory.train.common import StageContext, load_policy
    from factory.train.stages import resolve_stage

    rcfg = config_lib.load(RunConfig, tiny_run / "svlm_config.yaml")
    tcfg = train_config(rcfg, tiny_run / "data")
    stage = resolve_stage("2_grpo_format", {"train_modules_to_save": train_them})
    ctx = StageContext("2_grpo_format", stage, tcfg, tiny_run / "2_grpo_format", str(tiny_run / "base_model"),
                       tiny_run / "data", tiny_run / "cot", progress=False)
    model, _ = load_policy(ctx)
    head = [p.requires_grad for n, p in model.named_parameters() if ".modules_to_save." in n]
    lora = [p.requires_grad for n, p in model.named_parameters() if "lora_" in n]
    assert head and all(h == train_them for h in head)  # svlm run's adapter trains lm_head in full
    assert lora and all(lora)


def test_svlm_ablate_cli_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    from factory.cli import main

    assert main(["ablate", "--run", str(tmp_path), "-q"]) == 2
    assert "is not an svlm run folder" in capsys.readouterr().err
    assert main(["ablate", "--run", str(tmp_path), "reference=nope"]) == 2
    assert "reference arm 'nope'" in capsys.readouterr().err


def test_a_run_refuses_a_base_model_built_with_another_tokenizer(tiny_run):
    from factory import config as config_lib
    from factory.errors import SVLMError
    from factory.pipeline import RunConfig, train_config
    from factory.train.runner import base_source

    rcfg = config_lib.load(RunConfig, tiny_run / "svlm_config.yaml")
    assert base_source(train_config(rcfg, tiny_run / "data")) == str(tiny_run / "base_model")  # reused as built
    rcfg.model.tokenizer = "real"
    with pytest.raises(SVLMError, match="was built as .*'tokenizer': 'small'"):
        base_source(train_config(rcfg, tiny_run / "data"))


def test_a_rerun_reuses_what_is_current_and_names_what_is_not(tmp_path, capsys):
    """svlm run again: every stage, the base model's evaluation and the held-out report are reused; a changed
    held-out limit redoes only that report; a changed stage setting stops with one line naming it."""
    from factory.cli import main

    argv = ["run", "--output-dir", str(tmp_path), "--name", "h", *RUN_ARGS]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("already done, skipped") == 3 and "base model's evaluation reused" in out
    assert "held-out report" in out and "up to date, reused" in out
    assert main(argv + ["heldout.limit=8"]) == 0
    out = capsys.readouterr().out
    assert "scoring 3 stages on the held-out set" in out and out.count("already done, skipped") == 3
    assert json.loads((tmp_path / "h" / "heldout" / "accuracy.json").read_text())["images"] == 8
    assert main(argv + ["train.stages.1_sft.max_steps=3"]) == 2
    err = capsys.readouterr().err
    assert "1_sft was trained from other settings (stage.max_steps differ)" in err and "--overwrite" in err
