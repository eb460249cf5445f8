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
    from export.build import probe_inputs

    return probe_inputs(processor, n)


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


@pytest.mark.parametrize("sampler", ["generate", "fused"])
@pytest.mark.parametrize("family", ["internvl", "qwen2vl", "smolvlm"])
def test_chunked_rollouts_generate_what_one_batch_does(tiny_dirs, family, sampler):
    """``rollout_batch_size``: 5 sequences in chunks of 2 (2 + 2 + 1) give the greedy tokens of one batch of 5,
    each sequence with its own image (Qwen2-VL's flattened patches are cut by ``image_grid_thw``), and the
    chunks reach ``generate`` (with the fused sampler: its prefill) at most 2 at a time."""
    from factory.train.rollout import split_rows

    policy, processor = _policy(tiny_dirs, family)
    inputs = _inputs(processor, n=5)
    whole, chunked = RolloutCopy(policy), RolloutCopy(policy, batch_size=2, sampler=sampler)
    sizes, real = [], chunked.model.generate
    chunked.model.generate = lambda **kw: sizes.append(kw["input_ids"].shape[0]) or real(**kw)
    with torch.no_grad():
        want = whole.generate(**inputs, max_new_tokens=6, do_sample=False)
        got = chunked.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert sizes == [2, 2, 1]
    assert torch.equal(got, want)
    # every chunk holds its own sequences' image tensors, so distinct images give distinct tensors per chunk
    parts = split_rows(dict(inputs), 5, 2)
    assert torch.equal(torch.cat([c["pixel_values"] for c in parts]), inputs["pixel_values"])
    assert [c["input_ids"].shape[0] for c in parts] == [2, 2, 1]
    if "image_grid_thw" in inputs:
        per_image = inputs["image_grid_thw"].prod(-1)
        assert [c["pixel_values"].shape[0] for c in parts] == [int(per_image[:2].sum()), int(per_image[2:4].sum()),
                                                               int(per_image[4])]


def test_rows_that_cannot_be_told_apart_are_not_split():
    """A tensor that is neither per sequence nor cut by an image grid (several images in one sequence) leaves
    the batch whole: splitting it by position would pair sequences with other sequences' images."""
    from factory.train.rollout import split_rows

    ids = torch.zeros(4, 3, dtype=torch.long)
    assert split_rows({"input_ids": ids, "pixel_values": torch.zeros(6, 3)}, 4, 2) is None
    assert split_rows({"input_ids": ids, "image_grid_thw": torch.ones(8, 3, dtype=torch.long),
                       "pixel_values": torch.zeros(8, 3)}, 4, 2) is None
    chunks = split_rows({"input_ids": ids, "max_new_tokens": 5}, 4, 3)
    assert [c["input_ids"].shape[0] for c in chunks] == [3, 1] and chunks[1]["max_new_tokens"] == 5


def test_chunks_that_stop_early_are_padded():
    """Chunks of different lengths come back as one tensor, the short ones padded with the pad token."""
    copy = RolloutCopy.__new__(RolloutCopy)
    copy.batch_size, copy.decoder = 2, None
    outs = iter([torch.ones(2, 5, dtype=torch.long), torch.ones(1, 3, dtype=torch.long)])

    class Model:
        generation_config = type("C", (), {"pad_token_id": 7, "eos_token_id": 9})()

        def generate(self, **kw):
            return next(outs)

    copy.model = Model()
    got = copy.generate(input_ids=torch.zeros(3, 2, dtype=torch.long))
    assert got.shape == (3, 5) and got[2].tolist() == [1, 1, 1, 7, 7]


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


def _spy_rollout_copies(monkeypatch):
    """Record every RolloutCopy built (and its generate calls) and every refresh step; registers the "varied"
    reward (the completion's distinct characters) so GRPO groups differ in reward. Returns the three lists."""
    from factory import rewards
    from factory.train import rollout

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
    return refreshes, copies, generations


def test_grpo_stage_with_dense_rollouts_trains_and_refreshes(tmp_path, synth_root, cot_dir, small_tiny_dirs, monkeypatch):
    from factory import config as config_lib
    from factory.train.runner import TrainConfig, train

    refreshes, copies, generations = _spy_rollout_copies(monkeypatch)
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


def test_grpo_stage_with_the_fused_sampler_decodes_every_rollout_with_it(tmp_path, synth_root, cot_dir,
                                                                         small_tiny_dirs, monkeypatch):
    """``rollout_sampler: fused``: each rollout's tokens after the first come from the fused step (on the copy,
    refreshed as with generate), with trl's generation config (its suppressed image token included)."""
    from factory import config as config_lib
    from factory.train import decode
    from factory.train.runner import TrainConfig, train

    refreshes, copies, generations = _spy_rollout_copies(monkeypatch)
    steps, real_step = [], decode._step
    monkeypatch.setattr(decode, "_step", lambda state, fixed: (steps.append(fixed["warpers"]),
                                                                real_step(state, fixed))[1])
    small = {"max_steps": 2, "save_steps": 10, "logging_steps": 1, "batch_size": 4}
    grpo = {**small, "num_generations": 2, "max_completion_length": 8, "rollout": "dense",
            "rollout_sampler": "fused", "rewards": ["format", "varied"]}
    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(tmp_path), "name": "f", "data": str(synth_root), "cot": str(cot_dir),
        "model": {"source": str(small_tiny_dirs("internvl"))}, "eval": {"limit": 2, "max_new_tokens": 4},
        "train": {"lora": {"r": 4, "alpha": 8}, "stages": {"1_sft": {**small, "max_steps": 1}, "2_grpo_format": grpo}}})
    train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    assert len(copies) == 1 and copies[0].decoder is not None and refreshes == [None, 1]
    # two rollouts of 8 tokens: generate ran each prefill (and first token), the fused step the other 7
    assert generations[0] == [8, 8] and len(steps) == 14
    assert any(type(w).__name__ == "SuppressTokensLogitsProcessor" for w in steps[0])


def test_the_fused_sampler_needs_the_dense_copy():
    from factory.errors import ConfigError
    from factory.train.stages import resolve_stage

    with pytest.raises(ConfigError, match="rollout_sampler: fused"):
        resolve_stage("2_grpo_format", {"rollout": "trl", "rollout_sampler": "fused"})
    assert resolve_stage("2_grpo_format", {"rollout_sampler": "fused"}).rollout_sampler == "fused"


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


@pytest.mark.parametrize("lora,what", [({"use_dora": True}, "DoRA (use_dora)"), ({"lora_bias": True}, "lora_bias")])
def test_adapters_the_copy_cannot_merge_are_refused(tiny_dirs, lora, what, monkeypatch):
    from factory.errors import ConfigError
    from factory.train import rollout

    policy, _ = _policy(tiny_dirs, **lora)
    first = next(n for n, m in policy.named_modules() if hasattr(m, "lora_A"))  # the first adapted layer
    built = []
    real = rollout._policy_modules
    monkeypatch.setattr(rollout, "_policy_modules", lambda base: built.append(base) or real(base))
    message = (f"dense rollouts do not support {what} adapters ({first}): the rollout copy merges only B @ A "
               "and would sample from another policy; set rollout: trl")
    with pytest.raises(ConfigError) as err:
        RolloutCopy(policy)
    assert str(err.value) == message
    assert not built  # refused before anything of the copy is built


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


def test_grpo_rollouts_with_a_static_cache_refresh_once_per_optimizer_step(tmp_path, synth_root, cot_dir,
                                                                            small_tiny_dirs, monkeypatch):
    """The trainer-class path that runs on CUDA, on the CPU: ``grpo.cuda`` is patched so the stage asks for the
    static cache (transformers compiles only on CUDA, so generation here is the plain static-cache loop).
    Two micro-batches per optimizer step (grad_accum 2) each generate (steps_per_generation 1): the second
    rollout of a step must not refresh the copy again, and every rollout runs on the copy."""
    from factory import config as config_lib
    from factory.train import grpo
    from factory.train.runner import TrainConfig, train
    from trl import GRPOTrainer

    monkeypatch.setattr(grpo, "cuda", lambda: True)
    refreshes, copies, generations = _spy_rollout_copies(monkeypatch)
    trainers, real_build = [], grpo.build_grpo_trainer
    monkeypatch.setattr(grpo, "build_grpo_trainer", lambda ctx: trainers.append(real_build(ctx)) or trainers[-1])
    trl_calls, trl_generate = [], GRPOTrainer._generate_single_turn
    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn",
                        lambda self, *args, **kwargs: (trl_calls.append((args, kwargs)),
                                                       trl_generate(self, *args, **kwargs))[1])
    small = {"max_steps": 2, "save_steps": 10, "logging_steps": 1, "batch_size": 2}
    grpo_stage = {**small, "num_generations": 2, "max_completion_length": 6, "rollout": "dense",
                  "grad_accum": 2, "steps_per_generation": 1, "rewards": ["format", "varied"]}
    cfg = config_lib.build(TrainConfig, {
        "output_dir": str(tmp_path), "name": "s", "data": str(synth_root), "cot": str(cot_dir),
        "model": {"source": str(small_tiny_dirs("internvl"))}, "eval": {"limit": 2, "max_new_tokens": 4},
        "train": {"lora": {"r": 4, "alpha": 8}, "stages": {"1_sft": {**small, "max_steps": 1},
                                                            "2_grpo_format": grpo_stage}}})
    train(cfg, ["1_sft", "2_grpo_format"], progress=False)
    trainer = trainers[0]
    assert type(trainer).__name__ == "FastRolloutGRPOTrainer"
    assert trainer.rollout_options == {"static_cache": True, "batch_size": None, "sampler": "generate"}
    # one copy; 2 optimizer steps × 2 rollouts, all on the copy; refreshed at its build (None) and once after
    # each optimizer step that a rollout followed (step 1), not again for a step's second rollout
    assert len(copies) == 1 and generations[0] == [6, 6, 6, 6]
    assert refreshes == [None, 1]
    # the copy asks for the static cache, and so does the generation config trl passes to generate(), with
    # compilation allowed again (trl turns it off for its training-model rollouts)
    assert copies[0].model.generation_config.cache_implementation == "static"
    assert trainer.generation_config.cache_implementation == "static"
    assert trainer.generation_config.disable_compile is False
    # trl's tool loop passes num_generations and has_tool_images by keyword: they reach trl's own method too
    (prompt_ids, images, fields, n), _ = trl_calls[0]
    trainer._generate_single_turn(prompt_ids, images, fields, num_generations=n, has_tool_images=False)
    assert trl_calls[-1] == ((prompt_ids, images, fields), {"num_generations": n, "has_tool_images": False})
    assert generations[0][-1] == 6  # on the copy


def _bnb_policy(model_dir, quantization: dict, dtype=torch.float32, targets=("q_proj", "v_proj")):
    """A tiny InternVL quantized by bitsandbytes as ``from_pretrained`` does it (``quantization``: the
    BitsAndBytesConfig arguments), with LoRA on ``targets`` of the language model only: the language model's
    other Linears stay quantized and frozen. Returns ``(policy, dense)``, ``dense`` the same checkpoint
    unquantized in fp32 (the reference for the copy's weights)."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    from factory.families import get_family
    from factory.models import load_model

    family = get_family("internvl")
    config = BitsAndBytesConfig(**quantization, llm_int8_skip_modules=list(family.skip_4bit_modules))
    model = family.model_cls().from_pretrained(str(model_dir), quantization_config=config, dtype=dtype,
                                               device_map={"": "cpu"})
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=rf".*language_model.*\.({'|'.join(targets)})",
                      init_lora_weights=False)
    torch.manual_seed(0)
    dense = load_model(model_dir, dtype="float32", device="cpu").model
    return get_peft_model(model, lora).eval(), dense


def test_copy_of_an_int8_policy_holds_the_dequantized_weights(small_tiny_dirs):
    """An 8-bit base (bitsandbytes Int8Params): every quantized weight of the copy is the dequantized weight
    (plus the LoRA delta where adapted), never the raw int8 codes."""
    from peft.tuners.lora import LoraLayer

    policy, dense = _bnb_policy(small_tiny_dirs("internvl"), {"load_in_8bit": True})
    weights = dict(policy.named_parameters())
    assert {type(weights[f"base_model.model.{n}.base_layer.weight"]).__name__
            for n, m in policy.get_base_model().named_modules() if isinstance(m, LoraLayer)} == {"Int8Params"}
    assert "Int8Params" in {type(p).__name__ for n, p in weights.items() if ".mlp." in n}  # not adapted
    copy = RolloutCopy(policy)
    assert copy.dtype == torch.float32
    adapted = {n: m for n, m in policy.get_base_model().named_modules() if isinstance(m, LoraLayer)}
    checked = 0
    for name, module in dense.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".language_model." not in name:
            continue
        want = module.weight.detach().float()
        if name in adapted:
            want = want + adapted[name].get_delta_weight("default").float()
        got = copy.model.get_submodule(name).weight.float()
        # int8 absmax rounding per row: within half a step of 1/127 of the row's largest weight
        bound = module.weight.abs().amax(1, keepdim=True) / 127
        assert ((got - want).abs() <= bound).all(), name
        checked += 1
    assert checked == 14  # 2 layers × 7 Linears


def test_copy_of_an_int8_policy_computes_in_the_frozen_weights_dtype(small_tiny_dirs):
    """An 8-bit LoRA base has no compute dtype and int8 weights: the copy takes the dtype of the frozen float
    weights (bf16 here), not that of an fp32 trainable weight that comes first."""
    from factory.train.common import keep_trainable_fp32
    from factory.train.rollout import compute_dtype

    policy, _ = _bnb_policy(small_tiny_dirs("internvl"), {"load_in_8bit": True}, dtype=torch.bfloat16)
    next(policy.parameters()).requires_grad_(True)
    keep_trainable_fp32(policy)
    first = next(policy.parameters())
    assert first.requires_grad and first.dtype == torch.float32
    assert compute_dtype(policy) == torch.bfloat16
    copy = RolloutCopy(policy)
    assert copy.dtype == torch.bfloat16
    assert {p.dtype for p in copy.model.parameters() if p.is_floating_point()} == {torch.bfloat16}


def test_copy_of_an_nf4_policy_takes_bitsandbytes_compute_dtype(small_tiny_dirs):
    """A 4-bit base whose dense weights are fp32 but whose 4-bit layers compute in bf16 (a BitsAndBytesConfig
    the user chose): the adapted layers compute in bf16, and so does the copy."""
    from factory.train.rollout import compute_dtype

    policy, _ = _bnb_policy(small_tiny_dirs("internvl"), {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                          "bnb_4bit_compute_dtype": torch.bfloat16})
    assert next(p for p in policy.parameters() if p.is_floating_point()).dtype == torch.float32
    assert compute_dtype(policy) == torch.bfloat16
    assert RolloutCopy(policy).dtype == torch.bfloat16


def test_building_the_copy_leaves_the_policy_as_it_was(tiny_dirs):
    """The copy shares frozen weights with the policy; building it must not freeze the policy's trained
    weights (a shared ``modules_to_save`` weight would be frozen with the copy) nor unfreeze shared frozen
    ones; it keeps its own copy of each trained weight, and no static cache unless asked."""
    policy, _ = _policy(tiny_dirs)  # fp32: a trained lm_head has the copy's dtype, so it could be shared
    before = {n: p.requires_grad for n, p in policy.named_parameters()}
    assert any(".modules_to_save." in n for n, trained in before.items() if trained)
    copy = RolloutCopy(policy)
    assert {n: p.requires_grad for n, p in policy.named_parameters()} == before
    assert not [n for n, p in copy.model.named_parameters() if p.requires_grad]
    trained = {id(p) for p in policy.parameters() if p.requires_grad}
    assert not trained & {id(p) for p in copy.model.parameters()}
    assert copy.model.generation_config.cache_implementation is None
    assert copy.model.generation_config.cache_implementation == policy.generation_config.cache_implementation


def test_copy_merges_every_active_adapter_also_where_a_layer_lacks_one(tiny_dirs):
    """Two active adapters, the second on v_proj only: layers without it are neither refused nor changed by
    it, and the copy computes what the policy does."""
    from peft import LoraConfig

    policy, processor = _policy(tiny_dirs, modules_to_save=())
    policy.add_adapter("extra", LoraConfig(r=2, lora_alpha=4, target_modules=r".*language_model.*\.v_proj",
                                           init_lora_weights=False))
    policy.base_model.set_adapter(["default", "extra"])
    copy = RolloutCopy(policy)
    inputs = _inputs(processor)
    with torch.no_grad():
        assert (policy(**inputs).logits - copy.model(**inputs).logits).abs().max() < 1e-4


def test_a_policy_tensor_without_source_is_named(tiny_dirs):
    """A copy tensor the policy has no counterpart for fails the build, naming the tensors: a module with
    parameters (the first five of them, and how many) or a buffer."""
    policy, _ = _policy(tiny_dirs)
    del policy.get_base_model().model.multi_modal_projector  # 6 tensors
    names = ["model.multi_modal_projector." + n for n in ("layer_norm.weight", "layer_norm.bias", "linear_1.weight",
                                                          "linear_1.bias", "linear_2.weight")]
    with pytest.raises(RuntimeError) as err:
        RolloutCopy(policy)
    assert str(err.value) == f"rollout copy: no source for {names} (6 tensors)"

    policy, _ = _policy(tiny_dirs)
    del policy.get_base_model().model.language_model.rotary_emb.inv_freq
    with pytest.raises(RuntimeError) as err:
        RolloutCopy(policy)
    assert str(err.value) == "rollout copy: buffer model.language_model.rotary_emb.inv_freq has no source"


def test_a_rollout_trainer_class_starts_without_rollout_options():
    """``build_grpo_trainer`` sets the options on the class it gets; one made by hand takes none (no static
    cache), and each call makes its own class, so options set on one do not leak into the next."""
    from factory.train.rollout import fast_grpo_trainer_class

    first = fast_grpo_trainer_class()
    assert first.rollout_options == {}
    first.rollout_options = {"static_cache": True}
    assert fast_grpo_trainer_class().rollout_options == {}
