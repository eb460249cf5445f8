"""GPU training benchmark: a whole GRPO step at real batch sizes, plain trl 1.16 (QLoRA, rollouts on the
nf4 training model) against ours (``rollout: dense``: a bf16 copy of the policy with a static, compiled KV
cache, decoded by ``generate`` or, path ``fused``, by the fused step of ``factory/train/decode.py``), on
real-size shapes with random weights and the real tokenizer (151k vocabulary).

Per case (shape × path × prompts per optimizer step × completion length, G = 8): stage 4 (ClipLow, μ = 2,
so one generation serves two optimizer steps) at its real batching, one warm-up generation cycle (it holds
torch.compile: the one-off compile cost is the first cycle minus the steady median), then ``--steady``
cycles: generation and the rest of the step (scoring, old log-probs, forward/backward, optimizer) timed
apart, rollout tokens/s, peak GPU memory of each phase. For dense cases also plain ``generate`` on the same
bf16 copy at the same batch (the ceiling the rollout is held to), and once per shape the sampler fidelity
(per-token |Δ log-prob| and KL of the bf16 rollout copy against the nf4 policy), and the peak memory of
the SFT stage.

    python -m benchmarks.train_gpu                         # the whole matrix (long: trl rollouts are slow)
    python -m benchmarks.train_gpu --cases internvl3-1b-shape:dense:8x512 --steady 5
    python -m benchmarks.train_gpu --budget-s 420          # stops starting new work after 420 s
    python -m benchmarks.train_gpu --cases internvl3-1b-shape:fused:8x512:gc=0,internvl3-1b-shape:trl:8x512:st=0

A case is ``SHAPE:PATH:PROMPTSxTOKENS`` (PATH: ``trl``, ``dense`` or ``fused``) with optional ``:mb=N``
(completions per device step; default 16), ``:rb=N`` (dense/fused: sequences generated at once,
``rollout_batch_size``), ``:gc=0|1`` (gradient checkpointing; default on, as on CUDA) and ``:st=N`` (steady cycles, default
``--steady``; ``st=0`` measures the first cycle only, fair for plain trl, which compiles nothing). A random model never writes
EOS, so every completion runs to its full length: the worst case, the same work for both paths.
Rows are written to ``train_gpu_partial.json`` as they finish; the result to ``train_gpu.json``.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

#: the issue's targets, each checked in the result (``targets``)
TARGETS = {"generation_step_speedup": 30.0, "whole_step_speedup": 10.0, "rollout_vs_generate_max_ratio": 1.5,
           "internvl3-1b-shape": 8.0, "internvl3-2b-shape": 12.0}
#: trl: plain trl (rollouts on the nf4 model); dense: the bf16 copy decoded by generate; fused: the copy decoded by
#: the fused step
PATHS = {"trl": {"rollout": "trl"}, "dense": {"rollout": "dense", "rollout_sampler": "generate"},
         "fused": {"rollout": "dense", "rollout_sampler": "fused"}}
#: the cases the memory targets are stated for: every stage of the shape must fit at these settings
MEMORY_SETTING = {"internvl3-1b-shape": (8, 512), "internvl3-2b-shape": (16, 1024)}


def parse_case(spec: str) -> dict:
    """``SHAPE:PATH:PxL[:mb=N][:rb=N][:gc=0|1][:st=N]`` → a case dict.

    >>> parse_case("internvl3-2b-shape:dense:16x1024:mb=8:rb=64")["rollout_batch"]
    64
    >>> parse_case("internvl3-1b-shape:fused:8x512:gc=0")["checkpointing"]
    False
    """
    parts = spec.split(":")
    if len(parts) < 3 or parts[1] not in PATHS or "x" not in parts[2]:
        raise SystemExit(f"bad case {spec!r}: want SHAPE:{'|'.join(PATHS)}:PROMPTSxTOKENS[:mb=N][:rb=N][:gc=0|1][:st=N]")
    prompts, tokens = (int(x) for x in parts[2].split("x"))
    opts = dict(p.split("=", 1) for p in parts[3:])
    if set(opts) - {"mb", "rb", "st", "gc"} or opts.get("gc", "1") not in ("0", "1"):
        raise SystemExit(f"bad case {spec!r}: options are mb=N, rb=N, gc=0|1, st=N")
    return {"shape": parts[0], "path": parts[1], "prompts": prompts, "completion": tokens,
            "micro_batch": int(opts.get("mb", 16)), "rollout_batch": int(opts["rb"]) if "rb" in opts else None,
            "checkpointing": opts.get("gc", "1") == "1", "steady": int(opts["st"]) if "st" in opts else None}


class Clock:
    """Times trl's generation calls and the optimizer steps, and the peak memory of each phase."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.generations: list[dict] = []  # per generation call: seconds, tokens, peak GiB
        self.steps: list[dict] = []  # per optimizer step: start, seconds
        self.train_peak = 0.0

    def sync(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def peak(self) -> float:
        import torch

        if not self.cuda:
            return float("nan")
        value = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return value

    def wrap_generation(self, trainer_cls):
        """Patch ``_generate_single_turn`` (both paths generate through it) to time each call."""
        clock, real = self, trainer_cls._generate_single_turn

        def timed(trainer, *args, **kwargs):
            clock.train_peak = max(clock.train_peak, clock.peak())
            start = clock.sync()
            completion_ids, logprobs = real(trainer, *args, **kwargs)
            seconds = clock.sync() - start
            clock.generations.append({"at": start, "seconds": seconds, "peak_gib": clock.peak(),
                                      "tokens": sum(len(c) for c in completion_ids)})
            return completion_ids, logprobs

        trainer_cls._generate_single_turn = timed
        return real

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class StepClock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock._start = clock.sync()

            def on_step_end(self, args, state, control, **kwargs):
                clock.steps.append({"start": clock._start, "seconds": clock.sync() - clock._start})

        return StepClock()

    def cycles(self) -> list[dict]:
        """Generation cycles: each optimizer step belongs to the last generation that began before it ended
        (the step that generates, and the steps that reuse its batch)."""
        out = [{"steps": 0, "whole_s": 0.0, "generation_s": g["seconds"], "tokens": g["tokens"],
                "tokens_per_s": g["tokens"] / g["seconds"], "generation_peak_gib": g["peak_gib"]}
               for g in self.generations]
        for step in self.steps:
            owner = [i for i, g in enumerate(self.generations) if g["at"] <= step["start"] + step["seconds"]]
            if owner:
                out[owner[-1]]["steps"] += 1
                out[owner[-1]]["whole_s"] += step["seconds"]
        for c in out:
            c["rest_s"] = c["whole_s"] - c["generation_s"]
        return out


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)} if values else {}


def grpo_case(env: dict, case: dict, steady: int) -> dict:
    """One stage-4 run of a case; returns its row."""
    from factory.train import grpo
    from factory.train.common import run_trainer

    prompts, g, mb = case["prompts"], env["generations"], case["micro_batch"]
    per_step = prompts * g
    cycles = 1 + steady
    stage = {"parent": None, "batch_size": mb, "grad_accum": per_step // mb, "num_generations": g,
             "max_completion_length": case["completion"], **PATHS[case["path"]],
             "rollout_batch_size": case["rollout_batch"], "max_steps": 2 * cycles,  # μ = 2
             "save_steps": 10_000, "logging_steps": 1}
    ctx = env["context"](case["shape"], "4_clgrpo", stage, checkpointing=case["checkpointing"])
    clock = Clock()
    free_memory()
    from torch._dynamo.utils import counters

    from factory.train.decode import compile_counts

    counters.clear()
    trainer = grpo.build_grpo_trainer(ctx)
    # the trainer's own class: for dense rollouts its generation includes refreshing the copy
    cls = type(trainer)
    real = clock.wrap_generation(cls)
    try:
        trainer.add_callback(clock.callback())
        t = time.time()
        run_trainer(ctx, trainer)
        seconds = time.time() - t
        clock.train_peak = max(clock.train_peak, clock.peak())
    finally:
        cls._generate_single_turn = real
    found = clock.cycles()
    warm, rest = found[0], found[1:]
    measured = rest or found  # st=0: the first cycle is the measurement
    row = {**case, "generations": g, "completions_per_step": per_step, "grad_accum": per_step // mb,
           "optimizer_steps": len(clock.steps), "seconds": round(seconds, 1),
           "warmup_cycle": {k: round(v, 3) for k, v in warm.items()},
           "cycles": [{k: round(v, 3) for k, v in c.items()} for c in rest],
           "measured": "steady cycles after the warm-up" if rest else "the first cycle (no warm-up)",
           "whole_cycle_s": summary([c["whole_s"] for c in measured]),
           "generation_s": summary([c["generation_s"] for c in measured]),
           "rest_s": summary([c["rest_s"] for c in measured]),
           "rollout_tokens_per_s": summary([c["tokens_per_s"] for c in measured]),
           "peak_gib": round(max(clock.train_peak, max(c["generation_peak_gib"] for c in found)), 2),
           "peak_generation_gib": round(max(c["generation_peak_gib"] for c in found), 2),
           "peak_training_gib": round(clock.train_peak, 2), **compile_counts()}
    if rest:
        row["compile_s"] = round(warm["generation_s"] - statistics.median(c["generation_s"] for c in rest), 1)
    if case["path"] != "trl" and env["reference_repeats"]:
        row["generate_reference"] = reference_generate(trainer, ctx, case, g, env["reference_repeats"])
    del trainer
    free_memory()
    return row


def free_memory() -> None:
    """Drop what an earlier measurement left: compiled graphs (and their CUDA-graph pools), cached blocks."""
    import gc

    import torch

    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def reference_generate(trainer, ctx, case: dict, g: int, repeats: int) -> dict:
    """Plain ``generate`` on the trained copy (bf16, static compiled cache) at the case's batch, outside trl:
    the ceiling for a ``dense`` rollout's tokens/s, and what a ``fused`` one is compared with. One untimed
    call first (the prompt may pad to another length than trl's, which recompiles), then ``repeats`` timed
    ones."""
    import torch
    from PIL import Image

    from factory.data.emoset import read_split

    copy = trainer._rollout
    processor = trainer.processing_class
    records = read_split(ctx.data_root, "train", task=ctx.task, check_images="none").records[:case["prompts"]]
    images = [[Image.open(r.image_path).convert("RGB")] for r in records for _ in range(g)]
    inputs = processor(images=images, text=[ctx.task.render_prompt(processor, "cot")] * len(images), return_tensors="pt",
                       padding=True).to(next(copy.model.parameters()).device)
    import copy as copy_module

    config = copy_module.deepcopy(trainer.generation_config)
    config.min_new_tokens = case["completion"]  # as in the rollouts of a random model: every token generated
    times, tokens = [], 0
    decoder, copy.decoder = copy.decoder, None  # the reference is transformers' generate, also for fused cases
    try:
        for i in range(repeats + 1):
            start = time.perf_counter()
            with torch.no_grad():
                out = copy.generate(**inputs, generation_config=config)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
            tokens = (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
    finally:
        copy.decoder = decoder
    return {"batch": len(images), "tokens": tokens, "seconds": summary(times),
            "tokens_per_s": round(tokens / statistics.median(times), 1)}


def sft_memory(env: dict, shape: str, steps: int) -> dict:
    """Peak memory of stage 1 (SFT) at its real batching (8 per device step, grad_accum 2)."""
    import torch

    from factory.train.sft import run_sft

    ctx = env["context"](shape, "1_sft", {"max_steps": steps, "save_steps": 10_000, "logging_steps": 1})
    free_memory()
    t = time.time()
    model, _, _ = run_sft(ctx)
    seconds = time.time() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    del model
    free_memory()
    return {"shape": shape, "stage": "1_sft", "steps": steps, "batch_size": ctx.stage.batch_size,
            "grad_accum": ctx.stage.grad_accum, "max_length": ctx.stage.max_length, "seconds": round(seconds, 1),
            "peak_gib": round(peak, 2)}


def fidelity(env: dict, shape: str, tokens: int) -> dict:
    from benchmarks.method_gpu import sampler_fidelity

    ctx = env["context"](shape, "4_clgrpo", {"parent": None, "save_steps": 10_000})
    t = time.time()
    # a fresh adapter (B = 0) would make the copy the policy's exact dequantized weights: draw B instead
    out = sampler_fidelity(ctx, 2, env["generations"], tokens, random_b=0.02)
    return {"shape": shape, **out, "seconds": round(time.time() - t, 1)}


def comparisons(rows: list[dict]) -> list[dict]:
    """trl vs each of our cases (dense, fused) for every setting measured both ways, and each of ours against
    plain ``generate`` on the same copy."""
    out = []
    key = lambda r: (r["shape"], r["prompts"], r["completion"])  # noqa: E731
    trl = {key(r): r for r in rows if r.get("path") == "trl" and r.get("generation_s")}
    for r in rows:
        if r.get("path") == "trl" or not r.get("generation_s"):
            continue
        c = {"shape": r["shape"], "path": r["path"], "setting": f"{r['prompts']}x{r['completion']}"
             + ("" if r.get("checkpointing", True) else " no-gc")}
        ref = r.get("generate_reference")
        if ref:
            c["rollout_vs_generate"] = round(ref["tokens_per_s"] / r["rollout_tokens_per_s"]["median"], 2)
        if key(r) in trl:
            t = trl[key(r)]
            c["generation_step_speedup"] = round(t["generation_s"]["median"] / r["generation_s"]["median"], 1)
            c["whole_step_speedup"] = round(t["whole_cycle_s"]["median"] / r["whole_cycle_s"]["median"], 1)
        out.append(c)
    return out


def targets(rows: list[dict], memory: list[dict], comps: list[dict]) -> dict:
    """Each target of the issue: met or not, with the figure; absent when its figures were not measured."""
    met = {}
    for c in comps:
        where = f"{c.get('path', 'dense')}, {c['shape']} {c['setting']}"
        if "generation_step_speedup" in c:
            met[f"generation step ≥ {TARGETS['generation_step_speedup']:g}x trl ({where})"] = [
                c["generation_step_speedup"], c["generation_step_speedup"] >= TARGETS["generation_step_speedup"]]
            met[f"whole step ≥ {TARGETS['whole_step_speedup']:g}x trl ({where})"] = [
                c["whole_step_speedup"], c["whole_step_speedup"] >= TARGETS["whole_step_speedup"]]
        if "rollout_vs_generate" in c:
            met[f"rollout within {TARGETS['rollout_vs_generate_max_ratio']:g}x of generate ({where})"] = [
                c["rollout_vs_generate"], c["rollout_vs_generate"] <= TARGETS["rollout_vs_generate_max_ratio"]]
    for shape, (prompts, tokens) in MEMORY_SETTING.items():
        runs = [r for r in rows if r["shape"] == shape and r.get("path") != "trl"
                and (r["prompts"], r["completion"]) == (prompts, tokens)] + [m for m in memory if m["shape"] == shape]
        if runs:  # a run that failed (out of memory, say) misses the target
            peak = max(r.get("peak_gib", float("inf")) for r in runs)
            met[f"{shape} stages ≤ {TARGETS[shape]:g} GiB at {prompts}x{tokens}"] = [peak, peak <= TARGETS[shape]]
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated SHAPE:PATH:PxL[:mb=N][:rb=N][:gc=0|1][:st=N] (default: the matrix of "
                        "--shapes × --paths × --prompts × --completions)")
    parser.add_argument("--shapes", default="internvl3-1b-shape,internvl3-2b-shape")
    parser.add_argument("--paths", default="trl,dense,fused")
    parser.add_argument("--prompts", default="8,16", help="prompts per optimizer step")
    parser.add_argument("--completions", default="512,1024", help="completion lengths")
    parser.add_argument("--generations", type=int, default=8, help="G")
    parser.add_argument("--steady", type=int, default=5, help="generation cycles measured after the warm-up")
    parser.add_argument("--sft-steps", type=int, default=3, help="SFT steps per shape for its peak memory (0: none)")
    parser.add_argument("--reference-repeats", type=int, default=2,
                        help="timed plain-generate calls per dense case (0: none)")
    parser.add_argument("--fidelity-tokens", type=int, default=256, help="per sequence (0: no fidelity check)")
    parser.add_argument("--tokenizer", default="real", choices=["real", "small"])
    parser.add_argument("--budget-s", type=float, help="start no new measurement after this many seconds")
    parser.add_argument("--workdir", default="/tmp/svlm_train_gpu")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.cases:
        cases = [parse_case(c) for c in args.cases.split(",")]
    else:
        cases = [parse_case(f"{s}:{p}:{n}x{L}") for s in args.shapes.split(",") for n in args.prompts.split(",")
                 for L in args.completions.split(",") for p in args.paths.split(",")]

    bad = [c for c in cases if (c["prompts"] * args.generations) % c["micro_batch"]]
    if bad:  # before any model is built: a lease must not pay for a typo
        raise SystemExit(f"prompts × G must be a multiple of mb in {bad}")

    import torch

    from factory.cot.build import CotConfig, build
    from factory.data.synth import SynthConfig, generate
    from factory.models import ModelConfig
    from factory.train.common import StageContext
    from factory.train.runner import LoraSettings, TrainConfig, TrainOptions, base_source

    began = time.time()
    cuda = torch.cuda.is_available()
    if not cuda:  # a CPU run only checks the code path (use tiny shapes)
        print("no CUDA: a dry run of the code path; the figures mean nothing", file=sys.stderr)
    work = Path(args.workdir)
    data, cot = work / "data", work / "cot"
    generate(SynthConfig(out=str(data), n=160, image_size=160), progress=False)
    build(CotConfig(data=str(data), split="train", out=str(cot)), progress=False)
    bases: dict[str, str] = {}

    def context(shape: str, name: str, stage: dict, checkpointing: bool | None = None) -> StageContext:
        import shutil

        cfg = TrainConfig(name=shape, output_dir=str(work), data=str(data), cot=str(cot),
                          model=ModelConfig(size=shape, tokenizer=args.tokenizer),
                          train=TrainOptions(quantization="nf4", lora=LoraSettings(r=16, alpha=32),
                                             gradient_checkpointing=checkpointing, stages={name: stage}))
        if shape not in bases:
            t = time.time()
            bases[shape] = base_source(cfg)
            built.append({"shape": shape, "base_build_s": round(time.time() - t, 1)})
        out = work / shape / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return StageContext(name, cfg.stage(name), cfg, out, bases[shape], data, cot, progress=False)

    env = {"context": context, "generations": args.generations, "reference_repeats": args.reference_repeats}
    built: list[dict] = []
    rows, memory, fidelities, skipped = [], [], [], []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(name: str) -> dict:
        comps = comparisons(rows)
        result = {
            "command": "python -m benchmarks.train_gpu " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)", "torch": torch.__version__,
            "python": platform.python_version(), "setting": f"G={args.generations}, nf4 QLoRA r16 (fp32 LoRA "
            f"weights), stage 4 (ClipLow, num_iterations 2), {args.tokenizer} tokenizer, random weights",
            "bases": built, "rows": rows, "sft_memory": memory, "sampler_fidelity": fidelities,
            "comparisons": comps, "targets": targets(rows, memory, comps), "skipped_for_budget": skipped,
            "seconds": round(time.time() - began, 1)}
        from factory.files import write_json

        write_json(out / name, result, indent=2)
        return result

    def attempt(into: list, what: dict, measure) -> None:
        """A failed measurement (out of memory, say) is a result too: recorded, and the run goes on."""
        try:
            into.append(measure())
        except Exception as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            into.append({**what, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            free_memory()

    def within_budget(what: str) -> bool:
        if args.budget_s is not None and time.time() - began > args.budget_s:
            skipped.append(what)
            return False
        return True

    # the order spends a short lease on what matters most: ours at the 1B setting, trl beside it, then 2B
    first = cases[0]["shape"]
    cases.sort(key=lambda c: (c["shape"] != first, c["path"] == "trl"))
    for shape in dict.fromkeys(c["shape"] for c in cases):
        for case in [c for c in cases if c["shape"] == shape]:
            if within_budget(f"case {case}"):
                steady = case["steady"] if case["steady"] is not None else args.steady
                attempt(rows, case, lambda: grpo_case(env, case, steady))
                save("train_gpu_partial.json")
        if args.fidelity_tokens and within_budget(f"fidelity {shape}"):
            attempt(fidelities, {"shape": shape}, lambda: fidelity(env, shape, args.fidelity_tokens))
        if args.sft_steps and within_budget(f"sft memory {shape}"):
            attempt(memory, {"shape": shape, "stage": "1_sft"}, lambda: sft_memory(env, shape, args.sft_steps))
        save("train_gpu_partial.json")
    result = save("train_gpu.json" if cuda else "train_gpu_cpu_dryrun.json")

    print(f"\n{result['device']} | {result['setting']}")
    print(f"{'shape':<19} {'path':<5} {'PxL':>8} {'mb/rb/gc':>9} {'step s':>7} {'gen s':>7} {'rest s':>7} "
          f"{'tok/s':>7} {'peak GiB':>8} {'compile s':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:<19} {r['path']:<5} {r['prompts']}x{r['completion']:<6} FAILED {r['error'][:80]}")
            continue
        if not r["generation_s"]:
            print(f"{r['shape']:<19} {r['path']:<5} {r['prompts']}x{r['completion']:<6} (no steady cycle)")
            continue
        print(f"{r['shape']:<19} {r['path']:<5} {str(r['prompts']) + 'x' + str(r['completion']):>8} "
              f"{'/'.join([str(r['micro_batch']), str(r['rollout_batch'] or '-'), 'on' if r['checkpointing'] else 'off']):>9} "
              f"{r['whole_cycle_s']['median']:>7.2f} "
              f"{r['generation_s']['median']:>7.2f} {r['rest_s']['median']:>7.2f} "
              f"{r['rollout_tokens_per_s']['median']:>7.0f} {r['peak_gib']:>8.2f} {r.get('compile_s', float('nan')):>9.1f}")
    for r in rows:
        if r.get("path") == "fused" and "error" not in r:
            print(f"{r['shape']:<19} fused step: {r['compiled_graphs']} compiled graph(s), "
                  f"{r['cudagraph_skips']} CUDA-graph skip(s)")
    for m in memory:
        if "error" in m:
            print(f"{m['shape']:<19} sft   FAILED {m['error'][:80]}")
            continue
        print(f"{m['shape']:<19} sft   batch {m['batch_size']}x{m['grad_accum']}, peak {m['peak_gib']:.2f} GiB")
    for f in fidelities:
        if "error" in f:
            print(f"{f['shape']:<19} fidelity FAILED {f['error'][:80]}")
            continue
        print(f"{f['shape']:<19} fidelity: |Δlogp| mean {f['abs_dlogp_mean']:.2e}, KL mean {f['kl_mean']:.2e}")
    for name, (value, ok) in result["targets"].items():
        print(f"{'MET ' if ok else 'MISS'} {name}: {value}")
    if skipped:
        print(f"skipped for the time budget: {skipped}")
    print(f"written to {out / ('train_gpu.json' if cuda else 'train_gpu_cpu_dryrun.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
