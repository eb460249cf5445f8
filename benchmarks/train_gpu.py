"""GPU training benchmark: plain trl 1.16 GRPO (QLoRA, rollouts on the nf4 model) against our dense
rollouts (``rollout: dense``: a bf16 copy of the policy with a static, compiled KV cache), at the same G,
batch and completion length, on real-size shapes with random weights. Also the peak memory of every
stage kind with our path on.

Prints a table last and writes ``benchmarks/results/train_gpu.json``.

    python -m benchmarks.train_gpu                       # 1B shape: trl vs ours; 2B shape: ours, memory
    python -m benchmarks.train_gpu --completion 256      # shorter, for a quick look

A random model never writes EOS, so every completion runs to ``--completion`` tokens: the worst case, and
the same work for both paths. Step times are trl's own ``step_time`` logs; the first dense generation
includes torch.compile, so the steady-state figure is the second one.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path


def _measure(cfg, name: str, base: str, data: Path, cot: Path, work: Path) -> dict:
    import shutil

    import torch

    from factory.train.common import StageContext
    from factory.train.grpo import run_grpo
    from factory.train.sft import run_sft

    stage = cfg.stage(name)
    out = work / cfg.name / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ctx = StageContext(name, stage, cfg, out, base, data, cot, progress=False)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    model, _, metrics = (run_sft if stage.kind == "sft" else run_grpo)(ctx)
    seconds = time.time() - t
    history = json.loads((out / "log_history.json").read_text())
    del model
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    if cuda:
        torch.cuda.empty_cache()
    row = {"stage": name, "kind": stage.kind, "steps": stage.max_steps, "seconds": round(seconds, 1),
           "peak_gib": round(peak, 2),
           "step_times_s": [round(float(r["step_time"]), 2) for r in history if "step_time" in r]}
    if stage.kind == "grpo":
        gen = [r for r in history if "completions/mean_length" in r]
        row["rollout"] = stage.rollout
        row["generation_steps_s"] = [round(float(r["step_time"]), 2) for r in gen]
        tokens = [stage.batch_size * float(r["completions/mean_length"]) for r in gen]
        row["rollout_tokens_per_s"] = [round(n / float(r["step_time"]), 1) for n, r in zip(tokens, gen)]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--completion", type=int, default=1024)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--compare-shape", default="internvl3-1b-shape", help="shape for trl vs ours")
    parser.add_argument("--memory-shape", default="internvl3-2b-shape", help="shape for the memory check")
    parser.add_argument("--memory-stages", default="1_sft,4_clgrpo", help="stages measured on the memory shape")
    parser.add_argument("--workdir", default="/tmp/svlm_train_gpu")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    import torch

    from factory.cot.build import CotConfig, build
    from factory.data.synth import SynthConfig, generate
    from factory.models import ModelConfig
    from factory.train.runner import LoraSettings, TrainConfig, TrainOptions, base_source

    if not torch.cuda.is_available():  # a CPU run only checks the code path (use tiny shapes)
        print("no CUDA: a dry run of the code path; the figures mean nothing", file=sys.stderr)
    work = Path(args.workdir)
    data, cot = work / "data", work / "cot"
    generate(SynthConfig(out=str(data), n=160, image_size=160), progress=False)
    build(CotConfig(data=str(data), split="train", out=str(cot)), progress=False)
    quiet = {"save_steps": 10_000, "logging_steps": 1}
    grpo = {"parent": None, "batch_size": args.prompts * args.generations,
            "num_generations": args.generations, "max_completion_length": args.completion, **quiet}

    def config(shape: str, stages: dict) -> TrainConfig:
        return TrainConfig(name=shape, output_dir=str(work), data=str(data), cot=str(cot),
                           model=ModelConfig(size=shape),
                           train=TrainOptions(quantization="nf4", lora=LoraSettings(r=16, alpha=32), stages=stages))

    rows = []
    # 1. the same ClipLow GRPO stage, plain trl vs dense rollouts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def partial(row):  # a row as soon as it exists: a run cut off by a time limit still leaves figures
        rows.append(row)
        (out / "train_gpu_partial.json").write_text(json.dumps(rows, indent=2))

    # plain trl: one generation batch (no compilation to amortise); dense: two, the second is the steady state
    cfg = config(args.compare_shape, {"4_clgrpo": {**grpo, "max_steps": 2, "rollout": "trl"}})
    t = time.time()
    base = base_source(cfg)
    build_s = time.time() - t
    partial({"shape": args.compare_shape, **_measure(cfg, "4_clgrpo", base, data, cot, work)})
    cfg.train.stages["4_clgrpo"].update(rollout="dense", max_steps=4)
    partial({"shape": args.compare_shape, **_measure(cfg, "4_clgrpo", base, data, cot, work)})
    # 2. the 2B shape with dense rollouts: SFT and GRPO peak memory
    cfg2 = config(args.memory_shape, {"1_sft": {"max_steps": 3, "batch_size": 8, "grad_accum": 1, **quiet},
                                      "4_clgrpo": {**grpo, "max_steps": 4, "rollout": "dense"}})
    base2 = base_source(cfg2)
    for name in args.memory_stages.split(","):
        partial({"shape": args.memory_shape, **_measure(cfg2, name, base2, data, cot, work)})

    plain, dense = rows[0], rows[1]
    steady = lambda r: r["generation_steps_s"][-1]  # noqa: E731 (the last generation batch: compiled, warm)
    result = {
        "command": "python -m benchmarks.train_gpu " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)", "torch": torch.__version__, "python": platform.python_version(),
        "setting": f"{args.prompts} prompts x G={args.generations} x {args.completion} tokens, nf4 QLoRA r16, "
                   "num_iterations 2",
        "base_build_s": round(build_s, 1), "rows": rows,
        "speedup_generation_step": round(steady(plain) / steady(dense), 2),
    }
    name = "train_gpu.json" if torch.cuda.is_available() else "train_gpu_cpu_dryrun.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"\n{result['device']} | {result['setting']}")
    print(f"{'shape':<20} {'stage':<9} {'rollout':<7} {'peak GiB':>8} {'gen step s':>11} {'rollout tok/s':>14}")
    for r in rows:
        gen = f"{steady(r):.1f}" if r.get("generation_steps_s") else "-"
        tps = f"{r['rollout_tokens_per_s'][-1]:.0f}" if r.get("rollout_tokens_per_s") else "-"
        print(f"{r['shape']:<20} {r['stage']:<9} {r.get('rollout', '-'):<7} {r['peak_gib']:>8.2f} {gen:>11} {tps:>14}")
    print(f"generation step speed-up, dense vs trl: {result['speedup_generation_step']}x; "
          f"written to {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
