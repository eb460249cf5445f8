"""``svlm run``: the whole chain that exists today, on its built-in default (a small model, synthetic data).

Synthetic EmoSet (or a real EmoSet root) → reader check with a skip report → CoT data from the teachers
(the offline attribute teacher by default), verified against the labels → base model (a built "small"
random model, or any hub id / local checkpoint of a registered family) → the label-only baseline and the
four CLGRPO stages (``factory.train``) → a per-stage table of format rate and accuracy on the validation
split. Every step writes under ``runs/<name>/`` with its resolved config and is skipped when its output
already exists, so a killed run continues where it stopped.

The built-in training settings are sized for a ~9M-parameter random model on a 2-core CPU (≈10 minutes
for all five stages): LoRA rank 64 and learning rates 10-20× what a pretrained ≤ 2B model would take,
because a random language model has everything to learn. ``configs/stages/`` holds the real-model defaults.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from factory import config as config_lib
from factory.cot.teachers import TeacherConfig
from factory.data.synth import SynthConfig
from factory.errors import ConfigError
from factory.evaluate import EvalConfig
from factory.models import ModelConfig
from factory.train.runner import LoraSettings, TrainConfig, TrainOptions


@dataclass
class DataConfig:
    root: str | None = None  # an EmoSet root; None: generate synthetic data into the run folder
    synth: SynthConfig = field(default_factory=SynthConfig)  # out "": <run>/data
    strict: bool = False  # real data: skip bad entries with a report instead of failing
    check_images: str = "decode"  # decode | header | none

    def __post_init__(self):
        if self.check_images not in ("decode", "header", "none"):
            raise ConfigError(f"data.check_images must be decode, header or none, got {self.check_images!r}")


@dataclass
class CotStepConfig:
    teachers: list[TeacherConfig] = field(default_factory=lambda: [TeacherConfig()])  # offline attribute teacher
    policy: str = "all"
    k: int = 1
    rationalize: bool = False


def _grpo_cpu(steps: int) -> dict:
    # 2 prompts x G=8 per step; 128 tokens cover the ~115-token traces the small model learns to write.
    return {"max_steps": steps, "learning_rate": 2e-4, "batch_size": 16, "num_generations": 8,
            "max_completion_length": 128, "save_steps": 5}


def default_train() -> TrainOptions:
    """``svlm run``'s training settings: the stage table with CPU-sized steps for the small random model."""
    return TrainOptions(
        # Rank 16 left stage 1 at ~68 % format; 64 reaches ≥ 95 %. The random output layer trains too: frozen,
        # stage 1 answered right greedily but sampled from a near-uniform distribution (entropy 7.8 of at most
        # 8.3 nats), so no GRPO sample at temperature 1 had the format and every advantage was zero.
        lora=LoraSettings(r=64, alpha=128, dropout=0.0, modules_to_save=["lm_head"]),
        stages={
            "0_baseline": {"max_steps": 100, "learning_rate": 2e-3, "grad_accum": 1, "save_steps": 50},
            "1_sft": {"max_steps": 300, "learning_rate": 2e-3, "grad_accum": 1, "save_steps": 50},
            "2_grpo_format": _grpo_cpu(10),
            "3_grpo_accuracy": _grpo_cpu(30),
            "4_clgrpo": _grpo_cpu(30),
        })


@dataclass
class ExportStepConfig:
    enabled: bool = True  # export the last trained stage to ONNX at the end of the run
    quant: list[str] = field(default_factory=lambda: ["fp32", "int8", "int4"])
    block_size: int = 32


@dataclass
class BenchStepConfig:
    enabled: bool = True  # accuracy of every stage + ONNX package, and latency, at the end of the run
    split: str = "test"
    limit: int = 0  # images for the accuracy report (0: the whole split)
    latency_runs: int = 4
    latency_warmup: int = 1
    latency_images: int = 4


@dataclass
class RunConfig:
    """The resolved configuration of one ``svlm run``."""

    name: str = "default"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cot: CotStepConfig = field(default_factory=CotStepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainOptions = field(default_factory=default_train)
    export: ExportStepConfig = field(default_factory=ExportStepConfig)
    bench: BenchStepConfig = field(default_factory=BenchStepConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _log(msg: str) -> None:
    print(f"[svlm run] {msg}", flush=True)


def prepare_data(cfg: RunConfig) -> Path:
    """Return the data root: the configured one, or a synthetic EmoSet in the run folder."""
    from factory.data.synth import generate

    if cfg.data.root is not None:
        return Path(cfg.data.root)
    synth = cfg.data.synth
    counts = generate(synth, progress=True)
    _log(f"synthetic EmoSet at {synth.out}: {counts}")
    return Path(synth.out)


def train_config(cfg: RunConfig, root: Path) -> TrainConfig:
    """The ``svlm train`` config this run hands its data, CoT, model and training settings to."""
    return TrainConfig(name=cfg.name, output_dir=cfg.output_dir, data=str(root), cot=str(cfg.run_dir / "cot"),
                       model=cfg.model, eval=cfg.eval, train=cfg.train)


def run(cfg: RunConfig) -> dict:
    """Run the chain; return the summary that is also written to ``runs/<name>/summary.json``."""
    from factory.cot.build import CotConfig, build
    from factory.data.emoset import read_split
    from factory.evaluate import evaluate
    from factory.models import count_parameters, load_model
    from factory.train.plots import plot_summary
    from factory.train.runner import base_source, plan, train
    from factory.train.stages import select_stages

    t0 = time.time()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.root is None and not cfg.data.synth.out:
        cfg.data.synth.out = str(run_dir / "data")
    config_lib.save(cfg, run_dir)
    root = prepare_data(cfg)
    tcfg = train_config(cfg, root)
    stage_names = select_stages(cfg.train.select)
    plan(tcfg, stage_names)  # a bad stage setting fails now, not after the data and CoT steps
    splits = {}
    for split in ("train", "val", "test"):
        result = read_split(root, split, strict=cfg.data.strict, check_images=cfg.data.check_images)
        result.write_report(run_dir / "data_reports" / f"{split}.json")
        splits[split] = result
        _log(f"{split}: {len(result.records)} records, {len(result.skipped)} skipped")

    cot_cfg = CotConfig(data=str(root), split="train", out=str(run_dir / "cot"), teachers=cfg.cot.teachers,
                        policy=cfg.cot.policy, k=cfg.cot.k, rationalize=cfg.cot.rationalize)
    cot = build(cot_cfg, split=splits["train"])  # already read and checked above
    _log(f"CoT data: {cot['traces']} verified traces for {cot['images_with_trace']}/{cot['images']} train images "
         f"({cot['image_acceptance_rate']:.1%}); {run_dir / 'cot' / 'summary.md'}")
    source = base_source(tcfg)
    rows = []
    base_eval = run_dir / "base_eval.json"
    if base_eval.is_file():
        base = json.loads(base_eval.read_text())
    else:
        loaded = load_model(source, dtype=cfg.model.dtype)
        _log(f"model {source} ({loaded.family.name}, {count_parameters(loaded.model) / 1e6:.1f}M parameters)")
        records = splits[cfg.eval.split].records
        if cfg.eval.limit:
            records = records[: cfg.eval.limit]
        base = evaluate(loaded.model, loaded.processor, records, max_new_tokens=cfg.eval.max_new_tokens,
                        batch_size=cfg.eval.batch_size, progress=True).metrics()
        base_eval.write_text(json.dumps(base, indent=2))
        del loaded
    rows.append({"stage": "base (untrained)", **base})
    stages = train(tcfg, stage_names)
    for name, done in stages.items():
        rows.append({"stage": name, **done["eval"]})
    exported = run_export(cfg, list(stages)) if stages else {}
    bench = run_bench(cfg, root, list(stages), exported) if stages else {}
    summary = {
        "data_root": str(root),
        "splits": {s: r.summary() for s, r in splits.items()},
        "cot": {k: cot[k] for k in ("images", "images_with_trace", "image_acceptance_rate", "traces")},
        "model": {"source": source, "family": cfg.model.family if cfg.model.source is None else None},
        "stages": rows,
        "export": exported,
        "bench": bench,
        "seconds": round(time.time() - t0, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot = plot_summary(rows, run_dir / "stages.png", f"{cfg.name}: {cfg.eval.split} split")
    print(format_table(rows))
    _log(f"done in {summary['seconds']} s; summary at {run_dir / 'summary.json'}, chart at {plot}")
    for quant, info in exported.items():
        _log(f"ONNX {quant}: {info['path']} ({info['mb']} MB, labels agree with PyTorch on "
             f"{info['label_agreement']:.0%} of {info['images']} images)")
    if bench:
        _log(f"benchmark report: {bench['accuracy_md']} and {bench['latency_md']} (+ plots in {bench['dir']})")
    if exported:
        model = exported.get("int8", next(iter(exported.values())))["path"]
        _log(f"open the demo on this run: svlm demo --runs {cfg.output_dir} --model {model}")
    return summary


def run_export(cfg: RunConfig, stages: list[str]) -> dict:
    """Export the last trained stage (reused when an export of it is newer than the stage)."""
    if not cfg.export.enabled:
        return {}
    from export.build import ExportConfig, export

    stage = stages[-1]
    out = cfg.run_dir / "export"
    manifests = {}
    for quant in cfg.export.quant:
        mf = out / quant / "manifest.json"
        if mf.is_file() and mf.stat().st_mtime > (cfg.run_dir / stage / "done.json").stat().st_mtime:
            manifests[quant] = json.loads(mf.read_text())
    if set(manifests) != set(cfg.export.quant) or any(m["source"].get("stage") != stage for m in manifests.values()):
        manifests = export(ExportConfig(run=str(cfg.run_dir), stage=stage, out=str(out), quant=cfg.export.quant,
                                        block_size=cfg.export.block_size, overwrite=True))
    else:
        _log(f"export of {stage} already at {out}, reused")
    return {q: {"path": str(out / q), "mb": round(m["size_bytes"] / 1e6, 2),
                "max_abs_logit_diff": m["validation"]["max_abs_logit_diff"],
                "greedy_tokens_identical": m["validation"]["greedy_tokens_identical"],
                "label_agreement": m["validation"]["label_agreement"], "images": m["validation"]["images"]}
            for q, m in manifests.items()}


def run_bench(cfg: RunConfig, root: Path, stages: list[str], exported: dict) -> dict:
    """Accuracy of every stage and package on the test split, and latency of the last stage's variants."""
    if not cfg.bench.enabled:
        return {}
    from benchmarks import accuracy, latency

    out = cfg.run_dir / "bench"
    torch_models = [str(cfg.run_dir / s) for s in stages]
    onnx_models = [info["path"] for info in exported.values()]
    # A rerun reuses a report that is newer than everything it measured and covers the same models.
    inputs = [Path(m) / "done.json" for m in torch_models] + [Path(m) / "manifest.json" for m in onnx_models]
    reports = [out / "accuracy.json", out / "latency.json"]
    if all(r.is_file() for r in reports) and min(r.stat().st_mtime for r in reports) > max(
            i.stat().st_mtime for i in inputs) and [m["path"] for m in json.loads(reports[0].read_text())[
                "models"]] == torch_models + onnx_models:
        _log(f"benchmark report in {out} is up to date, reused")
        acc, lat = (json.loads(r.read_text()) for r in reports)
    else:
        _log(f"benchmarking accuracy on the {cfg.bench.split} split: {len(torch_models)} stages, "
             f"{len(onnx_models)} ONNX packages")
        acc = accuracy.run(torch_models + onnx_models, str(root), cfg.bench.split, cfg.bench.limit, out=out,
                           max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                           progress=True, command="svlm run (bench step)")
        images = latency.sample_images(root, cfg.bench.split, cfg.bench.latency_images)
        _log("benchmarking latency (one process per model)")
        lat = latency.run(torch_models[-1:] + onnx_models, images, out, cfg.bench.latency_runs,
                          cfg.bench.latency_warmup, max_new_tokens=cfg.eval.max_new_tokens,
                          command="svlm run (bench step)")
    print(accuracy.markdown(acc))
    print(latency.markdown(lat))
    return {"dir": str(out), "accuracy_md": str(out / "accuracy.md"), "latency_md": str(out / "latency.md"),
            "accuracy": {r["model"]: r["accuracy"] for r in acc["models"]},
            "label_agreement_with_pytorch": {r["model"]: r["label_agreement_with_pytorch"] for r in acc["models"]
                                             if "label_agreement_with_pytorch" in r},
            "e2e_s_p50": {r["model"]: r["e2e_s"]["p50"] for r in lat["models"]}}


def format_table(rows: list[dict]) -> str:
    """A plain-text table of per-stage metrics."""
    head = f"{'stage':<22} {'n':>4} {'format':>7} {'accuracy':>9} {'macro recall':>13} {'unparsable':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['stage']:<22} {r['n']:>4} {r['format_rate']:>7.1%} {r['accuracy']:>9.1%} "
                     f"{r['macro_recall']:>13.1%} {r['unparsable_rate']:>11.1%}")
    return "\n".join(lines)
