"""``svlm-infer``: run a package on images from the shell, with the runtime alone (no torch).

    svlm-infer runs/default/export/int8 photo.jpg             # label, probabilities, reasoning, timings
    svlm-infer PACKAGE a.jpg b.jpg --json                     # one JSON object per image, one per line
    svlm-infer PACKAGE a.jpg --stream --threads 2             # the answer as it is generated

A package that is missing, damaged or altered is one line on stderr and exit 2, before any image runs. An
image that cannot be read is one line on stderr; the other images still run, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from svlm_runtime import __version__
from svlm_runtime.package import Generation, Package, PackageError

PROG = "svlm-infer"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Classify the emotion an image evokes with an exported SVLM package: prints "
        "the label, every label's probability, the model's reasoning, time to first token and tokens/s.",
        epilog="Exit status: 0 when every image ran, 2 when the package or an image could not be read.")
    parser.add_argument("package", type=Path, metavar="PACKAGE",
                        help="the package folder (manifest.json, *.onnx, tokenizer.json)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per image (one per line) instead of text")
    parser.add_argument("--stream", action="store_true",
                        help="print the answer as it is generated (to stderr with --json, keeping stdout JSON)")
    parser.add_argument("--threads", type=_positive, metavar="N",
                        help="onnxruntime threads per graph (default: onnxruntime's choice, all cores)")
    parser.add_argument("--max-new-tokens", type=_positive, default=160, metavar="N",
                        help="stop the answer after N tokens (default 160)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the files' sha256 check on load (sizes are still checked; faster for large "
                        "packages)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def result_record(image: str, result: Generation, pkg: Package) -> dict:
    """What ``--json`` prints for one image: the generation's fields and the reasoning, times in seconds."""
    return {
        "image": image,
        "label": result.label,
        "well_formed": result.well_formed,
        "label_probs": result.label_probs,
        "label_probs_forced": result.label_probs_forced,
        "reasoning": pkg.answer_format.reasoning(result.text),
        "text": result.text,
        "token_ids": result.token_ids,
        "stopped": result.stopped,
        "ttft_s": result.ttft_s,
        "tokens_per_s": result.tokens_per_s,
        "decode_s": result.decode_s,
        "preprocess_s": result.preprocess_s,
        "vision_s": result.vision_s,
        "label_s": result.label_s,
    }


def _text_report(record: dict) -> str:
    """The human form: label, probabilities (most likely first), reasoning, timings."""
    label = record["label"] or "no valid answer"
    probs = sorted(record["label_probs"].items(), key=lambda kv: -kv[1])
    forced = " (forced: no valid answer, scored after the reasoning)" if record["label_probs_forced"] else ""
    lines = [f"{record['image']}: {label}",
             "  probabilities: " + "  ".join(f"{lab} {p:.3f}" for lab, p in probs) + forced,
             f"  reasoning: {record['reasoning'] or '-'}"]
    if not record["well_formed"]:
        lines.append(f"  answer (not well formed): {record['text']!r}")
    lines.append(f"  time to first token {record['ttft_s']:.3f} s · {record['tokens_per_s']:.1f} tokens/s · "
                 f"{len(record['token_ids'])} tokens ({record['stopped']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pkg = Package(args.package, threads=args.threads, verify=not args.no_verify)
    except PackageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    stream_to = sys.stderr if args.json else sys.stdout
    failed = 0
    for image in args.images:
        if args.stream and not args.json:
            print(f"{image}: ", end="", flush=True)

        def on_text(delta: str) -> None:
            stream_to.write(delta)
            stream_to.flush()

        try:
            result = pkg.generate(image, max_new_tokens=args.max_new_tokens, on_text=on_text if args.stream else None)
        except ValueError as exc:  # not an image, unreadable, over the pixel limit
            if args.stream and not args.json:
                print(flush=True)  # end the "image: " line the stream began
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except PackageError as exc:  # the graphs and the manifest disagree (e.g. image slots)
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        if args.stream:
            stream_to.write("\n")
        record = result_record(image, result, pkg)
        print(json.dumps(record) if args.json else _text_report(record), flush=True)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
