"""``svlm bench latency``: per-image latency, throughput, size and memory on this machine.

Each model runs in its own process, so its peak RSS is its own: warm-up runs, then N timed runs over a few
images; p50 / p95 of preprocessing, vision encoding, time to first token, decode tokens/s and end-to-end
seconds. Writes ``latency.json``, ``latency.md`` and, when ``accuracy.json`` sits in the same folder, a
latency-vs-accuracy scatter plot.

    python -m benchmarks.latency --one runs/default/export/int8 --images a.jpg b.jpg --json row.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from factory.files import write_report


def sample_images(data: str | Path, split: str, n: int, task=None) -> list[str]:
    """``n`` image paths spread evenly over a split of ``task`` (default EmoSet; the split files list images
    class by class)."""
    from factory.data.emoset import read_split
    from factory.errors import SVLMError

    records = read_split(data, split, task=task, strict=False, check_images="header").records
    if not records:
        raise SVLMError(f"no images in {data} {split}")
    step = max(1, len(records) // n)
    return [str(r.image_path) for r in records[::step][:n]]


def _pct(values: list[float]) -> dict:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def measure_one(spec: str, images: list[str], runs: int, warmup: int, threads: int | None,
                max_new_tokens: int, low_memory: bool = False) -> dict:
    """Time one model in this process."""
    from factory.inference import open_model

    model = open_model(spec, threads=threads, low_memory=low_memory)
    for i in range(warmup):
        model.generate(images[i % len(images)], max_new_tokens=max_new_tokens, label_probs=False)
    answers = [model.generate(images[i % len(images)], max_new_tokens=max_new_tokens, label_probs=False)
               for i in range(runs)]
    return {
        "model": model.name, "path": spec, "kind": model.kind, "size_mb": round(model.size_bytes / 1e6, 3),
        "runs": runs, "warmup": warmup, "threads": threads, "max_new_tokens": max_new_tokens,
        "low_memory": low_memory and model.kind == "onnx",
        "tokens_mean": sum(a.tokens for a in answers) / len(answers),
        "preprocess_s": _pct([a.preprocess_s for a in answers]),
        "vision_s": _pct([a.vision_s for a in answers]),
        "ttft_s": _pct([a.ttft_s for a in answers]),
        "decode_tokens_per_s": _pct([a.tokens_per_s for a in answers]),
        "e2e_s": _pct([a.ttft_s + a.decode_s for a in answers]),
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (the key keeps its old name "mb"). Linux's VmHWM starts
    afresh at exec; ru_maxrss does not (a child started from a large parent reports the parent's peak), so it
    is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run(models: list[str], images: list[str], out: str | Path = "bench", runs: int = 5, warmup: int = 2,
        threads: int | None = None, max_new_tokens: int = 160, command: str | None = None,
        low_memory: bool = False) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in models:
        with tempfile.TemporaryDirectory() as tmp:
            row_path = Path(tmp) / "row.json"
            cmd = [sys.executable, "-m", "benchmarks.latency", "--one", str(spec), "--images", *map(str, images),
                   "--runs", str(runs), "--warmup", str(warmup), "--max-new-tokens", str(max_new_tokens),
                   "--json", str(row_path)] + (["--threads", str(threads)] if threads else []) \
                + (["--low-memory"] if low_memory else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                from factory.errors import SVLMError

                raise SVLMError(f"latency run of {spec} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(row_path.read_text()))
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": _cpus(), "python": platform.python_version()},
              "command": command, "images": [str(i) for i in images], "models": rows}
    write(report, out)
    return report


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def markdown(report: dict) -> str:
    lines = [f"# Latency on {report['machine']['cpus']} CPU cores ({report['machine']['platform']})", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += ["| model | size MB | preprocess p50 | vision p50 | TTFT p50 / p95 | decode tok/s p50 | "
              "end-to-end p50 / p95 | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in report["models"]:
        lines.append(
            f"| {r['model']}{' (low memory)' if r.get('low_memory') else ''} | {r['size_mb']:.1f} | "
            f"{r['preprocess_s']['p50'] * 1e3:.1f} ms | "
            f"{r['vision_s']['p50'] * 1e3:.1f} ms | {r['ttft_s']['p50'] * 1e3:.0f} / {r['ttft_s']['p95'] * 1e3:.0f} ms | "
            f"{r['decode_tokens_per_s']['p50']:.0f} | {r['e2e_s']['p50']:.2f} / {r['e2e_s']['p95']:.2f} s | "
            f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    write_report(out, "latency", report, markdown(report))
    acc_path = out / "accuracy.json"
    if not acc_path.is_file():
        return
    accuracy = {r["path"]: r["accuracy"] for r in json.loads(acc_path.read_text())["models"]}
    points = [(r["e2e_s"]["p50"], accuracy[r["path"]], r["model"]) for r in report["models"] if r["path"] in accuracy]
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for x, y, name in points:  # a legend, not annotations: variants of one stage share an accuracy
        ax.scatter(x, y, s=60, label=f"{name} ({x:.2f} s, {y:.1%})")
    ax.legend(fontsize=7)
    ax.set_xlim(left=0)
    ax.set_xlabel("end-to-end seconds per image (p50)")
    ax.set_ylabel("accuracy")
    ax.set_title("latency vs accuracy")
    fig.tight_layout()
    fig.savefig(out / "latency_vs_accuracy.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="time one model (used by svlm bench latency, one process per model)")
    p.add_argument("--one", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--json", required=True)
    p.add_argument("--low-memory", action="store_true")
    a = p.parse_args(argv)
    row = measure_one(a.one, a.images, a.runs, a.warmup, a.threads, a.max_new_tokens, a.low_memory)
    Path(a.json).write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
