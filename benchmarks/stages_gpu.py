"""GPU check of the training stages: stage 1 (SFT) and stage 4 (ClipLow GRPO) for a few steps on a
real-size model with random weights, in 4-bit (QLoRA), through the same runners ``svlm train`` uses.

Records peak GPU memory and seconds per step per stage in ``benchmarks/results/stages_gpu.json`` and
prints a table last. A random model never writes the answer format, so every completion runs to
``--completion`` tokens (the worst case for rollout time) and the rewards are all zero.

Run on a CUDA machine:
    python -m benchmarks.stages_gpu --shape internvl3-1b-shape
On a CPU (a dry run of the code path, figures meaningless):
    python -m benchmarks.stages_gpu --shape tiny --sft-steps 2 --grpo-steps 2 --completion 8
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import sys
import time
from pathlib import Path


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="internvl3-1b-shape", help="model size (factory.families.MODEL_SIZES)")
    parser.add_argument("--family", default="internvl")
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--grpo-steps", type=int, default=4, help="optimizer steps (num_iterations 2: half generate)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per GRPO step")
    parser.add_argument("--generations", type=int, default=8, help="G")
    parser.add_argument("--completion", type=int, default=256, help="max completion tokens")
    parser.add_argument("--workdir", default="/tmp/svlm_stages_gpu")
    parser.add_argument("--out", default="benchmarks/results", help="folder for stages_gpu.json")
    args = parser.parse_args(argv)

    import torch

    from factory.cot.build import CotConfig, build
    from factory.data.synth import SynthConfig, generate
    from factory.models import ModelConfig, count_parameters
    from factory.train.common import StageContext
    from factory.train.grpo import run_grpo
    from factory.train.runner import LoraSettings, TrainConfig, TrainOptions, base_source
    from factory.train.sft import run_sft

    on_cuda = torch.cuda.is_available()
    work = Path(args.workdir)
    data = work / "data"
    generate(SynthConfig(out=str(data), n=160, image_size=160), progress=False)
    build(CotConfig(data=str(data), split="train", out=str(work / "cot")), progress=False)
    quiet = {"save_steps": 10_000, "logging_steps": 1}
    cfg = TrainConfig(
        name="gpu", output_dir=str(work), data=str(data), cot=str(work / "cot"),
        model=ModelConfig(family=args.family, size=args.shape),
        train=TrainOptions(quantization="nf4", lora=LoraSettings(r=16, alpha=32), stages={
            "1_sft": {"max_steps": args.sft_steps, "batch_size": args.sft_batch, "grad_accum": 1, **quiet},
            # parent 1_sft: stage 4's cost does not depend on stages 2-3 having run
            "4_clgrpo": {"parent": "1_sft", "max_steps": args.grpo_steps,
                         "batch_size": args.prompts * args.generations, "num_generations": args.generations,
                         "max_completion_length": args.completion, **quiet}}))
    t0 = time.time()
    base = base_source(cfg)
    build_s = time.time() - t0
    rows = []
    for name, runner in (("1_sft", run_sft), ("4_clgrpo", run_grpo)):
        stage = cfg.stage(name)
        out = cfg.run_dir / name
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "adapter", out / "checkpoints"):  # a rerun measures afresh
            if stale.exists():
                import shutil

                shutil.rmtree(stale)
        ctx = StageContext(name, stage, cfg, out, base, data, work / "cot", progress=False)
        if on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        model, _, metrics = runner(ctx)
        seconds = time.time() - t
        history = json.loads((out / "log_history.json").read_text())
        step_times = [r["step_time"] for r in history if "step_time" in r]
        row = {
            "stage": name, "kind": stage.kind, "steps": stage.max_steps,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda else None,
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if on_cuda else None,
            "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "train_runtime_s": round(metrics.get("train_runtime", seconds), 2),
            "s_per_step": round(metrics.get("train_runtime", seconds) / stage.max_steps, 3),
            "step_times_s": [round(float(s), 3) for s in step_times],
            "batch": stage.batch_size,
        }
        if stage.kind == "grpo":
            row.update(prompts=args.prompts, num_generations=stage.num_generations,
                       max_completion_length=stage.max_completion_length, num_iterations=stage.num_iterations,
                       mean_completion_tokens=round(sum(r.get("completions/mean_length", 0) for r in history
                                                        if "completions/mean_length" in r)
                                                    / max(1, sum("completions/mean_length" in r for r in history)), 1))
        rows.append(row)
        n_params = count_parameters(model)
        del model
    result = {
        "command": "python -m benchmarks.stages_gpu " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name() if on_cuda else platform.processor() or "cpu",
        "shape": args.shape, "family": args.family, "parameters": n_params, "quantization": "nf4",
        "base_build_s": round(build_s, 1), "versions": _versions(), "rows": rows,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("stages_gpu.json" if on_cuda else "stages_gpu_cpu_dryrun.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"\n{result['device']} | {args.shape} ({n_params / 1e9:.2f}B parameters incl. LoRA) | nf4 QLoRA r16")
    print(f"{'stage':<10} {'steps':>5} {'peak GiB':>9} {'s/step':>7}  setting")
    for r in rows:
        setting = (f"batch {r['batch']}" if r["kind"] == "sft" else
                   f"{r['prompts']} prompts x G={r['num_generations']} x {r['max_completion_length']} tok, "
                   f"num_iterations {r['num_iterations']}")
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        print(f"{r['stage']:<10} {r['steps']:>5} {peak:>9} {r['s_per_step']:>7.2f}  {setting}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
