"""The stage table: the paper's four stages and the label-only baseline, their parents and default knobs.

``configs/stages/<name>.yaml`` spells out each entry (a test keeps them equal). The three GRPO stages
differ only in data: rewards, steps and clip settings. The defaults are sized for a real ≤ 2B model on
one 24 GB GPU; ``svlm run`` overrides steps and learning rates for its small random model on a CPU.

Incremental training (DESIGN.md §1): every stage with a parent loads the parent's LoRA adapter *as
trainable* and keeps training it, rather than merging it and starting a new adapter. With QLoRA the base
is nf4, and merging into it would either dequantize (a full-precision copy per stage) or round the merged
weights back to 4 bits, losing part of what the previous stage learned; one continued adapter avoids both
and leaves a single adapter to merge at export.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from factory import config as config_lib
from factory.errors import ConfigError
from factory.rewards import REWARDS, get_rewards


@dataclass
class StageConfig:
    """One stage. SFT stages read the ``sft`` knobs, GRPO stages the ``grpo`` ones; both read the rest."""

    kind: Literal["sft", "grpo"] = "sft"
    parent: str | None = None  # the stage whose adapter this one continues; None: a fresh adapter on the base
    # cot: verified CoT traces; labels: label-only answers (the baseline); prompts: train images + labels (GRPO)
    data: Literal["cot", "labels", "prompts"] = "cot"
    traces: Literal["all", "first"] = "all"  # cot data: every verified trace, or one per image
    # grpo: the train images GRPO samples from: all, or only those with a verified CoT trace (the paper runs
    # GRPO on its CoT data; OURS: which one helps is an experiment, so both are kept)
    prompts: Literal["all", "cot"] = "all"
    eval_style: Literal["cot", "label"] = "cot"  # the question asked at evaluation
    # optimisation
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8  # per device; GRPO: completions per device step (prompts × num_generations)
    grad_accum: int = 1
    # Whether the adapter's fully trained modules (``lora.modules_to_save``, e.g. a random model's lm_head) keep
    # training in this stage. Adam gives every row of a trained head a step of about the learning rate even
    # where its gradient is only the softmax's faint push, so in RL, with its noisy gradients, a trainable head
    # drifts; false freezes them and leaves the LoRA matrices to the reward.
    train_modules_to_save: bool = True
    save_steps: int = 100  # checkpoint interval: what a killed run resumes from
    logging_steps: int = 5
    # sft
    max_length: int | None = 1024  # prompt + image tokens + answer; longer examples are cut at the end
    # grpo
    rewards: list[str] = field(default_factory=list)
    reward_weights: list[float] | None = None
    num_generations: int = 8  # G: completions per prompt, compared with each other for the advantage
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    num_iterations: int = 1  # optimizer passes per generation batch (μ in the GRPO paper)
    steps_per_generation: int | None = None  # None: grad_accum
    epsilon: float = 0.2  # ε_low: ratio clipped from below at 1 − ε_low
    epsilon_high: float | None = None  # ε_high: ratio clipped from above at 1 + ε_high; None: = epsilon
    clip_low: bool = False  # ClipLow (CLGRPO): require ε_low < ε_high and a setting in which the clip acts
    beta: float = 0.0  # KL weight; 0 keeps no reference model (trl's default)
    loss_type: str = "dapo"
    mask_truncated_completions: bool = False
    # Rollouts: "trl" generates with the training model; "dense" with a dense copy of the policy refreshed
    # after every optimizer step (factory/train/rollout.py); "auto": dense on CUDA, trl on a CPU (where the
    # training model is already dense and a copy only costs memory).
    rollout: Literal["auto", "trl", "dense"] = "auto"
    rollout_static_cache: bool = True  # dense rollouts: a static KV cache, which transformers compiles on CUDA
    # dense rollouts: sequences generated at once (None: the whole generation batch). Caps the KV cache: a
    # 2B shape at 16 prompts × G=8 × 1024 tokens holds ~4.8 GB of static cache in one batch.
    rollout_batch_size: int | None = None
    # dense rollouts' decoding loop: "generate" (transformers', which compiles the forward only) or "fused" (one
    # compiled step per token holding the forward, the sampler and the stop bookkeeping; factory/train/decode.py).
    # Same distribution; fused has no host round trip per token. Its GPU speed is measured by benchmarks/train_gpu.py.
    rollout_sampler: Literal["generate", "fused"] = "generate"
    # validation during GRPO: every eval_steps optimizer steps, one completion for each of eval_images val images,
    # sampled at the stage's temperature; logged as eval_rewards/<reward>/mean (format rate, accuracy).
    # None: the stage is evaluated once, when it ends (greedy, eval.limit images)
    eval_steps: int | None = None
    eval_images: int = 32
    trl: dict = field(default_factory=dict)  # any other SFTConfig/GRPOConfig argument, passed through as is

    def __post_init__(self):
        owned = sorted(set(self.trl) & set(TRL_OWNED))
        if owned:
            raise ConfigError(f"trl.{owned[0]} {TRL_OWNED[owned[0]]}")
        if self.kind == "sft":
            if self.data == "prompts":
                raise ConfigError("an sft stage trains on data: cot or data: labels, not prompts")
            if self.rewards:
                raise ConfigError("an sft stage takes no rewards; set kind: grpo for reward training")
            if self.prompts != "all":
                raise ConfigError("prompts: cot chooses the images of a grpo stage; an sft stage's are set by data")
        else:
            if self.data != "prompts":
                raise ConfigError(f"a grpo stage samples from data: prompts, got data: {self.data}")
            if not self.rewards:
                raise ConfigError(f"a grpo stage needs rewards; valid: {sorted(REWARDS)}")
            get_rewards(self.rewards)  # a built-in name or module:function, imported now: errors before training
            if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
                raise ConfigError(f"reward_weights has {len(self.reward_weights)} entries for "
                                  f"{len(self.rewards)} rewards; give one weight per reward or none")
            if self.num_generations < 2:
                raise ConfigError("num_generations must be ≥ 2: GRPO's advantage compares completions of a prompt")
            per_generation = self.batch_size * (self.steps_per_generation or self.grad_accum)
            if per_generation % self.num_generations:
                raise ConfigError(
                    f"batch_size × steps_per_generation = {per_generation} completions per generation batch is not "
                    f"a multiple of num_generations={self.num_generations}; set batch_size to a multiple of "
                    f"{self.num_generations} (e.g. {2 * self.num_generations} for 2 prompts per step)")
            self._check_clip()
        if self.eval_steps is not None and (self.kind != "grpo" or self.eval_steps < 1):
            raise ConfigError("eval_steps (validation during training) takes a positive step count, in grpo stages; "
                              f"got {self.eval_steps} in a {self.kind} stage")
        if self.eval_images < 1:
            raise ConfigError(f"eval_images must be ≥ 1, got {self.eval_images}")
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise ConfigError(f"rollout_batch_size must be ≥ 1 (or null: the whole generation batch), got "
                              f"{self.rollout_batch_size}")
        if self.rollout_sampler == "fused" and self.rollout == "trl":
            raise ConfigError("rollout_sampler: fused decodes on the dense copy; it needs rollout: dense or auto")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("set max_steps > 0 or epochs > 0")

    def _check_clip(self) -> None:
        check_clip(clip_low=self.clip_low, epsilon=self.epsilon, epsilon_high=self.epsilon_high,
                   loss_type=self.loss_type, grad_accum=self.grad_accum,
                   steps_per_generation=self.steps_per_generation or self.grad_accum,
                   num_iterations=self.num_iterations)


_GUARDED = "decides the clip or the batching, which the stage sets and checks: "
#: trl config fields a stage may not set through ``trl:`` (merged last, it could silently switch the clip off
#: or move files out of the run), with the reason and what to use instead.
TRL_OWNED: dict[str, str] = {
    **{key: _GUARDED + f"use the stage key `{use}` instead" for key, use in (
        ("epsilon", "epsilon"), ("epsilon_high", "epsilon_high"), ("loss_type", "loss_type"),
        ("num_iterations", "num_iterations"), ("steps_per_generation", "steps_per_generation"),
        ("generation_batch_size", "steps_per_generation"), ("gradient_accumulation_steps", "grad_accum"),
        ("per_device_train_batch_size", "batch_size"), ("num_generations", "num_generations"))},
    "delta": _GUARDED + "it is not supported",
    "output_dir": "is set by the run layout (<run>/<stage>/checkpoints)",
    "seed": "comes from train.seed (one seed drives data order, adapter initialisation and sampling)",
    "report_to": "comes from train.report_to (every stage of a run logs to the same trackers)",
    "remove_unused_columns": "stays false: the accuracy reward needs the dataset's label column",
}
#: trl's own names for stage keys: a stage YAML may use either (the stage key is checked by the guards)
TRL_NAMES: dict[str, str] = {
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs", "lr_scheduler_type": "lr_scheduler",
}


def trl_fields(kind: str) -> set[str]:
    """The fields of trl's config dataclass for a stage kind (SFTConfig or GRPOConfig)."""
    import trl

    return {f.name for f in dataclasses.fields(trl.SFTConfig if kind == "sft" else trl.GRPOConfig) if f.init}


def _trl_keys(name: str, data: dict, kind: str) -> dict:
    """One stage entry with trl's field names resolved: a trl name of a stage key becomes that key, any other
    field of the kind's trl config moves into ``trl:`` (checked there like the rest), and a key known to
    neither is an error naming the nearest valid one."""
    import difflib

    own = set(stage_fields())
    extra = [k for k in data if k not in own]
    passed = data.get("trl") or {}
    if not extra and not passed:
        return data  # the common case: no trl import
    valid = trl_fields(kind)
    out = {k: v for k, v in data.items() if k in own}
    out["trl"] = dict(passed)
    for key in extra:
        if key in TRL_NAMES:
            if TRL_NAMES[key] in data:
                raise ConfigError(f"stages.{name}: both {key} and {TRL_NAMES[key]} are set; they are the same "
                                  "setting (trl's name and the stage key), give one")
            out[TRL_NAMES[key]] = data[key]
        elif key in TRL_OWNED:
            raise ConfigError(f"stages.{name}.{key} {TRL_OWNED[key]}")
        elif key in valid:
            out["trl"][key] = data[key]
        else:
            out["trl"][key] = data[key]  # reported below with the nearest valid name
    for key in out["trl"]:
        if key not in valid and key not in TRL_OWNED:
            hint = difflib.get_close_matches(key, sorted(own | valid), n=1)
            where = f"stages.{name}.{key}" if key in extra else f"stages.{name}.trl.{key}"
            raise ConfigError(f"unknown key {where}: neither a stage key nor a field of trl's "
                              f"{'SFTConfig' if kind == 'sft' else 'GRPOConfig'}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return out


#: trl 1.16 loss types whose loss clips the ratio to [1 - epsilon, 1 + epsilon_high] (``_compute_loss``);
#: sapo and vespo replace the clip with soft weights, cispo clips only from above at epsilon_high.
TWO_SIDED_CLIP_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def clip_can_act(grad_accum: int, steps_per_generation: int, num_iterations: int) -> bool:
    """trl 1.16's own rule (``_generate_and_score_completions``, "generate_every"): old log-probs are computed
    only when ``grad_accum % (steps_per_generation × num_iterations) != 0``, i.e. when an optimizer step falls
    between sampling a batch and scoring it again; otherwise old = current and the ratio is exactly 1.

    >>> clip_can_act(grad_accum=1, steps_per_generation=1, num_iterations=2)
    True
    >>> clip_can_act(grad_accum=2, steps_per_generation=1, num_iterations=2)  # both passes in one step
    False
    """
    return grad_accum % (steps_per_generation * num_iterations) != 0


def check_clip(*, clip_low: bool, epsilon: float, epsilon_high: float | None, loss_type: str, grad_accum: int,
               steps_per_generation: int, num_iterations: int) -> None:
    """Refuse a ClipLow (or any asymmetric) clip that trl would not apply. Called on the stage table entry
    (so ``svlm train`` fails in seconds) and on the final GRPOConfig (``factory.train.grpo``)."""
    high = epsilon if epsilon_high is None else epsilon_high
    if clip_low and not epsilon < high:
        raise ConfigError(f"clip_low needs epsilon (ε_low) < epsilon_high (ε_high); got epsilon={epsilon}, "
                          f"epsilon_high={epsilon_high}; e.g. set epsilon: 0.1, epsilon_high: 0.2")
    if not (clip_low or high != epsilon):
        return
    if loss_type not in TWO_SIDED_CLIP_LOSSES:
        raise ConfigError(f"loss_type {loss_type!r} has no two-sided clip with epsilon (ε_low) and epsilon_high, so "
                          f"clip_low / an asymmetric clip would not act; use one of {list(TWO_SIDED_CLIP_LOSSES)}")
    if not clip_can_act(grad_accum, steps_per_generation, num_iterations):
        raise ConfigError(
            f"the clip range [1-{epsilon}, 1+{high}] never acts with grad_accum={grad_accum}, "
            f"steps_per_generation={steps_per_generation}, num_iterations={num_iterations}: no optimizer step falls "
            "between sampling a batch and scoring it again (trl computes old log-probs only when grad_accum % "
            "(steps_per_generation × num_iterations) != 0), so the importance ratio is exactly 1 and this stage "
            "would silently equal plain GRPO. Set num_iterations: 2 with grad_accum: 1 (or num_iterations × "
            "steps_per_generation not dividing grad_accum)")


def _grpo(**kw) -> StageConfig:
    # 8 prompts per optimizer step (2 per device step × grad_accum 4): with 2, every update followed the
    # luck of two images and the RL stages lowered held-out accuracy on the CPU run (README, "Method"). The
    # fully trained modules of an adapter stay frozen in RL (see ``train_modules_to_save``).
    base = dict(kind="grpo", data="prompts", learning_rate=2e-5, batch_size=16, grad_accum=4, num_generations=8,
                max_completion_length=512, save_steps=25, logging_steps=1, train_modules_to_save=False)
    return StageConfig(**{**base, **kw})


#: The stage table, in run order. ``parent`` is the one stage → parent map.
STAGES: dict[str, StageConfig] = {
    # The paper's comparison: the same model fine-tuned to answer with the label only.
    "0_baseline": StageConfig(kind="sft", data="labels", eval_style="label", epochs=1.0, learning_rate=1e-4,
                              grad_accum=2),
    # Stage 1: domain knowledge from the verified CoT traces.
    "1_sft": StageConfig(kind="sft", data="cot", epochs=1.0, learning_rate=1e-4, grad_accum=2),
    # Stage 2: a small amount of GRPO on the format alone.
    "2_grpo_format": _grpo(parent="1_sft", rewards=["format"], max_steps=50),
    # Stage 3: format + accuracy.
    "3_grpo_accuracy": _grpo(parent="2_grpo_format", rewards=["format", "accuracy"], max_steps=300),
    # Stage 4: ClipLow GRPO (OURS): the lower clip bound tightened from 0.2 to 0.1, the upper one kept; two
    # passes over each generation batch so that the clip acts at all.
    "4_clgrpo": _grpo(parent="3_grpo_accuracy", rewards=["format", "accuracy"], max_steps=300, epsilon=0.1,
                      epsilon_high=0.2, clip_low=True, num_iterations=2),
}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)


def select_stages(spec: str) -> list[str]:
    """Stage names from ``"0-4"``, ``"1,3"``, ``"2"``, ``"all"`` or full names, in run order.

    >>> select_stages("1-3")
    ['1_sft', '2_grpo_format', '3_grpo_accuracy']
    >>> select_stages("4_clgrpo,0")
    ['0_baseline', '4_clgrpo']
    """
    by_index = {name.split("_", 1)[0]: name for name in STAGE_ORDER}
    chosen: set[str] = set()
    for part in str(spec).replace(" ", "").split(","):
        if part in ("all", ""):
            chosen.update(STAGE_ORDER if part == "all" else ())
        elif "-" in part:
            lo, _, hi = part.partition("-")
            if lo not in by_index or hi not in by_index or int(lo) > int(hi):
                raise ConfigError(f"bad stage range {part!r}; stages are {', '.join(STAGE_ORDER)}")
            chosen.update(by_index[str(i)] for i in range(int(lo), int(hi) + 1))
        elif part in by_index or part in STAGES:
            chosen.add(by_index.get(part, part))
        else:
            raise ConfigError(f"unknown stage {part!r}; stages are {', '.join(STAGE_ORDER)} (or ranges like 1-4)")
    return [name for name in STAGE_ORDER if name in chosen]


def resolve_stage(name: str, overrides: dict | None = None, stage_dir: str | None = None) -> StageConfig:
    """The stage's config: the table entry (or ``<stage_dir>/<name>.yaml``), then ``overrides``."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(STAGE_ORDER)}")
    base = config_lib.to_dict(STAGES[name])
    if stage_dir is not None:
        base = config_lib.read_yaml(Path(stage_dir) / f"{name}.yaml")
    overrides = overrides or {}
    kind = overrides.get("kind", base.get("kind", "sft"))
    # each source on its own, so that a trl name and its stage key in one place are caught
    data = config_lib.merge(_trl_keys(name, base, kind), _trl_keys(name, overrides, kind))
    cfg = config_lib.build(StageConfig, data, where=f"stages.{name}")
    if cfg.parent is not None and (cfg.parent not in STAGES or STAGE_ORDER.index(cfg.parent)
                                   >= STAGE_ORDER.index(name)):
        raise ConfigError(f"stages.{name}.parent must be an earlier stage, got {cfg.parent!r}")
    return cfg


def stage_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(StageConfig)]
