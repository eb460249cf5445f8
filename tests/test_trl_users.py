"""What trl users expect of a stage: rewards by import path, trl's own field names, a choice of tracker,
validation during GRPO."""

from __future__ import annotations

import json
import sys

import pytest

from factory.errors import ConfigError
from factory.train.stages import resolve_stage


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A user's reward module in the working directory, as `svlm train` would find it."""
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(completions, **kwargs):\n"
        "    return [1.0 / (1 + len(str(c))) for c in completions]\n"
        "def no_kwargs(completions):\n"
        "    return [0.0 for _ in completions]\n"
        "NOT_A_FUNCTION = 3\n")
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield
    for name in ("my_rewards", "broken_rewards"):
        sys.modules.pop(name, None)


def test_a_reward_by_import_path_is_found_in_the_working_directory(reward_module):
    from factory.rewards import get_rewards

    stage = resolve_stage("3_grpo_accuracy", {"rewards": ["format", "my_rewards:brevity"]})
    fmt, brevity = get_rewards(stage.rewards)
    assert fmt.__name__ == "format_reward" and brevity(["ab", "abcd"]) == [1 / 3, 1 / 5]


@pytest.mark.parametrize("path,message", [
    ("nowhere_module:f", "cannot import nowhere_module"),
    ("my_rewards:missing", "my_rewards has no function 'missing'"),
    ("my_rewards:NOT_A_FUNCTION", "has no function 'NOT_A_FUNCTION'"),
    ("my_rewards:no_kwargs", "must take \\*\\*kwargs"),
    ("broken_rewards:f", "importing broken_rewards failed: RuntimeError: boom"),
    ("fromat", "unknown reward 'fromat'; give a built-in one \\(accuracy, format\\) or module:function"),
])
def test_a_bad_reward_path_is_one_line_before_training(reward_module, path, message):
    with pytest.raises(ConfigError, match=message) as info:
        resolve_stage("3_grpo_accuracy", {"rewards": ["format", path]})
    assert "\n" not in str(info.value)


def test_trl_field_names_map_to_the_stage_keys_the_guards_check():
    stage = resolve_stage("4_clgrpo", {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                                       "lr_scheduler_type": "linear", "num_train_epochs": 2.0})
    assert (stage.batch_size, stage.grad_accum, stage.lr_scheduler, stage.epochs) == (8, 1, "linear", 2.0)
    assert stage.trl == {}
    # ClipLow's guard sees the trl name too: μ = 1 with grad_accum from trl's name cannot clip
    with pytest.raises(ConfigError, match="never acts"):
        resolve_stage("4_clgrpo", {"gradient_accumulation_steps": 2, "num_iterations": 1})


def test_other_trl_fields_pass_through_and_are_checked_against_trls_dataclass():
    grpo = resolve_stage("3_grpo_accuracy", {"top_k": 50, "trl": {"repetition_penalty": 1.1}})
    assert grpo.trl == {"repetition_penalty": 1.1, "top_k": 50}
    sft = resolve_stage("1_sft", {"completion_only_loss": True})
    assert sft.trl == {"completion_only_loss": True}
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        resolve_stage("3_grpo_accuracy", {"trl": {"topk": 50}})
    with pytest.raises(ConfigError, match="neither a stage key nor a field of trl's SFTConfig"):
        resolve_stage("1_sft", {"num_generations_eval": 2})  # a GRPOConfig field, not an SFTConfig one
    with pytest.raises(ConfigError, match="both per_device_train_batch_size and batch_size"):
        resolve_stage("1_sft", {"per_device_train_batch_size": 4, "batch_size": 4})


@pytest.mark.parametrize("key,message", [
    ("output_dir", "is set by the run layout"), ("seed", "comes from train.seed"),
    ("report_to", "comes from train.report_to"), ("delta", "it is not supported"),
    ("generation_batch_size", "use the stage key `steps_per_generation`"),
])
def test_trl_fields_that_would_defeat_a_guard_are_refused_with_the_reason(key, message):
    for overrides in ({key: 1}, {"trl": {key: 1}}):
        with pytest.raises(ConfigError, match=message):
            resolve_stage("4_clgrpo", overrides)


def test_report_to_names_known_trackers_that_are_installed():
    from factory.train.runner import TrainOptions

    assert TrainOptions().report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        TrainOptions(report_to=["comet"])
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="wandb is not installed \\(pip install wandb\\)"):
            TrainOptions(report_to=["wandb"])


def test_trackers_reach_trl_and_each_stage_is_a_named_run(tmp_path):
    from types import SimpleNamespace

    from factory.train.common import trainer_args
    from factory.train.runner import TrainConfig

    cfg = TrainConfig(name="exp1", output_dir=str(tmp_path))
    ctx = SimpleNamespace(name="1_sft", stage=resolve_stage("1_sft"), cfg=cfg, out=tmp_path / "1_sft",
                          progress=False)
    args = trainer_args(ctx)
    assert args["report_to"] == "none" and args["run_name"] == "exp1/1_sft"  # tensorboard: our own callback
    cfg.train.report_to = ["tensorboard", "mlflow"]
    assert trainer_args(ctx)["report_to"] == ["mlflow"]


def test_validation_during_grpo_is_logged_as_format_and_accuracy(tmp_path, synth_root, cot_dir, small_tiny_dirs):
    """eval_steps: trl generates one completion per val image every eval_steps optimizer steps and logs each
    reward's mean (the format rate and the accuracy) under eval_; no tensorboard folder when report_to is []."""
    from factory import config as config_lib
    from factory.train.runner import TrainConfig, train

    small = {"max_steps": 2, "save_steps": 10, "logging_steps": 1, "batch_size": 2}
    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(tmp_path), "name": "v", "data": str(synth_root), "cot": str(cot_dir),
        "model": {"source": str(small_tiny_dirs("internvl"))}, "eval": {"limit": 2, "max_new_tokens": 4},
        "train": {"lora": {"r": 4, "alpha": 8}, "report_to": [], "stages": {
            "1_sft": {**small, "max_steps": 1},
            "2_grpo_format": {**small, "num_generations": 2, "max_completion_length": 6, "grad_accum": 1,
                              "rewards": ["format", "accuracy"], "eval_steps": 1, "eval_images": 3}}}})
    train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    history = json.loads((tmp_path / "v" / "2_grpo_format" / "log_history.json").read_text())
    evals = [r for r in history if "eval_rewards/accuracy_reward/mean" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(0 <= r["eval_rewards/format_reward/mean"] <= 1 for r in evals)
    assert not (tmp_path / "v" / "2_grpo_format" / "tensorboard").exists()


def test_eval_steps_belongs_to_grpo_stages():
    with pytest.raises(ConfigError, match="in grpo stages; got 5 in a sft stage"):
        resolve_stage("1_sft", {"eval_steps": 5})


def test_cards_link_a_hub_base_and_never_a_local_path(tmp_path):
    import yaml

    from factory.cards import front_matter, hub_id

    assert hub_id("OpenGVLab/InternVL3-1B-hf") == "OpenGVLab/InternVL3-1B-hf"
    assert hub_id(str(tmp_path)) is None and hub_id("runs/x/base") is None and hub_id("./a/b") is None
    meta = yaml.safe_load(front_matter(library_name="peft", base_model="HuggingFaceTB/SmolVLM-256M-Instruct",
                                       labels=["awe", "fear"], relation="adapter").split("---")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolVLM-256M-Instruct" and meta["base_model_relation"] == "adapter"
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["labels"] == ["awe", "fear"]
    local = yaml.safe_load(front_matter(library_name="onnx", base_model=str(tmp_path), labels=[]).split("---")[1])
    assert "base_model" not in local and "base_model_relation" not in local
