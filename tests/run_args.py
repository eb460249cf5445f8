"""``svlm run`` arguments that the end-to-end tests share: short GRPO stages that still sample, score and step."""


def short_grpo(stage: str, steps: int) -> list[str]:
    """2 prompts x G=4 per step, short completions: enough for trl to sample, score and step."""
    return [f"train.stages.{stage}.max_steps={steps}", f"train.stages.{stage}.batch_size=8",
            f"train.stages.{stage}.num_generations=4", f"train.stages.{stage}.max_completion_length=16",
            f"train.stages.{stage}.save_steps=1"]
