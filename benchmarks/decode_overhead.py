"""The decode loop's own cost: time per generated token spent outside onnxruntime's ``session.run``.

    python -m benchmarks.decode_overhead --packages runs/default/export/int4 --images img.jpg --tokens 64

Every run of the embed and decoder sessions is timed through a thin proxy; in the decode phase (one token per
call) their sum is the time in onnxruntime, and the rest of the phase's wall time is the loop's own work:
sampling over the vocabulary, re-decoding the text for streaming, feeding the KV cache back as numpy
arrays. Issue 14's budget is 10 % of the decoder's time. Writes ``decode_overhead.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from factory.files import write_report


class _Timed:
    """Forwards to an onnxruntime session and records (tokens in the call, seconds) for every run."""

    def __init__(self, session, calls: list):
        self._session, self._calls = session, calls

    def run(self, names, feed):
        t = time.perf_counter()
        out = self._session.run(names, feed)
        first = next(iter(feed.values()))
        self._calls.append((first.shape[1] if first.ndim > 1 else 0, time.perf_counter() - t))
        return out

    def __getattr__(self, name):
        return getattr(self._session, name)


def measure(package: str, images: list[str], tokens: int, runs: int, threads: int) -> dict:
    from svlm_runtime import Package

    pkg = Package(package, threads=threads, verify=False)
    calls: list = []
    pkg.embed, pkg.decoder = _Timed(pkg.embed, calls), _Timed(pkg.decoder, calls)
    per_token, in_ort, totals = [], [], [0.0, 0.0]  # totals: decode-phase wall and onnxruntime seconds
    for i in range(runs + 1):
        for image in images:
            calls.clear()
            gen = pkg.generate(image, max_new_tokens=tokens, label_probs=False)
            steps = [dur for n, dur in calls if n == 1]  # decode-phase embed + decoder runs (one token each)
            n = max(len(gen.token_ids), 1)
            if not i:  # warm-up
                continue
            ort_s = sum(steps)
            per_token.append(gen.decode_s / n)
            in_ort.append(ort_s / n)
            totals[0] += gen.decode_s
            totals[1] += ort_s
    p50 = statistics.median
    return {"package": package, "threads": threads, "tokens": tokens, "runs": runs * len(images),
            "decode_ms_per_token": 1e3 * p50(per_token), "ort_ms_per_token": 1e3 * p50(in_ort),
            "overhead_ms_per_token": 1e3 * (p50(per_token) - p50(in_ort)),
            "overhead_vs_ort": (totals[0] - totals[1]) / totals[1]}  # over all timed runs


def markdown(rows: list[dict]) -> str:
    lines = ["# Decode loop overhead (p50 per generated token)", "",
             "| package | threads | decode ms/token | in onnxruntime | outside (loop) | outside / onnxruntime |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['package']}` | {r['threads']} | {r['decode_ms_per_token']:.2f} | "
                     f"{r['ort_ms_per_token']:.2f} | {r['overhead_ms_per_token']:.2f} | {r['overhead_vs_ort']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packages", nargs="+", required=True)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    ap.add_argument("--runs", type=int, default=3, help="timed passes over the images (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench")
    a = ap.parse_args(argv)
    rows = [measure(p, a.images, a.tokens, a.runs, a.threads) for p in a.packages]
    write_report(a.out, "decode_overhead", rows, markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
