"""``svlm ablate``: controlled experiments on the stage chain, scored with statistics.

    svlm ablate --run runs/default                       # the default grid (below), 3 seeds
    svlm ablate --config configs/ablate_default.yaml seeds=[0,1]

An *arm* is a chain of stages that continues one stage adapter of a finished ``svlm run`` (``start``), e.g.
stage 4 with a symmetric clip continued from the run's ``3_grpo_accuracy`` adapter, so that every arm of a
comparison starts from the very same weights. Each arm is trained once per seed (``train.seed``: sampling and
data order) into ``<run>/<name>/<arm>/seed<k>/`` and its stages are scored on the run's held-out set. An arm
with no stages scores its start adapter once (it has no randomness left).

The report gives, per arm, the mean accuracy over seeds with a 95 % t interval (the run-to-run variation of
the method), the per-seed values, macro and weakest-class recall and the format rate, and paired comparisons
with the reference arm on the same images and seeds: the mean difference with a t interval over seeds and an
exact McNemar test over all (image, seed) pairs. Everything is resumable: a finished arm-seed is skipped, an
interrupted one resumes inside its stage (``svlm train``'s checkpoints).

Arm-seeds are independent, so ``jobs`` of them train at once, each in its own (spawned) process with
``cpu_count // jobs`` torch threads: small models use many threads poorly, so on a CPU several one-thread
trainings finish far sooner than one after another. ``jobs: 0`` (the default) runs one per CPU, at most one per
arm-seed still to do, and 1 on a GPU (arms on one GPU would fight for its memory); ``jobs: 1`` runs everything
in this process, one after another. The report is the same whatever order they finish in; when one fails, the
ones not started yet are cancelled, the running ones finish, and the error names the failed arm and seed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from factory import config as config_lib
from factory import stats
from factory.errors import ConfigError, SVLMError
from factory.layout import DONE, RunLayout
from factory.tasks import TASK_FILENAME

RESULT = "heldout.json"


@dataclass
class ArmConfig:
    """One arm: ``stages`` trained in order, continuing the run's ``start`` adapter."""

    start: str = "3_grpo_accuracy"  # a stage of the base run whose adapter the chain continues; "base": none
    stages: list[str] = field(default_factory=list)  # [] scores ``start`` itself
    overrides: dict = field(default_factory=dict)  # per stage: {4_clgrpo: {epsilon: 0.2}}
    note: str = ""  # what the arm tests, for the report


def _arm(start: str, stages: list[str], note: str, **stage4) -> dict:
    overrides = {"4_clgrpo": stage4} if stage4 else {}
    return {"start": start, "stages": stages, "overrides": overrides, "note": note}


#: The default grid: stage-4 variants from one stage-3 adapter, and stage ablations.
DEFAULT_ARMS: dict[str, dict] = {
    "clip_low": _arm("3_grpo_accuracy", ["4_clgrpo"], "ClipLow: ratio clipped to [1-0.1, 1+0.2], mu 2"),
    "symmetric": _arm("3_grpo_accuracy", ["4_clgrpo"], "symmetric control [1-0.2, 1+0.2] at equal steps and mu",
                      epsilon=0.2, epsilon_high=0.2, clip_low=False),
    "mu1": _arm("3_grpo_accuracy", ["4_clgrpo"], "mu 1: ratio 1, no clip acts (more plain GRPO)",
                num_iterations=1, epsilon=0.2, epsilon_high=0.2, clip_low=False),
    "mu4": _arm("3_grpo_accuracy", ["4_clgrpo"], "ClipLow with 4 passes per generation batch", num_iterations=4),
    "eps_low_0.05": _arm("3_grpo_accuracy", ["4_clgrpo"], "ClipLow with a tighter lower bound 0.05",
                         epsilon=0.05),
    "skip_stage2": _arm("1_sft", ["3_grpo_accuracy", "4_clgrpo"], "stage 1 -> 3 -> 4 (no format-only GRPO)"),
    "skip_stage3": _arm("2_grpo_format", ["4_clgrpo"], "stage 1 -> 2 -> 4 (no plain accuracy GRPO)"),
    "stage3": _arm("3_grpo_accuracy", [], "the run's stage 3 (no stage 4)"),
    "sft_only": _arm("1_sft", [], "the run's stage 1 (CoT SFT, no RL)"),
    "baseline": _arm("0_baseline", [], "the run's label-only baseline"),
}


@dataclass
class AblateConfig:
    """The resolved configuration of one ``svlm ablate``."""

    run: str = "runs/default"  # a finished svlm run: its data, CoT, base model, adapters and held-out set
    name: str = "ablate"  # results go to <run>/<name>/
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str = "clip_low"  # the arm every other arm is compared with
    # compare with these stages of the reference arm (same seed) instead: e.g. [0_baseline, 1_sft] for a chain
    compare_stages: list[str] = field(default_factory=list)
    evaluate: str = "last"  # last: score each arm's last stage; all: every stage of the chain
    data: str | None = None  # score on this EmoSet root instead of the run's held-out set (e.g. a dev set)
    split: str = "test"  # with data: the split scored
    arms: dict = field(default_factory=dict)  # name -> ArmConfig; empty: DEFAULT_ARMS
    jobs: int = 0  # arm-seeds trained at once, each in its own process; 0: 1 on a GPU, else one per CPU

    def __post_init__(self):
        if self.jobs < 0:
            raise ConfigError(f"jobs must be 0 (automatic) or a positive number of processes, got {self.jobs}")
        raw = self.arms or DEFAULT_ARMS
        self.arms = {name: arm if isinstance(arm, ArmConfig) else config_lib.build(ArmConfig, arm, f"arms.{name}")
                     for name, arm in raw.items()}
        if self.reference not in self.arms:
            raise ConfigError(f"reference arm {self.reference!r} is not one of the arms: {', '.join(self.arms)}")
        if self.evaluate not in ("last", "all"):
            raise ConfigError(f"evaluate must be 'last' or 'all', got {self.evaluate!r}")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        from factory.train.stages import STAGE_ORDER, STAGES

        for name, arm in self.arms.items():
            unknown = [s for s in [*arm.stages, *arm.overrides] if s not in STAGE_ORDER]
            if arm.start not in (*STAGE_ORDER, "base"):
                unknown.append(arm.start)
            if unknown:
                raise ConfigError(f"arms.{name}: unknown stage(s) {unknown}; stages are {', '.join(STAGE_ORDER)} "
                                  "(start may also be 'base')")
            if arm.start == "base" and (not arm.stages or STAGES[arm.stages[0]].parent is not None):
                raise ConfigError(f"arms.{name}: a chain from the base model must start with an SFT stage")
            extra = [s for s in arm.overrides if s not in arm.stages]
            if extra:
                raise ConfigError(f"arms.{name}.overrides names stages the arm does not train: {extra}")


def _log(msg: str) -> None:
    print(f"[svlm ablate] {msg}", flush=True)


def _load_run(run: Path):
    """The base run's resolved config, data root and held-out set."""
    from factory.pipeline import RunConfig, heldout_data

    cfg_file = run / config_lib.CONFIG_FILENAME
    if not cfg_file.is_file():
        raise SVLMError(f"{run} is not an svlm run folder ({cfg_file.name} is missing); run `svlm run` first")
    rcfg = config_lib.load(RunConfig, cfg_file)
    root = Path(rcfg.data.root) if rcfg.data.root else Path(rcfg.data.synth.out)
    return rcfg, root, heldout_data(rcfg, root)


def arm_train_config(rcfg, root: Path, arm: ArmConfig, out: Path, seed: int):
    """The ``svlm train`` config of one arm and seed: the run's settings, the arm's stages and parents."""
    from factory.pipeline import train_config
    from factory.train.runner import TrainConfig
    from factory.train.stages import STAGES

    tcfg = train_config(rcfg, root)
    data = config_lib.to_dict(tcfg)
    data["output_dir"], data["name"] = str(out.parent), out.name
    if rcfg.model.source is None:  # the run's own random base model, not a new one per arm
        data["model"]["source"] = str(rcfg.layout.base_model)
    data["train"]["seed"] = seed
    data["train"]["select"] = "all"
    previous = arm.start
    for stage in arm.stages:
        over = dict(data["train"]["stages"].get(stage, {}))
        if STAGES[stage].parent is not None:  # SFT stages start fresh; RL stages continue the chain
            over["parent"] = previous
        over.update(arm.overrides.get(stage, {}))
        data["train"]["stages"][stage] = over
        previous = stage
    return config_lib.build(TrainConfig, data)


def _seed_stage(src: Path, dst: Path) -> None:
    """Give an arm-seed folder the start stage (adapter, stage.yaml, task.yaml, done.json), copied once."""
    if (dst / DONE).is_file():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(src / "adapter", tmp / "adapter")
    for name in ("stage.yaml", DONE, "svlm_config.yaml", TASK_FILENAME):
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def _cache_file(stage_dir: Path, data: Path, split: str, limit: int, max_new_tokens: int) -> Path:
    import hashlib

    key = hashlib.sha1(f"{Path(data).resolve()}|{split}|{limit}|{max_new_tokens}".encode()).hexdigest()[:10]
    return stage_dir / f"{RESULT[:-5]}_{key}.json"


def _cached(stage_dir: Path, data: Path, split: str, limit: int, max_new_tokens: int) -> dict | None:
    """The cached score of a finished stage folder, if it is newer than the stage (else None)."""
    cached = _cache_file(stage_dir, data, split, limit, max_new_tokens)
    done = stage_dir / DONE
    if cached.is_file() and done.is_file() and cached.stat().st_mtime > done.stat().st_mtime:
        return json.loads(cached.read_text())
    return None


def _score(stage_dir: Path, data: Path, split: str, limit: int, max_new_tokens: int, batch_size: int) -> dict:
    """Predictions and metrics of one stage folder on (data, split), cached beside the stage."""
    from benchmarks import accuracy

    row = _cached(stage_dir, data, split, limit, max_new_tokens)
    if row is not None:
        return row
    cached = _cache_file(stage_dir, data, split, limit, max_new_tokens)
    report = accuracy.run([str(stage_dir)], str(data), split, limit, out=cached.with_suffix(""), progress=False,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, plots=False)
    row = report["models"][0]
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(cached)
    return row


@dataclass
class _Plan:
    """What every unit of work (one arm and seed) needs; picklable, so that a worker process gets a copy."""

    cfg: AblateConfig
    rcfg: object  # the base run's RunConfig
    root: Path  # the run's data root
    run_dir: Path
    out: Path  # <run>/<name>
    heldout: Path
    split: str
    tokens: int  # generation budget of the scoring

    def seeds(self, name: str) -> list[int]:
        return self.cfg.seeds if self.cfg.arms[name].stages else self.cfg.seeds[:1]

    def dirs(self, name: str, seed: int) -> dict[str, Path]:
        """The stage folders one arm-seed scores: its own trained stages, or the run's start stage."""
        arm = self.cfg.arms[name]
        if not arm.stages:
            return {arm.start: self.run_dir / arm.start}
        scored = arm.stages if self.cfg.evaluate == "all" else arm.stages[-1:]
        return {s: self.out / name / f"seed{seed}" / s for s in scored}

    def finished(self, name: str, seed: int) -> dict[str, dict] | None:
        """The unit's scores when every stage it scores is trained and scored already (else None)."""
        rows = {s: _cached(d, self.heldout, self.split, self.rcfg.heldout.limit, self.tokens)
                for s, d in self.dirs(name, seed).items()}
        return None if any(r is None for r in rows.values()) else rows


def _unit(plan: _Plan, name: str, seed: int, progress: bool) -> dict[str, dict]:
    """One arm and seed: seed the start stage, train the arm's stages, score them; {stage: scored row}."""
    from factory.train.runner import train

    arm = plan.cfg.arms[name]
    if arm.stages:
        where = plan.out / name / f"seed{seed}"
        tcfg = arm_train_config(plan.rcfg, plan.root, arm, where, seed)
        if arm.start != "base":
            _seed_stage(plan.run_dir / arm.start, where / arm.start)
        _log(f"{name} seed {seed}: training {' -> '.join([arm.start, *arm.stages])}")
        train(tcfg, list(arm.stages), progress=progress)
    return {s: _score(d, plan.heldout, plan.split, plan.rcfg.heldout.limit, plan.tokens, plan.rcfg.eval.batch_size)
            for s, d in plan.dirs(name, seed).items()}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers(jobs: int, pending: int) -> int:
    """How many arm-seeds run at once: ``jobs`` (0: 1 on a GPU, else one per CPU), at most one per pending unit.

    >>> workers(3, 10), workers(8, 2), workers(2, 0)
    (3, 2, 1)
    """
    if jobs == 0:
        import torch

        jobs = 1 if torch.cuda.is_available() else _cpus()  # arms on one GPU would fight for its memory
    return max(1, min(jobs, pending))


def _init_worker(threads: int) -> None:
    """A worker process's share of the CPUs, set before anything starts torch's thread pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(threads)


def _run_parallel(plan: _Plan, units: list[tuple[str, int]], n: int, done) -> None:
    """Run ``units`` in ``n`` spawned processes; ``done(name, seed, rows)`` as each finishes (any order).

    Arms without stages that score the same run folder share one unit, so no two processes score one folder
    (trained arm-seeds each have their own). After a failure no further unit starts; the running ones finish
    (kept on disk for a resume) and an SVLMError names every arm-seed that failed."""
    import multiprocessing
    import traceback
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    sharing: dict[tuple[Path, ...], list[tuple[str, int]]] = {}
    for name, seed in units:
        sharing.setdefault(tuple(plan.dirs(name, seed).values()), []).append((name, seed))
    threads = max(1, _cpus() // n)
    _log(f"{len(sharing)} arm-seeds to train or score, {n} at a time ({threads} CPU threads each)")
    failed: list[str] = []
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads,))
    try:
        # longest chains first, so that no long one is left to run alone at the end
        groups = sorted(sharing.values(), key=lambda group: -len(plan.cfg.arms[group[0][0]].stages))
        futures = {pool.submit(_unit, plan, *group[0], False): group for group in groups}
        running = set(futures)
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                (name, seed), *_ = group = futures[future]
                try:
                    rows = future.result()
                except Exception as exc:  # noqa: BLE001 - whatever a unit raised is reported with its arm and seed
                    if not isinstance(exc, SVLMError):
                        print("".join(traceback.format_exception(exc)), file=sys.stderr, flush=True)
                    failed.append(f"{name} seed {seed} ({type(exc).__name__}: {exc})")
                    _log(f"{name} seed {seed}: failed ({type(exc).__name__}: {exc}); the arm-seeds not started yet "
                         "are cancelled, the running ones finish")
                    running = {f for f in running if not f.cancel()}
                    continue
                for name, seed in group:
                    done(name, seed, rows)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failed:
        raise SVLMError(f"{len(failed)} arm-seed(s) failed: {'; '.join(failed)}. The finished ones are kept: fix "
                        "the cause and rerun the same command to resume")


def run(cfg: AblateConfig, progress: bool = True) -> dict:
    """Train and score every arm × seed (skipping finished ones); write and return the report."""
    from factory.pipeline import eval_tokens, train_config

    run_dir = Path(cfg.run)
    rcfg, root, (heldout, split) = _load_run(run_dir)
    if cfg.data is not None:
        heldout, split = Path(cfg.data), cfg.split
    out = run_dir / cfg.name
    config_lib.save(cfg, out)
    all_stages = sorted({s for a in cfg.arms.values() for s in [*a.stages, a.start] if s != "base"})
    tokens = eval_tokens(train_config(rcfg, root), all_stages)
    for name, arm in cfg.arms.items():
        if arm.start != "base" and not RunLayout(run_dir).done(arm.start).is_file():
            raise SVLMError(f"arm {name} starts from {run_dir / arm.start}, which is not a finished stage; "
                            f"run `svlm run` (or `svlm train`) for it first")
    plan = _Plan(cfg, rcfg, root, run_dir, out, heldout, split, tokens)
    # filled in the order of the config whatever the order the units finish in, so the report's rows are too
    results: dict[str, dict[int, dict[str, dict]]] = {name: dict.fromkeys(plan.seeds(name)) for name in cfg.arms}
    t0 = time.time()

    def done(name: str, seed: int, rows: dict[str, dict]) -> None:
        results[name][seed] = rows
        last = next(reversed(rows.values()))
        _log(f"{name} seed {seed}: held-out accuracy {last['accuracy']:.1%} ({time.time() - t0:.0f} s so far)")

    units = [(name, seed) for name in results for seed in results[name]]
    cached = {unit: plan.finished(*unit) for unit in units}  # each score file read once
    pending = [unit for unit, rows in cached.items() if rows is None]
    n = workers(cfg.jobs, len(pending))
    for (name, seed), rows in cached.items():
        if rows is not None:
            done(name, seed, rows)
        elif n == 1:  # in this process, one after another
            done(name, seed, _unit(plan, name, seed, progress))
    if n > 1:
        _run_parallel(plan, pending, n, done)
    report = summarize(cfg, results, heldout, split)
    write(report, out)
    print(markdown(report))
    _log(f"report: {out / 'ablation.md'} (+ ablation.json, ablation.png)")
    return report


def _correct(row: dict) -> list[bool]:
    from benchmarks.accuracy import truth

    return [p["predicted"] == truth(p) for p in row["predictions"]]


def summarize(cfg: AblateConfig, results: dict, data: Path, split: str) -> dict:
    """Per arm and scored stage: mean over seeds with intervals, and paired comparisons (``comparisons``)."""
    import numpy as np

    rows = []
    ref = results[cfg.reference]
    ref_last = {seed: next(reversed(stages.values())) for seed, stages in ref.items()}
    for name, by_seed in results.items():
        for stage in next(iter(by_seed.values())):
            per_seed = {seed: stages[stage] for seed, stages in by_seed.items()}
            acc = [r["accuracy"] for r in per_seed.values()]
            mean, lo, hi = stats.t_interval(acc)
            recall = {e: float(np.mean([r["per_class"][e]["recall"] for r in per_seed.values()]))
                      for e in next(iter(per_seed.values()))["per_class"]}
            row = {"arm": name, "stage": stage, "note": cfg.arms[name].note, "seeds": list(per_seed),
                   "accuracy": mean, "accuracy_ci": [lo, hi], "accuracy_per_seed": acc,
                   "macro_recall": float(np.mean([r["macro_recall"] for r in per_seed.values()])),
                   "format_rate": float(np.mean([r["format_rate"] for r in per_seed.values()])),
                   "recall": recall, "min_class_recall": min(recall.values()),
                   "weakest_class": min(recall, key=recall.get),
                   "min_class_recall_any_seed": min(min(r["per_class"][e]["recall"] for e in recall)
                                                    for r in per_seed.values()),
                   "vs": {}}
            for label, against in comparisons(cfg, ref, ref_last, name, stage).items():
                row["vs"][label] = _paired(per_seed, against)
            rows.append(row)
    labels = list(dict.fromkeys(label for r in rows for label in r["vs"]))
    return {"run": cfg.run, "data": str(data), "split": split, "reference": cfg.reference, "seeds": cfg.seeds,
            "compare_stages": cfg.compare_stages, "comparisons": labels,
            "images": len(next(iter(ref_last.values()))["predictions"]), "rows": rows}


def comparisons(cfg: AblateConfig, ref: dict, ref_last: dict, arm: str, stage: str) -> dict[str, dict]:
    """What one (arm, stage) row is compared with, per label: {seed: reference row}.

    Without ``compare_stages``: the reference arm's same stage when it scored one, else its last stage (the
    reference's own rows are not compared). With it: each named stage of the reference arm, same seed."""
    if not cfg.compare_stages:
        if arm == cfg.reference:
            return {}
        return {cfg.reference: {seed: stages.get(stage, ref_last[seed]) for seed, stages in ref.items()}}
    out = {}
    for target in cfg.compare_stages:
        if (arm, stage) != (cfg.reference, target) and all(target in stages for stages in ref.values()):
            out[f"{cfg.reference}/{target}"] = {seed: stages[target] for seed, stages in ref.items()}
    return out


def _paired(per_seed: dict, ref: dict) -> dict:
    """Arm minus reference. Seeds pair with the same seed of the reference; an arm without randomness
    (scored once) is paired with every reference seed."""
    import numpy as np

    diffs, mine, base = [], [], []
    for seed, ref_row in ref.items():
        row = per_seed.get(seed) or next(iter(per_seed.values()))
        a, b = _correct(row), _correct(ref_row)
        diffs.append(float(np.mean(a)) - float(np.mean(b)))
        mine += a
        base += b
    mean, lo, hi = stats.t_interval(diffs)
    return {"diff": mean, "diff_ci": [lo, hi], "diff_per_seed": diffs, **stats.mcnemar(mine, base)}


def markdown(report: dict) -> str:
    labels = report["comparisons"]
    lines = [f"# Ablation on {report['data']} ({report['split']}, {report['images']} images), "
             f"seeds {report['seeds']}", "",
             "Mean over seeds with a 95 % t interval. Δ = row − the named reference on the same images and seeds "
             "(mean over seeds with a t interval; exact McNemar over all image × seed pairs). An arm without "
             "training is scored once and paired with every seed of the reference.", "",
             "| arm | stage | accuracy [95 % CI] | per seed | "
             + " | ".join(f"Δ vs {lab} [95 % CI] | McNemar" for lab in labels)
             + " | macro recall | weakest class (mean recall) | format | what it tests |",
             "|---|---|---|---|" + "---|---|" * len(labels) + "---|---|---|---|"]
    for r in report["rows"]:
        cells = []
        for lab in labels:
            v = r["vs"].get(lab)
            if v is None:
                cells += ["", ""]
                continue
            ci = "" if v["diff_ci"][0] != v["diff_ci"][0] else \
                f" [{100 * v['diff_ci'][0]:+.1f}, {100 * v['diff_ci'][1]:+.1f}]"
            cells += [f"{100 * v['diff']:+.1f}{ci}", stats.fmt_p(v["p_value"])]
        lines.append(f"| {r['arm']} | {r['stage']} | {stats.fmt_ci(r['accuracy'], *r['accuracy_ci'])} | "
                     f"{', '.join(f'{100 * a:.1f}' for a in r['accuracy_per_seed'])} | " + " | ".join(cells)
                     + f" | {r['macro_recall']:.1%} | {r['weakest_class']} {r['min_class_recall']:.0%} | "
                     f"{r['format_rate']:.1%} | {r['note']} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "ablation.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "ablation.json")
    (out / "ablation.md").write_text(markdown(report))
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(1.0 * len(rows) + 2.5, 3.8))
    xs = np.arange(len(rows))
    acc = np.array([r["accuracy"] for r in rows])
    ci = np.array([[r["accuracy_ci"][0] if r["accuracy_ci"][0] == r["accuracy_ci"][0] else r["accuracy"],
                    r["accuracy_ci"][1] if r["accuracy_ci"][1] == r["accuracy_ci"][1] else r["accuracy"]]
                   for r in rows]).T
    colors = ["tab:orange" if r["arm"] == report["reference"] else "tab:blue" for r in rows]
    ax.bar(xs, acc, color=colors, alpha=0.6, yerr=np.abs(ci - acc), capsize=3)
    for x, r in zip(xs, rows):
        ax.scatter([x] * len(r["accuracy_per_seed"]), r["accuracy_per_seed"], color="black", s=8, zorder=3)
    ax.set_xticks(xs, [f"{r['arm']}\n{r['stage']}" for r in rows], rotation=30, ha="right", fontsize=7)
    lo = max(0.0, float(np.nanmin(ci)) - 0.1)
    ax.set_ylim(lo, min(1.0, float(np.nanmax(ci)) + 0.05))
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"arms (mean over seeds, 95 % t interval; dots: seeds); reference {report['reference']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)
