"""Rollout decoding alone: tokens/s of ``generate`` (static cache; compiled forward on CUDA) against the fused
step (``factory/train/decode.py``; one CUDA-graph replay per token on CUDA), on one random-weight model at a
rollout's batch. Seconds, not minutes, per case: the first figure a lent GPU should give for issue 19, before
the whole GRPO step (``benchmarks/train_gpu.py``).

    python -m benchmarks.rollout_decode --shape internvl3-1b-shape --batch 64 --tokens 512   # on a GPU
    python -m benchmarks.rollout_decode --shape tiny --batch 16 --tokens 64 --threads 1     # on a CPU

Every sequence runs to ``--tokens`` (``min_new_tokens``), sampled at temperature 1 with trl's options
(top_k 0, the image token suppressed), so both decoders do the same work. Per decoder: one untimed call
(compilation, CUDA-graph capture; its time is reported as ``first_s``), then ``--repeats`` timed calls
(median, min, max). Writes ``rollout_decode_<device>.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path


def measure(decode, inputs, config, repeats: int, sync) -> dict:
    """First-call seconds, then the median/min/max of ``repeats`` timed calls, and tokens/s at the median."""
    from benchmarks.train_gpu import summary

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = decode(inputs, config)
        sync()
        times.append(time.perf_counter() - start)
    tokens = (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
    return {"first_s": round(times[0], 3), "seconds": summary(times[1:]), "tokens": tokens,
            "tokens_per_s": round(tokens / statistics.median(times[1:]), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="internvl")
    parser.add_argument("--shape", default="internvl3-1b-shape", help="model size (factory.families.MODEL_SIZES)")
    parser.add_argument("--tokenizer", default="real", choices=["real", "small"])
    parser.add_argument("--batch", type=int, default=64, help="sequences decoded at once (prompts × G)")
    parser.add_argument("--tokens", type=int, default=512, help="completion tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.tokens < 2 or args.repeats < 1:
        raise SystemExit("--batch ≥ 1, --tokens ≥ 2 and --repeats ≥ 1")

    import torch
    from transformers import GenerationConfig

    from export.build import probe_inputs
    from factory.families import get_family
    from factory.files import write_json
    from factory.tiny import build_tiny
    from factory.train.decode import FusedDecoder, compile_counts, compile_options

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    model, processor = build_tiny(args.family, args.shape, tokenizer=args.tokenizer)
    model.to(device=device, dtype=dtype).eval()
    get_family(args.family).apply_image_policy(processor)
    inputs = probe_inputs(processor, args.batch, side=448).to(device)  # one question, so no padding
    image_token = getattr(model.config, "image_token_id", None)
    config = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=True,
                              temperature=1.0, top_p=1.0, top_k=0, cache_implementation="static",
                              suppress_tokens=[image_token] if image_token is not None else None,
                              pad_token_id=processor.tokenizer.pad_token_id,
                              eos_token_id=model.generation_config.eos_token_id)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    fused = FusedDecoder(model, compile=compile_options(device))
    # fused first: on a short lease its figure is the one that matters
    decoders = {"fused": lambda x, c: fused.generate(generation_config=c, **x),
                "generate": lambda x, c: model.generate(**x, generation_config=c)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rollout_decode_{device}.json"
    result = {
        "command": "python -m benchmarks.rollout_decode " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "python": platform.python_version(),
        "setting": f"{args.family} {args.shape}, {args.tokenizer} tokenizer, random weights, {dtype}, batch "
                   f"{args.batch} × {args.tokens} tokens, prompt {inputs['input_ids'].shape[1]} tokens",
        "decoders": {}}
    print(f"{result['device']} | {result['setting']}", flush=True)
    from torch._dynamo.utils import counters

    counters.clear()  # the graphs and CUDA-graph skips counted are this run's (a skip is silently slower)
    with torch.no_grad():
        for name, decode in decoders.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            row = result["decoders"][name] = measure(decode, inputs, config, args.repeats, sync)
            if cuda:
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if name == "fused":
                first, second = (fused.generate(generation_config=config, **inputs) for _ in range(2))
                row.update(compile_counts(), sampled_calls_differ=not bool((first == second).all()))
            write_json(path, result, indent=2)  # after each decoder: a run cut short keeps what it measured
            s = row["seconds"]
            print(f"{name:<9} {row['tokens_per_s']:>9.0f} tokens/s  median {s['median']:.3f} s "
                  f"[{s['min']:.3f}–{s['max']:.3f}]  first call {row['first_s']:.1f} s", flush=True)
    rows = result["decoders"]
    result["fused_vs_generate"] = round(rows["fused"]["tokens_per_s"] / rows["generate"]["tokens_per_s"], 2)
    write_json(path, result, indent=2)
    fused_row = rows["fused"]
    print(f"fused: {fused_row['compiled_graphs']} compiled graph(s), CUDA-graph skips: {fused_row['cudagraph_skips']}, "
          f"two sampled calls differ: {fused_row['sampled_calls_differ']}")
    print(f"fused / generate: {result['fused_vs_generate']}x  -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
