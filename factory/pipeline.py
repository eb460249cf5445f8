"""``svlm run``: the whole chain that exists today, on its built-in default (a small model, synthetic data).

Today: synthetic EmoSet (or a real EmoSet root) → reader check with a skip report → CoT data from the
teachers (the offline attribute teacher by default), verified against the labels → base model (a built
"small" random model, or any hub id / local checkpoint of a registered family) → greedy evaluation of the
untrained base on the validation split → a table and what comes next. Every step writes under
``runs/<name>/`` with its resolved config and is skipped when its output already exists, so a killed run
continues where it stopped.
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
from factory.families import DEFAULT_FAMILY, FAMILIES, TINY_SIZES


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
class ModelConfig:
    source: str | None = None  # hub id or local path; None: build a random model of `family` at `size`
    family: str = DEFAULT_FAMILY
    size: str = "small"
    seed: int = 0
    dtype: str = "auto"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"model.family {self.family!r} is not registered; valid: {', '.join(FAMILIES)}")
        if self.size not in TINY_SIZES:
            raise ConfigError(f"model.size must be one of {list(TINY_SIZES)}, got {self.size!r}")


@dataclass
class EvalConfig:
    split: str = "val"
    limit: int = 32  # images evaluated per stage (0: the whole split)
    max_new_tokens: int = 96
    batch_size: int = 8


@dataclass
class CotStepConfig:
    teachers: list[TeacherConfig] = field(default_factory=lambda: [TeacherConfig()])  # offline attribute teacher
    policy: str = "all"
    k: int = 1
    rationalize: bool = False


@dataclass
class RunConfig:
    """The resolved configuration of one ``svlm run``."""

    name: str = "default"
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cot: CotStepConfig = field(default_factory=CotStepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

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


def prepare_model(cfg: RunConfig) -> str:
    """Return the base model source: the configured one, or a random model built once into the run."""
    from factory.tiny import save_tiny

    if cfg.model.source is not None:
        return cfg.model.source
    out = cfg.run_dir / "base_model"
    if not (out / "config.json").is_file() or not (out / "processor_config.json").is_file():
        save_tiny(cfg.model.family, cfg.model.size, out, seed=cfg.model.seed)
        _log(f"built a random-weight {cfg.model.family}/{cfg.model.size} model at {out}")
    return str(out)


def run(cfg: RunConfig) -> dict:
    """Run the chain; return the summary that is also written to ``runs/<name>/summary.json``."""
    from factory.data.emoset import read_split
    from factory.evaluate import evaluate
    from factory.models import count_parameters, load_model

    t0 = time.time()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.root is None and not cfg.data.synth.out:
        cfg.data.synth.out = str(run_dir / "data")
    config_lib.save(cfg, run_dir)
    root = prepare_data(cfg)
    splits = {}
    for split in ("train", "val", "test"):
        result = read_split(root, split, strict=cfg.data.strict, check_images=cfg.data.check_images)
        result.write_report(run_dir / "data_reports" / f"{split}.json")
        splits[split] = result
        _log(f"{split}: {len(result.records)} records, {len(result.skipped)} skipped")
    from factory.cot.build import CotConfig, build

    cot_cfg = CotConfig(data=str(root), split="train", out=str(run_dir / "cot"), teachers=cfg.cot.teachers,
                        policy=cfg.cot.policy, k=cfg.cot.k, rationalize=cfg.cot.rationalize)
    cot = build(cot_cfg, split=splits["train"])  # already read and checked above
    _log(f"CoT data: {cot['traces']} verified traces for {cot['images_with_trace']}/{cot['images']} train images "
         f"({cot['image_acceptance_rate']:.1%}); {run_dir / 'cot' / 'summary.md'}")
    source = prepare_model(cfg)
    loaded = load_model(source, dtype=cfg.model.dtype)
    n_params = count_parameters(loaded.model)
    _log(f"model {source} ({loaded.family.name}, {n_params / 1e6:.1f}M parameters)")

    records = splits[cfg.eval.split].records
    if cfg.eval.limit:
        records = records[: cfg.eval.limit]
    base = evaluate(loaded.model, loaded.processor, records, max_new_tokens=cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size, progress=True)
    rows = [{"stage": "base (untrained)", **base.metrics()}]
    summary = {
        "data_root": str(root),
        "splits": {s: r.summary() for s, r in splits.items()},
        "cot": {k: cot[k] for k in ("images", "images_with_trace", "image_acceptance_rate", "traces")},
        "model": {"source": source, "family": loaded.family.name, "parameters": n_params},
        "stages": rows,
        "seconds": round(time.time() - t0, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(rows))
    _log(f"done in {summary['seconds']} s; summary at {run_dir / 'summary.json'}")
    _log("next (not built yet): baseline + 4 training stages on the CoT data → ONNX export → benchmarks → demo")
    return summary


def format_table(rows: list[dict]) -> str:
    """A plain-text table of per-stage metrics."""
    head = f"{'stage':<22} {'n':>4} {'format':>7} {'accuracy':>9} {'macro recall':>13} {'unparsable':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['stage']:<22} {r['n']:>4} {r['format_rate']:>7.1%} {r['accuracy']:>9.1%} "
                     f"{r['macro_recall']:>13.1%} {r['unparsable_rate']:>11.1%}")
    return "\n".join(lines)
