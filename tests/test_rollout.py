"""Dense rollouts sample from the policy being trained: the copy's log-probs equal the training model's,
and the copy follows the adapter after every optimizer step."""

from __future__ import annotations

import pytest
import torch

from factory.train.rollout import RolloutCopy


def _policy(tiny_dirs, family="internvl", nf4=False, modules_to_save=("lm_head",), dtype="float32", **lora):
    from peft import LoraConfig, get_peft_model

    from factory.families import get_family
    from factory.models import load_model

    loaded = load_model(tiny_dirs(family), load_in_4bit=nf4, dtype=dtype, device="cpu")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=get_family(family).lora_target_modules,
                     modules_to_save=list(modules_to_save), init_lora_weights=False, **lora)  # random B: non-zero
    torch.manual_seed(0)
    return get_peft_model(loaded.model, cfg).eval(), loaded.processor


def _inputs(processor, n=2):
    from export.build import _probe_inputs

    return _probe_inputs(processor, n)


def _spy_generate(copy: RolloutCopy) -> list:
    """Count the calls that reach the copy's own ``generate`` (the routing under test)."""
    calls, real = [], copy.model.generate

    def generate(*args, **kwargs):
        config = kwargs.get("generation_config")  # trl passes its own; a plain call passes max_new_tokens
        calls.append(kwargs.get("max_new_tokens") or config.max_new_tokens)
        return real(*args, **kwargs)

    copy.model.generate = generate
    return calls


def _token_logps(model, inputs, sequences):
    with torch.no_grad():
        full = {**inputs, "input_ids": sequences,
                "attention_mask": torch.ones_like(sequences)}
        logits = model(**full).logits[:, inputs["input_ids"].shape[1] - 1:-1].float()
    new = sequences[:, inputs["input_ids"].shape[1]:]
    return torch.log_softmax(logits, -1).gather(-1, new[..., None])[..., 0]


@pytest.mark.parametrize("family", ["internvl", "smolvlm"])
def test_sampled_tokens_have_the_same_logprobs_under_copy_and_policy(tiny_dirs, family):
    policy, processor = _policy(tiny_dirs, family)
    copy = RolloutCopy(policy)
    calls = _spy_generate(copy)
    inputs = _inputs(processor)
    torch.manual_seed(1)
    with copy.serving(policy), torch.no_grad():
        out = policy.generate(**inputs, max_new_tokens=8, do_sample=True, temperature=1.0)
    assert calls == [8]  # the policy's generate ran on the copy
    with torch.no_grad():  # outside the block the policy generates itself again
        policy.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert calls == [8]
    gap = (_token_logps(policy, inputs, out) - _token_logps(copy.model, inputs, out)).abs().max()
    assert gap < 1e-4, f"log-prob gap {gap:.2e}"
    assert "generate" not in policy.__dict__  # the routing is scoped


@pytest.mark.parametrize("modules_to_save", [["lm_head"], ["multi_modal_projector"]])
def test_copy_follows_the_adapter_after_an_optimizer_step(tiny_dirs, modules_to_save):
    # multi_modal_projector is a module with children: its trained copy must reach the dense copy too
    policy, processor = _policy(tiny_dirs, modules_to_save=modules_to_save)
    copy = RolloutCopy(policy)
    assert not [n for n, p in copy.model.named_parameters() if p.is_meta]
    inputs = _inputs(processor)
    with torch.no_grad():
        assert (policy(**inputs).logits - copy.model(**inputs).logits).abs().max() < 1e-4
    policy.train()
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    policy(**inputs).logits.float().pow(2).mean().backward()
    opt.step()
    policy.eval()
    with torch.no_grad():
        want = policy(**inputs).logits
        stale = copy.model(**inputs).logits
        copy.refresh(policy, step=1)
        fresh = copy.model(**inputs).logits
    assert (want - stale).abs().max() > 1e-3  # the step changed the policy, and the old copy lags
    assert (want - fresh).abs().max() < 1e-4 and copy.step == 1
    with torch.no_grad():  # refreshing writes only into the copy, never into shared training weights
        assert torch.equal(policy(**inputs).logits, want)
    shared = {id(p) for p in policy.parameters()} & {id(p) for p in copy.model.parameters()}
    assert shared and len(shared) < len(list(copy.model.parameters()))  # frozen modules shared, adapted ones not


def test_copy_of_an_nf4_policy_is_dense_and_matches(tiny_dirs):
    import bitsandbytes as bnb

    policy, processor = _policy(tiny_dirs, nf4=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    copy = RolloutCopy(policy, dtype=torch.float32)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in copy.model.modules())
    inputs = _inputs(processor)
    with torch.no_grad():
        gap = (policy(**inputs).logits.float() - copy.model(**inputs).logits).abs().max()
    assert gap < 1e-3, f"logit gap {gap:.2e}"


def test_grpo_stage_with_dense_rollouts_trains_and_refreshes(tmp_path, synth_root, cot_dir, small_tiny_dirs, monkeypatch):
    from factory import config as config_lib
    from factory import rewards
    from factory.train import rollout
    from factory.train.runner import TrainConfig, train

    monkeypatch.setitem(rewards.REWARDS, "varied",
                        lambda completions, **kw: [len(set(rewards.completion_text(c))) / 10 for c in completions])
    refreshes, copies, generations = [], [], []
    real_refresh, real_init = rollout.RolloutCopy.refresh, rollout.RolloutCopy.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        copies.append(self)
        generations.append(_spy_generate(self))

    monkeypatch.setattr(rollout.RolloutCopy, "__init__", init)
    monkeypatch.setattr(rollout.RolloutCopy, "refresh",
                        lambda self, model, step=None: (refreshes.append(step), real_refresh(self, model, step))[1])
    small = {"max_steps": 3, "save_steps": 10, "logging_steps": 1, "batch_size": 4}
    grpo = {**small, "num_generations": 2, "max_completion_length": 8, "rollout": "dense",
            "rewards": ["format", "varied"]}
    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(tmp_path), "name": "r", "data": str(synth_root), "cot": str(cot_dir),
        "model": {"source": str(small_tiny_dirs("internvl"))}, "eval": {"limit": 2, "max_new_tokens": 4},
        "train": {"lora": {"r": 4, "alpha": 8}, "stages": {"1_sft": small, "2_grpo_format": grpo}}})
    train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    # the initial build refreshes (step None), then one refresh per rollout after an optimizer step
    assert refreshes[0] is None and refreshes[1:] == [1, 2]
    # one copy, and every one of the 3 rollouts (one per optimizer step here) generated on it
    assert len(copies) == 1 and generations[0] == [8, 8, 8]


@pytest.mark.parametrize("rollout_knob,on_cuda,dense", [
    ("dense", False, True), ("dense", True, True), ("auto", True, True), ("auto", False, False),
    ("trl", True, False), ("trl", False, False)])
def test_the_rollout_knob_chooses_the_dense_copy(rollout_knob, on_cuda, dense, monkeypatch, tmp_path):
    """README: on CUDA (``rollout: auto``) and whenever ``rollout: dense``, GRPO samples from the dense copy;
    the trainer class that does it is what ``build_grpo_trainer`` picks."""
    from factory.train import common, grpo
    from factory.train.runner import TrainConfig
    from factory.train.stages import resolve_stage

    monkeypatch.setattr(grpo, "cuda", lambda: on_cuda)
    stage = resolve_stage("2_grpo_format", {"rollout": rollout_knob})
    ctx = common.StageContext("2_grpo_format", stage, TrainConfig(), tmp_path, "base", tmp_path, tmp_path)
    assert grpo.dense_rollouts(ctx) is dense


@pytest.mark.gpu
def test_grpo_on_cuda_samples_from_the_dense_copy_with_a_static_cache(tmp_path, synth_root, cot_dir, small_tiny_dirs,
                                                                       monkeypatch):
    """On CUDA with the default ``rollout: auto``: the copy is built, every rollout generates on it, and trl's
    generation config asks for the static cache."""
    from factory import config as config_lib
    from factory import rewards
    from factory.train import grpo, rollout
    from factory.train.runner import TrainConfig, train

    assert torch.cuda.is_available()
    monkeypatch.setitem(rewards.REWARDS, "varied",
                        lambda completions, **kw: [len(set(rewards.completion_text(c))) / 10 for c in completions])
    copies, generations, trainers = [], [], []
    real_init, real_build = rollout.RolloutCopy.__init__, grpo.build_grpo_trainer

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        copies.append(self)
        generations.append(_spy_generate(self))

    monkeypatch.setattr(rollout.RolloutCopy, "__init__", init)
    monkeypatch.setattr(grpo, "build_grpo_trainer", lambda ctx: trainers.append(real_build(ctx)) or trainers[-1])
    small = {"max_steps": 2, "save_steps": 10, "logging_steps": 1, "batch_size": 4}
    grpo_stage = {**small, "num_generations": 2, "max_completion_length": 8, "rewards": ["format", "varied"]}
    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(tmp_path), "name": "g", "data": str(synth_root), "cot": str(cot_dir),
        "model": {"source": str(small_tiny_dirs("internvl"))}, "eval": {"limit": 2, "max_new_tokens": 4},
        "train": {"lora": {"r": 4, "alpha": 8}, "stages": {"1_sft": small, "2_grpo_format": grpo_stage}}})
    train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    assert type(trainers[0]).__name__ == "FastRolloutGRPOTrainer"
    assert len(copies) == 1 and generations[0] == [8, 8]
    assert copies[0].model.generation_config.cache_implementation == "static"
    assert trainers[0].generation_config.cache_implementation == "static"
    assert next(copies[0].model.parameters()).is_cuda


def test_static_cache_stays_on_the_copy(tiny_dirs):
    policy, _ = _policy(tiny_dirs)
    before = policy.generation_config.to_dict()
    copy = RolloutCopy(policy, static_cache=True)
    assert copy.model.generation_config.cache_implementation == "static"
    assert policy.generation_config.to_dict() == before  # the training model's generation is untouched


@pytest.mark.parametrize("lora", [{"use_dora": True}, {"lora_bias": True}])
def test_adapters_the_copy_cannot_merge_are_refused(tiny_dirs, lora):
    from factory.errors import ConfigError

    policy, _ = _policy(tiny_dirs, **lora)
    with pytest.raises(ConfigError, match="dense rollouts do not support.*rollout: trl"):
        RolloutCopy(policy)


def test_copy_computes_in_the_base_dtype_not_the_fp32_master_weights(tiny_dirs):
    from factory.train.common import keep_trainable_fp32

    policy, processor = _policy(tiny_dirs, dtype="bfloat16")
    next(policy.parameters()).requires_grad_(True)  # a fully trained weight that happens to come first
    keep_trainable_fp32(policy)
    assert next(p for p in policy.parameters() if p.is_floating_point()).dtype == torch.float32
    copy = RolloutCopy(policy)
    assert copy.dtype == torch.bfloat16
    assert {p.dtype for p in copy.model.parameters() if p.is_floating_point()} == {torch.bfloat16}


def test_trl_hook_we_override_is_still_there():
    """``_generate_single_turn`` is private to trl (pinned to 1.16.x in pyproject.toml): the override routes
    the unwrapped model's ``generate`` and sets trl's ``generation_config``; fail loudly if trl moved them."""
    import inspect

    import trl
    from trl import GRPOTrainer

    assert trl.__version__.startswith("1.16.")
    params = list(inspect.signature(GRPOTrainer._generate_single_turn).parameters)
    assert params[:5] == ["self", "prompt_ids", "images", "multimodal_fields", "num_generations"]
    source = inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "unwrapped_model.generate(" in source and "generation_config=self.generation_config" in source
