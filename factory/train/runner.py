"""``svlm train``: run the selected stages in order, each continuing its parent's adapter.

Layout of one run::

    runs/<name>/<stage>/adapter/          LoRA adapter (what the next stage and the exporter load)
                        checkpoints/      trainer checkpoints (resume points), the last 2 kept
                        tensorboard/      event files: tensorboard --logdir runs/<name>
                        curves.png        loss, rewards (also per class), clip ratios, entropy, format rate
                        eval.json         format rate, accuracy, macro recall, truncation rate on the held-out split
                        predictions.jsonl every evaluated completion
                        svlm_config.yaml  the resolved run config; stage.yaml the resolved stage;
                                          task.yaml the task (labels, questions, answer rule) it learned
                        done.json         written last: a stage with it is skipped on rerun

Resuming: a killed stage restarts from its newest complete checkpoint; finished stages are skipped;
a stage whose adapter was written but not yet evaluated is only evaluated.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from factory import config as config_lib
from factory.errors import ConfigError, SVLMError
from factory.evaluate import EvalConfig
from factory.layout import DONE, MADE_FROM, RunLayout, changes
from factory.models import ModelConfig
from factory.train.common import ADAPTER, StageContext
from factory.train.stages import STAGE_ORDER, StageConfig, resolve_stage, select_stages


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | None = None  # a regex over module names; None: the family's registry entry
    modules_to_save: list[str] = field(default_factory=list)  # e.g. [multi_modal_projector] to train it fully


#: train.report_to's trackers and the module each needs (transformers' integrations drive them)
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


@dataclass
class TrainOptions:
    """The training knobs shared by ``svlm train`` and ``svlm run``."""

    select: str = "0-4"  # which stages run (--stages)
    quantization: Literal["auto", "nf4", "none"] = "auto"  # auto: nf4 (QLoRA) on CUDA, none on CPU
    gradient_checkpointing: bool | None = None  # None: on with CUDA
    seed: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    stages: dict = field(default_factory=dict)  # per-stage overrides: {1_sft: {max_steps: 300}}
    stage_dir: str | None = None  # read <stage_dir>/<stage>.yaml instead of the built-in stage table
    overwrite: bool = False  # retrain a finished stage whose settings or parent changed (else: an error)
    # experiment trackers: tensorboard (event files in <stage>/tensorboard), wandb, trackio, mlflow (installed
    # separately; each run is named <name>/<stage>); [] logs to none of them (curves.png is drawn anyway)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self):
        import importlib.util

        for tracker in self.report_to:
            if tracker not in TRACKERS:
                raise ConfigError(f"train.report_to: unknown tracker {tracker!r}; choose from {', '.join(TRACKERS)}")
            module = TRACKERS[tracker]
            # tensorboard's absence only costs the event files (``common.callbacks`` says so); others would fail
            if tracker != "tensorboard" and importlib.util.find_spec(module) is None:
                raise ConfigError(f"train.report_to: {tracker} is not installed (pip install {module})")
        unknown = [k for k in self.stages if k not in STAGE_ORDER]
        if unknown:
            raise ConfigError(f"train.stages: unknown stage(s) {unknown}; stages are {', '.join(STAGE_ORDER)}")
        select_stages(self.select)


@dataclass
class TrainConfig:
    """The resolved configuration of one ``svlm train``."""

    name: str = "default"
    output_dir: str = "runs"
    task: str = "emoset"  # a shipped task or a task YAML (factory.tasks): labels, questions, answer rule
    data: str | None = None  # EmoSet root; None: <output_dir>/<name>/data (what `svlm run` writes)
    cot: str | None = None  # CoT build; None: <output_dir>/<name>/cot
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainOptions = field(default_factory=TrainOptions)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    def stage(self, name: str) -> StageConfig:
        return resolve_stage(name, self.train.stages.get(name), self.train.stage_dir)


def _log(msg: str) -> None:
    print(f"[svlm train] {msg}", flush=True)


def base_source(cfg: TrainConfig) -> str:
    """The base model: the configured source, or a random model of family/size built once into the run.

    A built base records how it was made (``svlm_base.json``); a run whose config asks for another family,
    size, seed or tokenizer is refused rather than trained on the wrong base."""
    from factory.tiny import save_tiny

    if cfg.model.source is not None:
        return cfg.model.source
    out = cfg.layout.base_model
    want = {"family": cfg.model.family, "size": cfg.model.size, "seed": cfg.model.seed,
            "tokenizer": cfg.model.tokenizer}
    marker = out / "svlm_base.json"
    if (out / "config.json").is_file() and (out / "processor_config.json").is_file():
        # a base built before the marker existed was always a small-tokenizer model
        have = json.loads(marker.read_text()) if marker.is_file() else {**want, "tokenizer": "small"}
        if have != want:
            raise SVLMError(f"{out} was built as {have}, but this run asks for {want}; choose another run name "
                            "(--name) or delete that folder")
        return str(out)
    save_tiny(cfg.model.family, cfg.model.size, out, seed=cfg.model.seed, tokenizer=cfg.model.tokenizer)
    _write_json(marker, want)
    _log(f"built a random-weight {cfg.model.family}/{cfg.model.size} model ({cfg.model.tokenizer} tokenizer) at "
         f"{out}")
    return str(out)


def plan(cfg: TrainConfig, names: list[str]) -> dict[str, StageConfig]:
    """Resolve and check every selected stage before anything trains, so a bad config fails in seconds."""
    stages = {name: cfg.stage(name) for name in names}
    for name, stage in stages.items():
        parent = stage.parent
        if parent is None or parent in stages:
            continue
        adapter = cfg.layout.stage(parent) / ADAPTER
        if not (adapter / "adapter_config.json").is_file():
            first = STAGE_ORDER.index(parent)
            raise ConfigError(
                f"stage {name} continues from {parent}, whose adapter {adapter} does not exist; run it first "
                f"(--stages {first}-{STAGE_ORDER.index(name)}) or set train.stages.{name}.parent")
    return stages


def _made_from(cfg: TrainConfig, stage: StageConfig, base: str, data_root: Path, cot_dir: Path) -> dict:
    """What a stage's adapter depends on: its resolved stage config, the task, the shared training knobs, the
    model config and base, the data and CoT folders, and the parent's adapter by content (a retrained parent
    makes its children stale). The eval settings are not in it: they change the figures, not the adapter."""
    from factory.tasks import load_task

    layout = cfg.layout
    parent = layout.stage(stage.parent) / ADAPTER if stage.parent else None
    return {"stage": config_lib.to_dict(stage), "task": load_task(cfg.task).identity(),
            "train": {k: config_lib.to_dict(cfg.train)[k] for k in ("quantization", "seed", "lora")},
            "model": config_lib.to_dict(cfg.model), "base": layout.relative(base),
            "data": layout.relative(data_root), "cot": layout.relative(cot_dir),
            "parent_adapter_sha256": _folder_sha256(parent) if parent is not None and parent.is_dir() else None}


def _folder_sha256(folder: Path) -> str:
    import hashlib

    from svlm_runtime.package import sha256

    files = sorted(f for f in folder.iterdir() if f.is_file())
    return hashlib.sha256("".join(f"{f.name}:{sha256(f)};" for f in files).encode()).hexdigest()


def _reusable(name: str, out: Path, made_from: dict, overwrite: bool) -> bool:
    """Whether the stage folder's finished result can be reused (True), or the stage must (re)train or
    continue (False). A folder made from other settings or another parent is an error naming the
    differences, unless ``overwrite`` clears it; folders from before the record are reused as they are."""
    recorded = None
    if (out / DONE).is_file():
        recorded = _read_json(out / DONE).get("made_from")
        if recorded is None:
            return True  # written before stages recorded what they were made from
    elif (out / MADE_FROM).is_file():
        recorded = _read_json(out / MADE_FROM)  # a started, unfinished stage
    if recorded is None:
        return False
    if "task" not in recorded:  # stages trained before tasks existed learned EmoSet's
        from factory.tasks import load_task

        recorded = {**recorded, "task": load_task().identity()}
    diff = changes(recorded, made_from)
    if not diff:
        return (out / DONE).is_file()
    if not overwrite:
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise SVLMError(f"{out} was trained from other settings ({shown} differ); choose another run (--name) or "
                        "pass --overwrite to retrain it")
    _log(f"{name}: made from other settings ({', '.join(diff)}); --overwrite: retraining")
    shutil.rmtree(out)
    return False


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_json(path: Path, obj) -> None:
    """Atomically (``factory.files``), so a kill never leaves half a done.json behind."""
    from factory.files import write_json

    write_json(path, obj)


def train(cfg: TrainConfig, names: list[str] | None = None, progress: bool = True) -> dict[str, dict]:
    """Run the stages (default: ``cfg.train.select``); returns ``{stage: done.json contents}``. One process
    (or one multi-process launch) at a time per run folder."""
    from factory.files import folder_lock

    with folder_lock(cfg.run_dir):
        return _train(cfg, names, progress)


def _train(cfg: TrainConfig, names: list[str] | None, progress: bool) -> dict[str, dict]:
    from accelerate import PartialState

    from factory.data.emoset import read_split
    from factory.evaluate import evaluate
    from factory.train.common import eval_max_new_tokens, load_policy
    from factory.train.grpo import run_grpo
    from factory.train.plots import plot_stage
    from factory.train.sft import run_sft

    runners = {"sft": run_sft, "grpo": run_grpo}
    names = names if names is not None else select_stages(cfg.train.select)
    stages = plan(cfg, names)
    data_root = Path(cfg.data) if cfg.data else cfg.layout.data
    cot_dir = Path(cfg.cot) if cfg.cot else cfg.layout.cot
    if not (data_root / "train.json").is_file():
        raise SVLMError(f"no EmoSet train split at {data_root}; set data=ROOT or create it with `svlm run`")
    import torch

    # Initialise the process group now (gloo on a CPU), as the Trainer would later: before that, every
    # process of a launch would believe it is the main one and race on the same files.
    state = PartialState(cpu=not torch.cuda.is_available())
    base = base_source(cfg) if state.is_main_process else None
    state.wait_for_everyone()
    base = base or base_source(cfg)
    from factory.tasks import load_task, save_task

    task = load_task(cfg.task)
    eval_records = read_split(data_root, cfg.eval.split, task=task, strict=False, check_images="none").records
    if cfg.eval.limit:
        eval_records = eval_records[: cfg.eval.limit]
    results: dict[str, dict] = {}
    for name, stage in stages.items():
        out = cfg.layout.stage(name)
        made_from = _made_from(cfg, stage, base, data_root, cot_dir)
        if _reusable(name, out, made_from, cfg.train.overwrite and state.is_main_process):
            results[name] = _read_json(out / DONE)
            _log(f"{name}: already done, skipped ({out / DONE})")
            continue
        state.wait_for_everyone()  # rank 0 may have cleared a stale stage folder
        out.mkdir(parents=True, exist_ok=True)
        if state.is_main_process:
            config_lib.save(cfg, out)
            config_lib.save(stage, out, filename="stage.yaml")
            save_task(task, out)
            _write_json(out / MADE_FROM, made_from)
        ctx = StageContext(name, stage, cfg, out, base, data_root, cot_dir, progress)
        t0 = time.time()
        if (out / ADAPTER / "adapter_config.json").is_file():
            _log(f"{name}: adapter already trained; evaluating only")
            model, processor = load_policy(ctx, trainable=False)
            metrics = _read_json(out / "train_metrics.json") if (out / "train_metrics.json").is_file() else {}
        else:
            parent = f"continuing {stage.parent}" if stage.parent else "fresh LoRA on the base"
            _log(f"{name}: {stage.kind} on {stage.data} data, {parent}")
            model, processor, metrics = runners[stage.kind](ctx)
        train_seconds = round(time.time() - t0, 1)
        if not state.is_main_process:
            continue
        model.eval()
        t1 = time.time()
        result = evaluate(model, processor, eval_records, style=stage.eval_style,
                          max_new_tokens=eval_max_new_tokens(ctx, processor.tokenizer),
                          batch_size=cfg.eval.batch_size, progress=progress, task=task)
        with (out / "predictions.jsonl").open("w") as fh:
            for p in result.predictions:
                fh.write(json.dumps(p.__dict__) + "\n")
        _write_json(out / "eval.json", result.metrics())
        history = _read_json(out / "log_history.json") if (out / "log_history.json").is_file() else []
        plot = plot_stage(history, out / "curves.png", f"{cfg.name} / {name}")
        done = {"stage": name, "kind": stage.kind, "parent": stage.parent, "made_from": made_from,
                "eval": result.metrics(),
                "train": metrics, "train_seconds": train_seconds, "eval_seconds": round(time.time() - t1, 1),
                "adapter": str(out / ADAPTER), "curves": str(plot) if plot else None}
        _write_json(out / DONE, done)
        results[name] = done
        m = result.metrics()
        _log(f"{name}: format {m['format_rate']:.1%}, accuracy {m['accuracy']:.1%}, {m['truncation_rate']:.1%} cut at "
             f"{m['max_new_tokens']} tokens, on {m['n']} {cfg.eval.split} images ({train_seconds} s training)")
        del model
    return results
