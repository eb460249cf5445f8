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

from export.compare import agreement_text
from factory import config as config_lib
from factory.cot.teachers import TeacherConfig
from factory.data.synth import SynthConfig
from factory.errors import ConfigError
from factory.files import write_json
from factory.evaluate import EvalConfig
from factory.models import ModelConfig
from factory.layout import MADE_FROM, RunLayout
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
    # 4 prompts x G=8 per optimizer step, one device step each; 128 tokens cover the ~115-token traces the
    # small model learns to write. Chosen on a separate dev set (README, "Method"): 2 prompts per step at
    # 2e-4 lowered held-out accuracy from stage to stage (stage 4: 82 % against 87.5 % after SFT); 4 prompts
    # at 1e-4 with the head frozen (the stage table's RL default) kept it at 87-88 % for the same samples.
    return {"max_steps": steps, "learning_rate": 1e-4, "batch_size": 32, "grad_accum": 1, "num_generations": 8,
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
            # 896 completions over the three RL stages, as many as the earlier 2-prompt schedule sampled
            "2_grpo_format": _grpo_cpu(5),
            "3_grpo_accuracy": _grpo_cpu(15),
            "4_clgrpo": _grpo_cpu(16),  # 8 generation batches, each used for 2 optimizer steps (μ = 2)
        })


@dataclass
class ExportStepConfig:
    enabled: bool = True  # export the last trained stage to ONNX at the end of the run
    quant: list[str] = field(default_factory=lambda: ["fp32", "int8", "int4"])
    block_size: int = 32
    accuracy_level: int = 4  # int4 MatMulNBits compute precision: 4 int8 (fast on CPU), 1 fp32


@dataclass
class BenchStepConfig:
    enabled: bool = True  # accuracy of every stage + ONNX package, and latency, at the end of the run
    split: str = "test"
    limit: int = 0  # images for the accuracy report (0: the whole split)
    latency_runs: int = 4
    latency_warmup: int = 1
    latency_images: int = 4


@dataclass
class HeldoutConfig:
    """The held-out test set every stage is scored on, with intervals and paired tests (``factory.stats``).

    Synthetic runs draw a separate clean set (another seed, no label noise, the run's other synthesis knobs):
    400 images see a 3-point difference between two stages on the same images, 80 do not. A run on real
    EmoSet (``data.root``) uses that root's ``split``.
    """

    enabled: bool = True
    n: int = 400  # synthetic: images in the held-out set (50 per emotion)
    seed_offset: int = 1000  # synthetic: its seed is data.synth.seed + seed_offset
    split: str = "test"  # real data: the split of data.root that is held out
    limit: int = 0  # score only the first N images (0: all)
    compare_to: list[str] = field(default_factory=lambda: ["0_baseline", "1_sft"])  # paired tests against these


@dataclass
class RunConfig:
    """The resolved configuration of one ``svlm run``."""

    name: str = "default"
    output_dir: str = "runs"
    task: str = "emoset"  # a shipped task (emoset, facial_expression) or a task YAML (factory.tasks)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cot: CotStepConfig = field(default_factory=CotStepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainOptions = field(default_factory=default_train)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    export: ExportStepConfig = field(default_factory=ExportStepConfig)
    bench: BenchStepConfig = field(default_factory=BenchStepConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)


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
    return TrainConfig(name=cfg.name, output_dir=cfg.output_dir, task=cfg.task, data=str(root),
                       cot=str(cfg.layout.cot), model=cfg.model, eval=cfg.eval, train=cfg.train)


def run(cfg: RunConfig) -> dict:
    """Run the chain; return the summary that is also written to ``runs/<name>/summary.json``. One process
    at a time per run folder (``factory.files.folder_lock``)."""
    from factory.files import folder_lock

    with folder_lock(cfg.run_dir):
        return _run(cfg)


def _run(cfg: RunConfig) -> dict:
    from factory.cot.build import CotConfig, build
    from factory.cot.teachers import make_teacher
    from factory.data.emoset import read_split
    from factory.evaluate import evaluate
    from factory.models import count_parameters, load_model
    from factory.tasks import load_task
    from factory.train.plots import plot_summary
    from factory.train.runner import base_source, plan, train
    from factory.train.stages import select_stages

    t0 = time.time()
    task = load_task(cfg.task)  # a bad task file fails before anything is written
    for teacher in cfg.cot.teachers:  # so does a teacher that cannot serve it (no lexicon, no key variable)
        make_teacher(teacher, task)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.root is None and not cfg.data.synth.out:
        cfg.data.synth.out = str(cfg.layout.data)
    config_lib.save(cfg, run_dir)
    _log(f"task {task.name}: {', '.join(task.labels)} (labels from {task.label_from})")
    root = prepare_data(cfg)
    tcfg = train_config(cfg, root)
    stage_names = select_stages(cfg.train.select)
    plan(tcfg, stage_names)  # a bad stage setting fails now, not after the data and CoT steps
    splits = {}
    for split in ("train", "val", "test"):
        result = read_split(root, split, task=task, strict=cfg.data.strict, check_images=cfg.data.check_images)
        result.write_report(cfg.layout.data_reports / f"{split}.json")
        splits[split] = result
        unlabelled = f", {result.unlabelled} without a {task.name} label" if result.unlabelled else ""
        _log(f"{split}: {len(result.records)} records, {len(result.skipped)} skipped{unlabelled}")

    cot_cfg = CotConfig(data=str(root), task=cfg.task, split="train", out=str(cfg.layout.cot),
                        teachers=cfg.cot.teachers,
                        policy=cfg.cot.policy, k=cfg.cot.k, rationalize=cfg.cot.rationalize)
    cot = build(cot_cfg, split=splits["train"])  # already read and checked above
    _log(f"CoT data: {cot['traces']} verified traces for {cot['images_with_trace']}/{cot['images']} train images "
         f"({cot['image_acceptance_rate']:.1%}); {cfg.layout.cot / 'summary.md'}")
    source = base_source(tcfg)
    rows = []
    base_eval = cfg.layout.base_eval
    made_from = {"source": cfg.layout.relative(source), "data": cfg.layout.relative(root),
                 "eval": config_lib.to_dict(cfg.eval),
                 # the labels, questions and rule (records made before tasks, and EmoSet's, carry none)
                 **({"task": identity} if (identity := task.identity()) != load_task().identity() else {})}
    base = json.loads(base_eval.read_text()) if base_eval.is_file() else {}
    if base.pop("made_from", made_from) == made_from and base:  # (records before made_from were reused as is)
        _log(f"base model's evaluation reused ({base_eval})")
    else:
        loaded = load_model(source, dtype=cfg.model.dtype)
        _log(f"model {source} ({loaded.family.name}, {count_parameters(loaded.model) / 1e6:.1f}M parameters)")
        records = splits[cfg.eval.split].records
        if cfg.eval.limit:
            records = records[: cfg.eval.limit]
        base = evaluate(loaded.model, loaded.processor, records, max_new_tokens=cfg.eval.max_new_tokens,
                        batch_size=cfg.eval.batch_size, progress=True, task=task).metrics()
        write_json(base_eval, {**base, "made_from": made_from})
        del loaded
    rows.append({"stage": "base (untrained)", **base})
    stages = train(tcfg, stage_names)
    for name, done in stages.items():
        rows.append({"stage": name, **done["eval"]})
    heldout = run_heldout(cfg, root, tcfg, list(stages))
    exported = run_export(cfg, list(stages), eval_tokens(tcfg, list(stages))) if stages else {}
    bench = run_bench(cfg, root, list(stages), exported, eval_tokens(tcfg, list(stages))) if stages else {}
    summary = {
        "task": task.name,
        "data_root": str(root),
        "splits": {s: r.summary() for s, r in splits.items()},
        "cot": {k: cot[k] for k in ("images", "images_with_trace", "image_acceptance_rate", "traces")},
        "model": {"source": source, "family": cfg.model.family if cfg.model.source is None else None},
        "stages": rows,
        "heldout": heldout_summary(heldout),
        "export": exported,
        "bench": bench,
        "seconds": round(time.time() - t0, 1),
    }
    write_json(cfg.layout.summary, summary)
    plot = plot_summary(rows, cfg.layout.stages_plot, f"{cfg.name}: {cfg.eval.split} split", len(task.labels))
    print(format_table(rows))
    if heldout:
        print(f"\nHeld-out test set ({heldout['images']} images, {heldout['data']}):")
        print(heldout_table(heldout))
    _log(f"done in {summary['seconds']} s; summary at {cfg.layout.summary}, chart at {plot}")
    for quant, info in exported.items():
        _log(f"ONNX {quant}: {info['path']} ({info['mb']} MB; labels agree with PyTorch: {agreement_text(info)})")
    if bench:
        _log(f"benchmark report: {bench['accuracy_md']} and {bench['latency_md']} (+ plots in {bench['dir']})")
    if exported:
        model = exported.get("int8", next(iter(exported.values())))["path"]
        _log(f"open the demo on this run: svlm demo --runs {cfg.output_dir} --model {model}")
    return summary


def heldout_data(cfg: RunConfig, root: Path) -> tuple[Path, str]:
    """(data root, split) of the held-out set; a synthetic one is generated once into the run folder."""
    from factory.data.synth import SynthConfig, generate

    if cfg.data.root is not None:
        return root, cfg.heldout.split
    synth = config_lib.to_dict(cfg.data.synth)
    hcfg = config_lib.build(SynthConfig, {**synth, "out": str(cfg.layout.heldout_data), "n": cfg.heldout.n,
                                          "seed": cfg.data.synth.seed + cfg.heldout.seed_offset,
                                          "fractions": [0.0, 0.0, 1.0], "label_noise": 0.0})
    generate(hcfg, progress=True)
    return Path(hcfg.out), "test"


def eval_tokens(tcfg: TrainConfig, stages: list[str]) -> int:
    """The generation budget: at least every GRPO stage's completion length, so that no reasoning the model
    was trained to write is cut (a cut answer scores as wrong)."""
    lengths = [tcfg.stage(s).max_completion_length for s in stages if tcfg.stage(s).kind == "grpo"]
    return max([tcfg.eval.max_new_tokens, *lengths])


def _report_is_current(reports: list[Path], inputs: list[Path], models: list[str], made_from: dict) -> bool:
    """A report can be reused when it is newer than everything it measured, covers the same models and was
    made with the same settings (data, split, limit, token budget, …: ``made_from``)."""
    if not all(r.is_file() for r in reports) or not all(i.is_file() for i in inputs):
        return False
    record = reports[0].parent / MADE_FROM
    if not record.is_file() or json.loads(record.read_text()) != made_from:
        return False
    newer = min(r.stat().st_mtime for r in reports) > max(i.stat().st_mtime for i in inputs)
    return newer and [m["path"] for m in json.loads(reports[0].read_text())["models"]] == models


def run_heldout(cfg: RunConfig, root: Path, tcfg: TrainConfig, stages: list[str]) -> dict:
    """Every trained stage on the held-out set: accuracy with a 95 % bootstrap interval, per-class recall,
    and paired McNemar tests against the stages in ``heldout.compare_to``."""
    if not cfg.heldout.enabled or not stages:
        return {}
    from benchmarks import accuracy

    data, split = heldout_data(cfg, root)
    out = cfg.layout.heldout
    models = [str(cfg.layout.stage(s)) for s in stages]
    refs = [str(cfg.layout.stage(s)) for s in cfg.heldout.compare_to if s in stages]
    made_from = {"data": cfg.layout.relative(data), "split": split, "limit": cfg.heldout.limit,
                 "compare_to": [Path(r).name for r in refs],
                 "max_new_tokens": eval_tokens(tcfg, stages), "batch_size": cfg.eval.batch_size}
    if _report_is_current([out / "accuracy.json"], [cfg.layout.done(s) for s in stages], models, made_from):
        _log(f"held-out report in {out} is up to date, reused")
        return json.loads((out / "accuracy.json").read_text())
    _log(f"scoring {len(models)} stages on the held-out set ({data}, {split})")
    report = accuracy.run(models, str(data), split, cfg.heldout.limit, out=out, task=cfg.task,
                          max_new_tokens=made_from["max_new_tokens"], batch_size=cfg.eval.batch_size, progress=True,
                          command="svlm run (held-out step)", compare_to=refs)
    write_json(out / MADE_FROM, made_from)
    return report


def heldout_summary(report: dict) -> dict:
    """Per stage: accuracy and its interval, macro and per-class recall, format rate, and the paired tests."""
    if not report:
        return {}
    stages = {}
    for r in report["models"]:
        name = Path(r["path"]).name
        stages[name] = {"accuracy": r["accuracy"], "accuracy_ci": r["accuracy_ci"], "macro_recall": r["macro_recall"],
                        "format_rate": r["format_rate"], "unparsable_rate": r["unparsable_rate"],
                        "recall": {e: r["per_class"][e]["recall"] for e in r["per_class"]},
                        "vs": {}}
    for c in report.get("comparisons", []):
        model, ref = c["model"].split()[0], c["reference"].split()[0]
        stages[model]["vs"][ref] = {"diff": c["diff"], "diff_ci": c["diff_ci"], "p_value": c["p_value"],
                                    "only_this": c["a_only"], "only_reference": c["b_only"]}
    return {"data": report["data"], "split": report["split"], "images": report["images"], "stages": stages}


def heldout_table(report: dict) -> str:
    """Accuracy with its interval, the paired differences against the reference stages, the weakest class."""
    from factory import stats

    summary = heldout_summary(report)
    refs = sorted({ref for s in summary["stages"].values() for ref in s["vs"]},
                  key=lambda r: list(summary["stages"]).index(r) if r in summary["stages"] else 99)
    head = f"{'stage':<18} {'format':>7} {'accuracy [95% CI]':>22} " + " ".join(
        f"{'vs ' + r:>26}" for r in refs) + f" {'macro rec':>9} {'min class recall':>22}"
    lines = [head, "-" * len(head)]
    for name, s in summary["stages"].items():
        cells = []
        for ref in refs:
            v = s["vs"].get(ref)
            cells.append(f"{'':>26}" if v is None else
                         f"{100 * v['diff']:>+6.1f} [{100 * v['diff_ci'][0]:+.1f},{100 * v['diff_ci'][1]:+.1f}] "
                         f"{stats.fmt_p(v['p_value']):>7}")
        worst = min(s["recall"], key=s["recall"].get)
        lines.append(f"{name:<18} {s['format_rate']:>7.1%} {stats.fmt_ci(s['accuracy'], *s['accuracy_ci']):>22} "
                     + " ".join(cells) + f" {s['macro_recall']:>9.1%} {worst + ' ' + format(s['recall'][worst], '.0%'):>22}")
    return "\n".join(lines)


def run_export(cfg: RunConfig, stages: list[str], max_new_tokens: int) -> dict:
    """Export the last trained stage (reused when an export of it is newer than the stage). The validation
    decodes the run's evaluation budget: with export's default 48 tokens every CoT answer of the default model
    was cut, and label agreement with PyTorch could not be measured."""
    if not cfg.export.enabled:
        return {}
    from export.build import ExportConfig, export

    stage = stages[-1]
    out = cfg.layout.export
    manifests = {}
    for quant in cfg.export.quant:
        mf = out / quant / "manifest.json"
        if mf.is_file() and mf.stat().st_mtime > cfg.layout.done(stage).stat().st_mtime:
            manifest = json.loads(mf.read_text())
            q = manifest["quantization"]
            if q.get("method") != "MatMulNBits" or (q.get("block_size"), q.get("accuracy_level")) == \
                    (cfg.export.block_size, cfg.export.accuracy_level):
                manifests[quant] = manifest  # (an int4 made with other MatMulNBits settings is redone)
    if set(manifests) != set(cfg.export.quant) or any(m["source"].get("stage") != stage for m in manifests.values()):
        manifests = export(ExportConfig(run=str(cfg.run_dir), stage=stage, out=str(out), quant=cfg.export.quant,
                                        block_size=cfg.export.block_size,
                                        accuracy_level=cfg.export.accuracy_level, max_new_tokens=max_new_tokens,
                                        overwrite=True))
    else:
        _log(f"export of {stage} already at {out}, reused")
    return {q: {"path": str(out / q), "mb": round(m["size_bytes"] / 1e6, 2),
                "max_abs_logit_diff": m["validation"]["max_abs_logit_diff"],
                "greedy_tokens_identical": m["validation"]["greedy_tokens_identical"],
                "label_agreement": m["validation"]["label_agreement"], "images": m["validation"]["images"],
                "labels_valid_torch": m["validation"].get("labels_valid_torch", m["validation"]["images"])}
            for q, m in manifests.items()}


def run_bench(cfg: RunConfig, root: Path, stages: list[str], exported: dict, max_new_tokens: int) -> dict:
    """Accuracy of the exported stage and its packages on the test split, and latency of those variants."""
    if not cfg.bench.enabled:
        return {}
    from benchmarks import accuracy, latency

    out = cfg.layout.bench
    # The stages themselves are compared on the held-out set; here the exported stage is the PyTorch
    # reference its ONNX packages are checked against.
    torch_models = [str(cfg.layout.stage(s)) for s in stages[-1:]]
    onnx_models = [info["path"] for info in exported.values()]
    inputs = [cfg.layout.done(s) for s in stages[-1:]] + [Path(m) / "manifest.json" for m in onnx_models]
    reports = [out / "accuracy.json", out / "latency.json"]
    made_from = {"data": cfg.layout.relative(root), "split": cfg.bench.split, "limit": cfg.bench.limit,
                 "max_new_tokens": max_new_tokens, "batch_size": cfg.eval.batch_size,
                 "latency": [cfg.bench.latency_images, cfg.bench.latency_runs, cfg.bench.latency_warmup]}
    if _report_is_current(reports, inputs, torch_models + onnx_models, made_from):
        _log(f"benchmark report in {out} is up to date, reused")
        acc, lat = (json.loads(r.read_text()) for r in reports)
    else:
        _log(f"benchmarking accuracy on the {cfg.bench.split} split: {stages[-1]} in PyTorch and "
             f"{len(onnx_models)} ONNX packages")
        acc = accuracy.run(torch_models + onnx_models, str(root), cfg.bench.split, cfg.bench.limit, out=out,
                           task=cfg.task,
                           max_new_tokens=max_new_tokens, batch_size=cfg.eval.batch_size,
                           progress=True, command="svlm run (bench step)")
        images = latency.sample_images(root, cfg.bench.split, cfg.bench.latency_images, cfg.task)
        _log("benchmarking latency (one process per model)")
        lat = latency.run(torch_models[-1:] + onnx_models, images, out, cfg.bench.latency_runs,
                          cfg.bench.latency_warmup, max_new_tokens=max_new_tokens,
                          command="svlm run (bench step)")
        write_json(out / MADE_FROM, made_from)
    print(accuracy.markdown(acc))
    print(latency.markdown(lat))
    return {"dir": str(out), "accuracy_md": str(out / "accuracy.md"), "latency_md": str(out / "latency.md"),
            "accuracy": {r["model"]: r["accuracy"] for r in acc["models"]},
            "label_agreement_with_pytorch": {r["model"]: r["label_agreement_with_pytorch"] for r in acc["models"]
                                             if "label_agreement_with_pytorch" in r},
            "e2e_s_p50": {r["model"]: r["e2e_s"]["p50"] for r in lat["models"]}}


def format_table(rows: list[dict]) -> str:
    """A plain-text table of per-stage metrics; ``truncated``: completions cut at the token budget (shown after
    the budget), blank for results written before it was recorded."""
    head = (f"{'stage':<22} {'n':>4} {'format':>7} {'accuracy':>9} {'macro recall':>13} {'unparsable':>11} "
            f"{'truncated':>15}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cut = r.get("truncation_rate")
        cut = "" if cut is None else f"{cut:.1%} @{r.get('max_new_tokens')}"
        lines.append(f"{r['stage']:<22} {r['n']:>4} {r['format_rate']:>7.1%} {r['accuracy']:>9.1%} "
                     f"{r['macro_recall']:>13.1%} {r['unparsable_rate']:>11.1%} {cut:>15}")
    return "\n".join(lines)
