"""Where an exported package's time to first token goes on this CPU, and what would cut it.

    python -m benchmarks.edge_profile --packages OUT/fp32 OUT/int8 OUT/int4 --images a.jpg b.jpg --out DIR

Per package and thread count (p50 over runs): image preprocessing, the vision graph, the prefill (token
embeddings + the decoder over the whole prompt) and one decode step. Then, for the last package: the
decoder's prefill with fewer image tokens in the prompt (what a smaller input image would give), and
onnxruntime's own per-operator profile of one vision run and one prefill, grouped by operator type with
the costliest nodes. Writes ``profile.json`` and ``profile.md`` into ``--out``; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from factory.files import write_report

import numpy as np


def _p50(values: list[float]) -> float:
    return float(statistics.median(values))


def stage_times(package: str, images: list[str], runs: int, threads: int) -> dict:
    """p50 seconds of each part of the time to first token, in one process."""
    from svlm_runtime.package import Package

    pkg = Package(package, threads=threads)
    parts = defaultdict(list)
    n = pkg.prompt_ids.shape[0]
    for i in range(runs + 1):  # the first run warms up
        image = images[i % len(images)]
        t0 = time.perf_counter()
        pv = pkg.pixel_values(image)
        t1 = time.perf_counter()
        feats = pkg.vision.run(None, {"pixel_values": pv})[0]
        t2 = time.perf_counter()
        logits, past = pkg.prefill(feats)
        t3 = time.perf_counter()
        token = int(np.argmax(logits[0, -1]))
        emb = pkg.embed.run(None, {"input_ids": np.array([[token]], np.int64)})[0]
        pkg._decode(emb, np.ones((1, n + 1), np.int64), np.array([[n]], np.int64), past)
        t4 = time.perf_counter()
        if i:
            for key, value in zip(("preprocess", "vision", "prefill", "decode_step"),
                                  (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(value)
    out = {key: _p50(v) for key, v in parts.items()}
    out["ttft"] = out["preprocess"] + out["vision"] + out["prefill"]
    out["prompt_tokens"] = int(n)
    out["image_tokens"] = int((pkg.prompt_ids == pkg.image_token_id).sum())
    return out


def prefill_by_image_tokens(package: str, runs: int, threads: int, counts: list[int]) -> dict:
    """The decoder's prefill time for the same prompt with ``k`` image tokens instead of all of them."""
    from svlm_runtime.package import Package

    pkg = Package(package, threads=threads)
    n = pkg.prompt_ids.shape[0]
    text_tokens = n - int((pkg.prompt_ids == pkg.image_token_id).sum())
    rng = np.random.default_rng(0)
    past = [np.zeros((1, pkg.dims["kv_heads"], 0, pkg.dims["head_dim"]), np.float32) for _ in pkg.past_names]
    out = {}
    for k in counts:
        length = text_tokens + k
        emb = (rng.standard_normal((1, length, pkg.dims["hidden"])) * 0.02).astype(np.float32)
        times = []
        for i in range(runs + 1):
            t = time.perf_counter()
            pkg._decode(emb, np.ones((1, length), np.int64), np.arange(length, dtype=np.int64)[None], past)
            if i:
                times.append(time.perf_counter() - t)
        out[str(k)] = {"prompt_tokens": length, "prefill_s": _p50(times)}
    return out


def op_profile(package: str, image: str, threads: int, top: int = 6) -> dict:
    """onnxruntime's per-node profile of one vision run and one prefill (after a warm-up run)."""
    import onnxruntime as ort

    from svlm_runtime.package import Package

    pkg = Package(package, threads=threads)
    pv = pkg.pixel_values(image)
    feats = pkg.vision.run(None, {"pixel_values": pv})[0]
    pkg.prefill(feats)
    result = {}
    for name, graph in (("vision", pkg.manifest["graphs"]["vision"]), ("prefill", pkg.manifest["graphs"]["decoder"])):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.log_severity_level = 3
        opts.profile_file_prefix = f"/tmp/svlm_profile_{name}"
        session = ort.InferenceSession(str(pkg.root / graph), opts, providers=["CPUExecutionProvider"])
        if name == "vision":
            session.run(None, {"pixel_values": pv})
        else:
            pkg.decoder, saved = session, pkg.decoder
            try:
                pkg.prefill(feats)
            finally:
                pkg.decoder = saved
        events = json.loads(Path(session.end_profiling()).read_text())
        by_op, nodes = defaultdict(float), []
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                op = e["args"].get("op_name", "?")
                by_op[op] += e["dur"] / 1e6
                nodes.append((e["dur"] / 1e6, e["name"].removesuffix("_kernel_time"), op,
                              e["args"].get("output_type_shape")))
        total = sum(by_op.values())
        result[name] = {"total_s": total,
                        "by_op": {op: {"s": s, "share": s / total} for op, s in
                                  sorted(by_op.items(), key=lambda kv: -kv[1])[:top]},
                        "top_nodes": [{"s": s, "node": node, "op": op, "output": shape}
                                      for s, node, op, shape in sorted(nodes, key=lambda n: -n[0])[:top]]}
    return result


def markdown(report: dict) -> str:
    lines = ["# Time to first token, by part (p50 seconds)", "",
             "| package | threads | preprocess | vision | prefill | TTFT | one decode step | prompt / image tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["stages"]:
        lines.append(f"| {row['package']} | {row['threads']} | {row['preprocess']:.3f} | {row['vision']:.3f} | "
                     f"{row['prefill']:.3f} | {row['ttft']:.3f} | {row['decode_step']:.3f} | "
                     f"{row['prompt_tokens']} / {row['image_tokens']} |")
    scaling = report["prefill_by_image_tokens"]
    lines += ["", f"Prefill of `{report['scaling_package']}` with fewer image tokens "
              f"({report['scaling_threads']} threads):", "", "| image tokens | prompt tokens | prefill s |",
              "|---|---|---|"]
    lines += [f"| {k} | {v['prompt_tokens']} | {v['prefill_s']:.3f} |" for k, v in scaling.items()]
    for part, prof in report["op_profile"].items():
        lines += ["", f"onnxruntime profile of one {part} run of `{report['scaling_package']}` "
                  f"({prof['total_s']:.3f} s in kernels):", "", "| operator | seconds | share |", "|---|---|---|"]
        lines += [f"| {op} | {v['s']:.3f} | {v['share']:.0%} |" for op, v in prof["by_op"].items()]
        lines += ["", "| costliest node | operator | output | seconds |", "|---|---|---|---|"]
        lines += [f"| `{n['node']}` | {n['op']} | {n['output']} | {n['s']:.3f} |" for n in prof["top_nodes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", nargs="+", required=True)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--image-tokens", nargs="+", type=int, default=[0, 64, 144, 256],
                        help="image token counts for the prefill scaling (256: 448², 64: 224²)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    stages = [{"package": Path(p).name, "threads": t, **stage_times(p, args.images, args.runs, t)}
              for p in args.packages for t in args.threads]
    last, threads = args.packages[-1], max(args.threads)
    import shlex
    import sys

    command = "python -m benchmarks.edge_profile " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = {"command": command, "stages": stages,
              "scaling_package": Path(last).name, "scaling_threads": threads,
              "prefill_by_image_tokens": prefill_by_image_tokens(last, args.runs, threads, args.image_tokens),
              "op_profile": op_profile(last, args.images[0], threads)}
    write_report(args.out, "profile", report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
