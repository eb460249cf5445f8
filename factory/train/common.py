"""What both stage runners share: the policy model (base + trainable LoRA), the datasets, the trainer
arguments, checkpoints and the adapter hand-over between stages.

QLoRA on CUDA (nf4 + double quantization, bf16 compute, gradient checkpointing); on a CPU, LoRA over an
fp32 base by default, because bitsandbytes' CPU 4-bit kernels are slower than fp32 matmuls there. The
4-bit path stays reachable on a CPU with ``train.quantization=nf4`` (DESIGN.md §3 traps are handled in
``factory.models``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import SVLMError
from factory.files import write_json

if TYPE_CHECKING:
    from factory.train.runner import TrainConfig
    from factory.train.stages import StageConfig

ADAPTER = "adapter"  # <stage>/adapter: the LoRA adapter a stage hands to the next one and to export
CHECKPOINTS = "checkpoints"


@dataclass
class StageContext:
    """Everything a runner needs for one stage."""

    name: str
    stage: StageConfig
    cfg: TrainConfig
    out: Path  # runs/<name>/<stage>
    base: str  # base model source (hub id or directory)
    data_root: Path
    cot_dir: Path
    progress: bool = True

    @property
    def task(self):
        """The run's task (``factory.tasks``): the labels, questions and answer rule the stage trains on."""
        from factory.tasks import load_task

        return load_task(self.cfg.task)

    @property
    def parent_adapter(self) -> Path | None:
        if self.stage.parent is None:
            return None
        return self.out.parent / self.stage.parent / ADAPTER


def stage_source(stage_dir: str | Path) -> tuple[str, Path, str]:
    """What a trained stage folder holds: (base model source, adapter folder, question style). The style is
    the question the stage was trained and evaluated with (the baseline answers the label-only one)."""
    import yaml

    stage_dir = Path(stage_dir)
    adapter = stage_dir / ADAPTER
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    stage_yaml = stage_dir / "stage.yaml"
    style = yaml.safe_load(stage_yaml.read_text()).get("eval_style", "cot") if stage_yaml.is_file() else "cot"
    return base, adapter, style


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def use_nf4(cfg: TrainConfig) -> bool:
    return cfg.train.quantization == "nf4" or (cfg.train.quantization == "auto" and cuda())


def lora_config(cfg: TrainConfig, family, dropout: float | None = None):
    from peft import LoraConfig

    lo = cfg.train.lora
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout if dropout is None else dropout,
                      target_modules=lo.target_modules or family.lora_target_modules,
                      modules_to_save=list(lo.modules_to_save) or None, task_type="CAUSAL_LM")


def load_policy(ctx: StageContext, trainable: bool = True):
    """Base model (nf4 on CUDA) with the stage's LoRA adapter: the parent's, continued and trainable, or a
    fresh one. Returns ``(peft_model, processor)``.

    GRPO stages train without LoRA dropout: trl computes old and new log-probs in train mode, so dropout
    would move the importance ratio off 1 on noise alone, and the tight ε_low of ClipLow would clip noise.
    """
    from accelerate import PartialState
    from peft import PeftConfig, PeftModel, get_peft_model

    from factory.models import load_model

    loaded = load_model(ctx.base, load_in_4bit=use_nf4(ctx.cfg), dtype=ctx.cfg.model.dtype,
                        device=str(PartialState().device))
    adapter = ctx.out / ADAPTER if not trainable else ctx.parent_adapter
    no_dropout = ctx.stage.kind == "grpo"
    if adapter is not None:
        if not (adapter / "adapter_config.json").is_file():
            raise SVLMError(f"stage {ctx.name}: adapter {adapter} is missing")
        config = PeftConfig.from_pretrained(str(adapter))
        if no_dropout:
            config.lora_dropout = 0.0  # the parent (stage 1) trained with dropout
        # is_trainable=True: without it PEFT loads the adapter frozen and the stage trains nothing.
        model = PeftModel.from_pretrained(loaded.model, str(adapter), is_trainable=trainable, config=config)
    else:
        from transformers import set_seed

        set_seed(ctx.cfg.train.seed)  # the fresh adapter's initialisation follows train.seed too
        model = get_peft_model(loaded.model, lora_config(ctx.cfg, loaded.family, 0.0 if no_dropout else None))
    if trainable and not ctx.stage.train_modules_to_save:
        for name, param in model.named_parameters():
            if ".modules_to_save." in name:
                param.requires_grad_(False)
    return model, loaded.processor


def keep_trainable_fp32(model) -> int:
    """Cast every trainable parameter to fp32 (after the trainer is built); returns how many were cast.

    trl 1.16's SFT and GRPO trainers cast trainable parameters to bf16 for a 4-bit model ("_is_quantized_model").
    At GRPO learning rates most Adam updates of lora_A are below half a bf16 step and round away, so the adapter
    barely moves. fp32 master weights avoid that; the forward still computes in the base's dtype (peft casts the
    LoRA input, and bf16 autocast on CUDA covers fully trained ``modules_to_save``).
    """
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def stage_rows(ctx: StageContext) -> list[dict]:
    """The stage's training rows (prompt, completion or label, image path)."""
    from factory.cot.datasets import grpo_rows, label_rows, sft_rows
    from factory.data.emoset import read_split

    if ctx.stage.data == "cot":
        if not (ctx.cot_dir / "cot.jsonl").is_file():
            raise SVLMError(f"stage {ctx.name} trains on CoT data, but {ctx.cot_dir}/cot.jsonl is missing; "
                            "build it with `svlm cot build` or set cot=DIR")
        rows = sft_rows(ctx.cot_dir, traces=ctx.stage.traces, task=ctx.task)
    else:
        records = read_split(ctx.data_root, "train", task=ctx.task, strict=False, check_images="none").records
        if ctx.stage.data == "prompts" and ctx.stage.prompts == "cot":
            traced = _traced_images(ctx)
            records = [r for r in records if str(Path(r.image_path).resolve()) in traced]
        rows = label_rows(records, ctx.task) if ctx.stage.data == "labels" else grpo_rows(records, ctx.task)
    rows = usable_rows(ctx, rows)
    if not rows:
        raise SVLMError(f"stage {ctx.name}: no training rows ({ctx.stage.data} data is empty)")
    return rows


def usable_rows(ctx: StageContext, rows: list[dict]) -> list[dict]:
    """The rows whose image lies inside the data root and decodes; the others are skipped and counted (a
    truncated JPEG would otherwise stop training mid-run, and again on every resume; a CoT log may name
    any path)."""
    from factory.data.emoset import usable_images

    ok, problems = usable_images(ctx.data_root, [row["image"] for row in rows])
    kept = [row for row in rows if row["image"] in ok]
    if problems:
        print(f"[svlm train] {ctx.name}: skipped {len(rows) - len(kept)} of {len(rows)} rows whose image is "
              f"unusable ({', '.join(f'{k}: {n}' for k, n in sorted(problems.items()))})", flush=True)
    return kept


def _traced_images(ctx: StageContext) -> set[str]:
    """Resolved paths of the train images that have a trace stage 1 trains on (``sft_rows``' rule)."""
    from factory.cot.datasets import sft_rows

    if not (ctx.cot_dir / "cot.jsonl").is_file():
        raise SVLMError(f"stage {ctx.name} samples only images with a CoT trace (prompts: cot), but "
                        f"{ctx.cot_dir}/cot.jsonl is missing; build it with `svlm cot build` or set prompts: all")
    return {str(Path(row["image"]).resolve()) for row in sft_rows(ctx.cot_dir, traces="first", task=ctx.task)}


def stage_dataset(ctx: StageContext):
    """The stage's training rows as a ``datasets.Dataset`` (images decoded lazily, as RGB)."""
    from factory.cot.datasets import to_dataset

    return to_dataset(stage_rows(ctx))


def eval_max_new_tokens(ctx: StageContext, tokenizer) -> int:
    """The stage's evaluation budget: ``eval.max_new_tokens``, raised to what the stage was trained to write,
    so that no trained answer is cut (a cut answer scores as wrong). GRPO: ``max_completion_length``. SFT: the
    longest training target in tokens + 1 for the end-of-turn token that closes it."""
    floor = ctx.cfg.eval.max_new_tokens
    if ctx.stage.kind == "grpo":
        return max(floor, ctx.stage.max_completion_length)
    from factory.rewards import completion_text

    targets = [completion_text(row["completion"]) for row in stage_rows(ctx)]
    lengths = tokenizer(targets, add_special_tokens=False)["input_ids"]
    return max(floor, max(len(ids) for ids in lengths) + 1)


def trainer_args(ctx: StageContext) -> dict[str, Any]:
    """TrainingArguments shared by SFTConfig and GRPOConfig; ``stage.trl`` entries override them."""
    import torch

    s = ctx.stage
    on_cuda = cuda()
    gc = ctx.cfg.train.gradient_checkpointing
    return {
        "output_dir": str(ctx.out / CHECKPOINTS),
        "max_steps": s.max_steps,
        "num_train_epochs": s.epochs,
        "learning_rate": s.learning_rate,
        "lr_scheduler_type": s.lr_scheduler,
        "warmup_steps": s.warmup_ratio,  # a float < 1 is a ratio of the total steps
        "weight_decay": s.weight_decay,
        "max_grad_norm": s.max_grad_norm,
        "per_device_train_batch_size": s.batch_size,
        "gradient_accumulation_steps": s.grad_accum,
        "save_strategy": "steps",
        "save_steps": s.save_steps,
        "save_total_limit": 2,
        "logging_steps": s.logging_steps,
        # TensorBoard is attached explicitly (``callbacks``), into <stage>/tensorboard; the others through trl
        "report_to": [r for r in ctx.cfg.train.report_to if r != "tensorboard"] or "none",
        "run_name": f"{ctx.cfg.name}/{ctx.name}",
        "seed": ctx.cfg.train.seed,
        # trl defaults bf16=True; on a CPU that is slow autocast, so follow the model's dtype instead.
        "bf16": on_cuda and torch.cuda.is_bf16_supported() and ctx.cfg.model.dtype in ("auto", "bfloat16"),
        "use_cpu": not on_cuda,
        "gradient_checkpointing": on_cuda if gc is None else gc,
        "dataloader_num_workers": 0,
        "disable_tqdm": not ctx.progress,
    }


def callbacks(ctx: StageContext) -> list:
    """TensorBoard event files in ``<stage>/tensorboard`` (main process only)."""
    from accelerate import PartialState
    from transformers.integrations import TensorBoardCallback

    if not PartialState().is_main_process or "tensorboard" not in ctx.cfg.train.report_to:
        return []
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # a bare GPU image may lack it; training must not depend on its logger
        print("[svlm train] tensorboard is not installed: no event files (curves.png is still drawn)")
        return []

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(ctx.out / "tensorboard")))]


def last_checkpoint(ctx: StageContext) -> str | None:
    """The newest complete checkpoint of an interrupted stage, or None. A kill during a save leaves a folder
    without trainer_state.json: the main process removes such folders while the other ranks wait (each rank
    deleting them raced), then every rank resumes from the same one."""
    from accelerate import PartialState
    from transformers.trainer_utils import get_last_checkpoint

    ckpt = ctx.out / CHECKPOINTS
    state = PartialState()
    if state.is_main_process and ckpt.is_dir():
        last = get_last_checkpoint(str(ckpt))
        while last is not None and not (Path(last) / "trainer_state.json").is_file():
            shutil.rmtree(last)
            last = get_last_checkpoint(str(ckpt))
    state.wait_for_everyone()
    return get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None


def run_trainer(ctx: StageContext, trainer) -> dict:
    """Train (resuming from the last checkpoint), then hand the adapter over atomically; returns metrics."""
    resume = last_checkpoint(ctx)
    result = trainer.train(resume_from_checkpoint=resume)
    history = trainer.state.log_history
    if trainer.is_world_process_zero():
        tmp = ctx.out / (ADAPTER + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp))
        from factory.cards import write_adapter_card

        write_adapter_card(tmp, base_model=ctx.base, stage=ctx.name, run=ctx.cfg.name, task=ctx.task)
        write_json(ctx.out / "log_history.json", history, indent=1)
        write_json(ctx.out / "train_metrics.json", {**result.metrics, "resumed_from": resume})
        tmp.replace(ctx.out / ADAPTER)
    trainer.accelerator.wait_for_everyone()
    return {**result.metrics, "resumed_from": resume}
