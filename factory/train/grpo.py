"""The GRPO runner (stages 2-4) on trl 1.16's GRPOTrainer.

Stages 2, 3 and 4 differ only in their config: which rewards (``factory.rewards``), how many steps, and
the clip range. ClipLow GRPO is trl's asymmetric clip — ``epsilon`` is ε_low, ``epsilon_high`` is ε_high —
in a batching where trl scores a batch with a policy that has stepped since it sampled it (``num_iterations
≥ 2``); the stage table and, again, the final GRPOConfig refuse settings where the clip cannot act. No loss
is re-implemented here. ``beta`` defaults to 0, so no reference model is kept. Rollouts use ``generate`` on
a dense copy of the policy on CUDA (``rollout: auto``, see ``rollout.py``) and on the training model on a CPU;
never vLLM (DESIGN.md §3: with images + QLoRA it is not a safe default).
"""

from __future__ import annotations

from factory.rewards import get_rewards
from factory.train.common import (StageContext, callbacks, cuda, keep_trainable_fp32, load_policy, run_trainer,
                                  stage_dataset, trainer_args, usable_rows)
from factory.train.stages import check_clip


def grpo_args(ctx: StageContext) -> dict:
    s = ctx.stage
    args = {
        **trainer_args(ctx),
        "num_generations": s.num_generations,
        "max_completion_length": s.max_completion_length,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "num_iterations": s.num_iterations,
        "steps_per_generation": s.steps_per_generation,
        "epsilon": s.epsilon,
        "epsilon_high": s.epsilon_high,
        "beta": s.beta,
        "loss_type": s.loss_type,
        "reward_weights": s.reward_weights,
        "mask_truncated_completions": s.mask_truncated_completions,
        # The extra dataset column ``label`` must reach the accuracy reward.
        "remove_unused_columns": False,
    }
    if s.eval_steps:  # validation during training: one sampled completion per val image
        args.update(eval_strategy="steps", eval_steps=s.eval_steps, num_generations_eval=1,
                    per_device_eval_batch_size=s.batch_size)
    return {**args, **s.trl}


def grpo_config(ctx: StageContext):
    """The GRPOConfig the trainer gets, checked after trl derived its batching (the check is trl's own rule)."""
    from trl import GRPOConfig

    args = GRPOConfig(**grpo_args(ctx))
    check_clip(clip_low=ctx.stage.clip_low, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
               loss_type=args.loss_type, grad_accum=args.gradient_accumulation_steps,
               steps_per_generation=args.steps_per_generation, num_iterations=args.num_iterations)
    return args


def validation_dataset(ctx: StageContext):
    """The first ``eval_images`` usable val images as GRPO prompts (trl generates and scores them)."""
    from factory.cot.datasets import grpo_rows, to_dataset
    from factory.data.emoset import read_split
    from factory.errors import SVLMError

    records = read_split(ctx.data_root, "val", task=ctx.task, strict=False, check_images="none").records
    rows = usable_rows(ctx, grpo_rows(records, ctx.task))[:ctx.stage.eval_images]
    if not rows:
        raise SVLMError(f"stage {ctx.name}: eval_steps is set but {ctx.data_root} has no usable val images")
    return to_dataset(rows)


def dense_rollouts(ctx: StageContext) -> bool:
    return ctx.stage.rollout == "dense" or (ctx.stage.rollout == "auto" and cuda())


def build_grpo_trainer(ctx: StageContext):
    """The stage's GRPOTrainer, ready to train (trainable weights in fp32)."""
    from trl import GRPOTrainer

    args = grpo_config(ctx)
    model, processor = load_policy(ctx)
    dataset = stage_dataset(ctx)
    trainer_cls = GRPOTrainer
    if dense_rollouts(ctx):
        from factory.train.rollout import check_supported, fast_grpo_trainer_class

        check_supported(model)  # before training starts, not at the first rollout
        trainer_cls = fast_grpo_trainer_class()
        trainer_cls.rollout_options = {"static_cache": ctx.stage.rollout_static_cache and cuda(),
                                       "batch_size": ctx.stage.rollout_batch_size,
                                       "sampler": ctx.stage.rollout_sampler}
    trainer = trainer_cls(model=model, reward_funcs=get_rewards(ctx.stage.rewards, ctx.task), args=args,
                          train_dataset=dataset, eval_dataset=validation_dataset(ctx) if ctx.stage.eval_steps else None,
                          processing_class=processor, callbacks=callbacks(ctx))
    keep_trainable_fp32(trainer.model)
    return trainer


def run_grpo(ctx: StageContext):
    """Train one GRPO stage; returns ``(model, processor, metrics)``."""
    trainer = build_grpo_trainer(ctx)
    metrics = run_trainer(ctx, trainer)
    return trainer.model, trainer.processing_class, metrics
