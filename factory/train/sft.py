"""The SFT runner (stage 0, the label-only baseline, and stage 1, CoT SFT) on trl 1.16's SFTTrainer.

Rows are conversational ``prompt`` / ``completion`` pairs with an ``image`` column, so the loss falls on
the answer tokens only (trl's completion-only loss for prompt-completion data); the chat template closes
the answer with the end-of-turn token, so the model also learns to stop.
"""

from __future__ import annotations

from factory.train.common import (StageContext, callbacks, keep_trainable_fp32, load_policy, run_trainer,
                                  stage_dataset, trainer_args)


def build_sft_trainer(ctx: StageContext):
    """The stage's SFTTrainer, ready to train (trainable weights in fp32)."""
    from trl import SFTConfig, SFTTrainer

    model, processor = load_policy(ctx)
    dataset = stage_dataset(ctx)
    args = SFTConfig(**{**trainer_args(ctx), "max_length": ctx.stage.max_length, **ctx.stage.trl})
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         callbacks=callbacks(ctx))
    keep_trainable_fp32(trainer.model)
    return trainer


def run_sft(ctx: StageContext):
    """Train one SFT stage; returns ``(model, processor, metrics)``."""
    trainer = build_sft_trainer(ctx)
    metrics = run_trainer(ctx, trainer)
    return trainer.model, trainer.processing_class, metrics
