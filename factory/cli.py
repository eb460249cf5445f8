"""The ``svlm`` command: one subcommand per step, ``svlm run`` for the whole chain.

Every subcommand that writes takes ``--config FILE`` and trailing ``key=value`` overrides; flags such as
``--n`` are shorthands for overrides. Errors a user can fix print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from factory import __version__
from factory import config as config_lib
from svlm_runtime.package import PackageError  # numpy only: cheap, torch-free
from factory.errors import SVLMError

EPILOG_OVERRIDES = ("Trailing key=value pairs override config keys (dotted for nested sections, e.g. data.synth.n=400). "
                    "task=NAME picks the task (labels, questions, answer rule): `svlm tasks` lists them.")


def _at_least(low: int):
    """An argparse type: an integer ≥ ``low`` (argparse reports a bad one as a usage error, exit 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"  # argparse names the type in its "invalid … value" message
    return parse


def _overrides(args, mapping: dict[str, str]) -> list[str]:
    """Turn set flags into ``key=value`` overrides, flags first so explicit overrides win."""
    items = [f"{key}={json.dumps(getattr(args, attr))}" for attr, key in mapping.items()
             if getattr(args, attr, None) is not None]
    return items + list(args.overrides)


def cmd_data_synth(args) -> int:
    from factory.data.synth import SynthConfig, generate

    cfg = config_lib.load(SynthConfig, args.config, _overrides(args, {
        "out": "out", "n": "n", "seed": "seed", "image_size": "image_size", "ambiguity": "ambiguity",
        "label_noise": "label_noise", "face_prob": "face_prob"}), base={"out": "data/synth_emoset"})
    counts = generate(cfg, progress=not args.quiet, overwrite=args.overwrite)
    print(f"wrote synthetic EmoSet to {cfg.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_data_import(args) -> int:
    from factory.data.sources import ImportConfig, import_dataset
    from factory.errors import DataError

    aliases = {}
    for pair in args.alias or []:
        source, sep, label = pair.partition("=")
        if not sep or not source or not label:
            raise DataError(f"--alias takes SOURCE=LABEL, got {pair!r}")
        aliases[source.strip()] = label.strip()
    try:
        fractions = [float(x) for x in args.fractions.split(",")]
    except ValueError:
        raise DataError(f"--fractions takes three numbers, e.g. 0.8,0.1,0.1; got {args.fractions!r}") from None
    cfg = ImportConfig(source=args.source, path=args.path, out=args.out, image_column=args.image_column,
                       label_column=args.label_column, fractions=fractions, seed=args.seed, task=args.task,
                       aliases=aliases, strict=not args.lenient, overwrite=args.overwrite)
    report = import_dataset(cfg, progress=not args.quiet)
    print(f"imported {args.source} {args.path} into {args.out}: " + ", ".join(
        f"{k} {v}" for k, v in report["images"].items()) + f"; skipped {sum(s['items'] for s in report['skipped'])} "
        f"{report['skipped_by_kind'] or ''} (report: {Path(args.out) / 'import_report.json'})")
    return 0


def cmd_data_check(args) -> int:
    from factory.data.emoset import SPLITS, read_split

    from factory.errors import DataError

    root = Path(args.data)
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    splits = SPLITS if args.split == "all" else (args.split,)
    if args.split == "all" and not any((root / f"{s}.json").is_file() for s in SPLITS):
        raise DataError(f"{root} holds no split file ({', '.join(s + '.json' for s in SPLITS)})")
    failed = False
    seen: dict[str, str] = {}
    for split in splits:
        if args.split == "all" and not (Path(args.data) / f"{split}.json").is_file():
            print(f"{split}: no split file, skipped")
            continue
        result = read_split(args.data, split, task=args.task, strict=not args.lenient,
                            check_images=args.check_images, progress=not args.quiet)
        summary = result.summary()
        unlabelled = f" ({summary['unlabelled']} without a {args.task} label)" if summary["unlabelled"] else ""
        print(f"{split}: {summary['records']} records{unlabelled}; per class {summary['per_class']}; "
              f"skipped {summary['skipped']} {summary['skipped_by_kind'] or ''}; "
              f"warnings {summary['warnings_by_kind'] or 'none'}")
        for rec in result.records:
            if rec.image_id in seen and seen[rec.image_id] != split:
                print(f"warning: image id {rec.image_id} is in both {seen[rec.image_id]} and {split}")
                failed = failed or not args.lenient
            seen[rec.image_id] = split
        if args.report:
            path = Path(args.report)
            path = path / f"{split}.json" if len(splits) > 1 or path.suffix != ".json" else path
            print(f"  report: {result.write_report(path)}")
    return 1 if failed else 0


def cmd_model_tiny(args) -> int:
    from factory.tiny import save_tiny

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SVLMError(f"{out} is not empty; pass --overwrite to write into it")
    save_tiny(args.family, args.size, out, seed=args.seed, tokenizer=args.tokenizer)
    from factory.models import count_parameters, load_model

    loaded = load_model(out, dtype="float32", device="cpu")
    print(f"wrote {args.family}/{args.size} with the {args.tokenizer} tokenizer ({len(loaded.processor.tokenizer)} "
          f"tokens; {count_parameters(loaded.model) / 1e6:.2f}M parameters) to {out}")
    return 0


def cmd_model_list(args) -> int:
    from factory.families import DEFAULT_FAMILY, FAMILIES

    for fam in FAMILIES.values():
        mark = " (default)" if fam.name == DEFAULT_FAMILY else ""
        print(f"{fam.name}{mark}: {fam.model_class}; e.g. {', '.join(fam.hub_examples)}")
    return 0


def cmd_cot_build(args) -> int:
    from factory.cot.build import CotConfig, build

    cfg = config_lib.load(CotConfig, args.teachers, _overrides(args, {
        "data": "data", "task": "task", "split": "split", "out": "out", "limit": "limit"}))
    summary = build(cfg, progress=not args.quiet)
    print(f"{summary['images']} images, {summary['images_with_trace']} with a verified trace "
          f"({summary['image_acceptance_rate']:.1%}), {summary['traces']} traces; summary: {Path(cfg.out) / 'summary.md'}")
    return 0


def cmd_run(args) -> int:
    from factory.pipeline import RunConfig, run

    cfg = config_lib.load(RunConfig, args.config, _overrides(args, {"name": "name", "output_dir": "output_dir",
                                                                     "overwrite": "train.overwrite"}))
    run(cfg)
    return 0


def cmd_ablate(args) -> int:
    from factory.ablate import AblateConfig, run

    cfg = config_lib.load(AblateConfig, args.config, _overrides(args, {"run": "run", "name": "name"}))
    run(cfg, progress=not args.quiet)
    return 0


def cmd_train(args) -> int:
    from factory.pipeline import format_table
    from factory.train.runner import TrainConfig, train

    cfg = config_lib.load(TrainConfig, args.config, _overrides(args, {
        "name": "name", "output_dir": "output_dir", "data": "data", "cot": "cot", "stages": "train.select",
        "overwrite": "train.overwrite"}))
    results = train(cfg, progress=not args.quiet)
    print(format_table([{"stage": name, **done["eval"]} for name, done in results.items()]))
    return 0


def cmd_export(args) -> int:
    from export.build import ExportConfig, export
    from export.compare import agreement_text

    quant = args.quant.split(",") if args.quant else None
    cfg = config_lib.load(ExportConfig, args.config, _overrides(args, {
        "run": "run", "stage": "stage", "model": "model", "out": "out", "layout": "layout", "block_size": "block_size",
        "accuracy_level": "accuracy_level", "task": "task",
        "overwrite": "overwrite"}) + ([f"quant={json.dumps(quant)}"] if quant else []))
    manifests = export(cfg)
    for quant, m in manifests.items():  # every layout's manifest carries these validation figures
        v = m["validation"]
        print(f"{quant}: {m['size_bytes'] / 1e6:.2f} MB; max |Δlogits| vs PyTorch {v['max_abs_logit_diff']:.2e}; "
              f"greedy tokens identical {v['greedy_tokens_identical']:.0%}; labels agree: {agreement_text(v)}")
    return 0


def cmd_bench_accuracy(args) -> int:
    from benchmarks.accuracy import markdown, run

    report = run(args.models, args.data, args.split, args.limit, args.out, args.max_new_tokens, args.batch_size,
                 progress=not args.quiet, command=_command(), workers=args.workers, task=args.task)
    print(markdown(report))
    print(f"report: {Path(args.out) / 'accuracy.md'} (+ accuracy.json, confusion_*.png, per_class_recall.png)")
    return 0


def _command() -> str | None:
    """The command line that produced a benchmark, as typed (recorded beside its figures)."""
    import shlex

    return "svlm " + shlex.join(sys.argv[1:]) if Path(sys.argv[0]).name == "svlm" else None


def cmd_bench_latency(args) -> int:
    from benchmarks.latency import markdown, run, sample_images

    from benchmarks.accuracy import models_task

    images = sample_images(args.data, args.split, args.images, models_task(args.models, args.task))
    report = run(args.models, images, args.out, args.runs, args.warmup, args.threads, args.max_new_tokens,
                 command=_command(), low_memory=args.low_memory)
    print(markdown(report))
    print(f"report: {Path(args.out) / 'latency.md'} (+ latency.json, latency_vs_accuracy.png)")
    return 0


def cmd_demo(args) -> int:
    from demo.app import auth_from_env, launch

    auth = auth_from_env(args.auth_env)
    if args.share and auth is None:
        print("svlm demo: warning: --share opens a public link to this machine that anyone who has it can use; "
              "pass --auth-env VAR (VAR holding user:password) to ask for a password", file=sys.stderr)
    print(f"svlm demo on http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch(args.runs, args.model, args.host, args.port, args.share, auth=auth)
    return 0


def cmd_stages(args) -> int:
    from factory.train.stages import STAGES

    for name, stage in STAGES.items():
        extra = f" rewards {'+'.join(stage.rewards)}" if stage.rewards else ""
        if stage.clip_low:
            extra += f", clip [1-{stage.epsilon}, 1+{stage.epsilon_high}], num_iterations {stage.num_iterations}"
        print(f"{name}: {stage.kind} on {stage.data}, from {stage.parent or 'the base model'}{extra}")
    return 0


def cmd_tasks(args) -> int:
    from factory.tasks import load_task, new_task, shipped_tasks, task_path

    if args.new:
        labels = [x.strip() for x in (args.labels or "").split(",") if x.strip()]
        path = new_task(args.new, labels, args.noun, args.folder)
        print(f"wrote {path}; train it with: svlm run task={path} data.root=DATA "
              f"(import DATA with: svlm data import imagefolder ROOT --task {path} --out DATA)")
        return 0
    names = shipped_tasks() + sorted(p.stem for p in Path("configs/tasks").glob("*.yaml") if p.is_file()
                                     and p.stem not in shipped_tasks())
    for name in names:
        task = load_task(name)
        print(f"{name}: {len(task.labels)} labels ({', '.join(task.labels)}), labelled from {task.label_from}; "
              f"{task_path(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from factory.families import DEFAULT_FAMILY, FAMILIES, MODEL_SIZES
    from factory.models import TOKENIZERS

    parser = argparse.ArgumentParser(prog="svlm", description="SVLM Factory: CLGRPO training of small VLMs "
                                     "for visual emotion recognition, exported to quantized ONNX.")
    parser.add_argument("--version", action="version", version=f"svlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(subparsers, name, help_, func, overrides=False, config_flag=True):
        p = subparsers.add_parser(name, help=help_, description=help_,
                                  epilog=EPILOG_OVERRIDES if overrides else None)
        p.set_defaults(func=func)
        if overrides:
            if config_flag:
                p.add_argument("--config", help="YAML config file")
            p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    data = sub.add_parser("data", help="EmoSet data: synthesize, import, check").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND")
    p = add(data, "synth", "write a synthetic EmoSet in the official layout", cmd_data_synth, overrides=True)
    p.add_argument("--out", help="output folder (default data/synth_emoset)")
    p.add_argument("--n", type=int, help="total number of images (default 800)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--image-size", dest="image_size", type=int, help="image side in pixels (default 160)")
    p.add_argument("--ambiguity", type=float, help="chance a cue comes from another emotion (default 0.25)")
    p.add_argument("--label-noise", dest="label_noise", type=float, help="chance of a wrong label (default 0.05)")
    p.add_argument("--face-prob", dest="face_prob", type=float, help="chance a face is drawn (default 0.6)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic dataset at --out")

    p = add(data, "import", "import an image folder or a Hugging Face dataset into the EmoSet layout",
            cmd_data_import)
    p.add_argument("source", choices=["imagefolder", "hf"],
                   help="imagefolder: ROOT/<label>/*.jpg (or ROOT/{train,val,test}/<label>/); hf: a datasets "
                   "folder (save_to_disk) or a local load_dataset path")
    p.add_argument("path", help="the image folder or dataset")
    p.add_argument("--out", required=True, help="the EmoSet-layout folder to write (give it to svlm run / train "
                   "as data.root / data)")
    p.add_argument("--image-column", dest="image_column", default="image", help="hf: the image column")
    p.add_argument("--label-column", dest="label_column", default="label",
                   help="hf: the label column (class names or a ClassLabel)")
    p.add_argument("--fractions", default="0.8,0.1,0.1",
                   help="train,val,test shares for a source without splits, drawn per label (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of that draw (default 0)")
    p.add_argument("--task", default="emoset", help="the task whose labels the source has: a shipped task ("
                   "emoset, facial_expression) or a task YAML (default emoset)")
    p.add_argument("--alias", action="append", metavar="SOURCE=LABEL",
                   help="map a source label onto a task label, e.g. happy=amusement (repeatable)")
    p.add_argument("--lenient", action="store_true", help="skip bad items (unknown label, unreadable image) and "
                   "report them in import_report.json instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import at --out")

    p = add(data, "check", "read an EmoSet root and report bad entries", cmd_data_check)
    p.add_argument("--data", required=True, help="EmoSet data root (holds train.json, image/, annotation/)")
    p.add_argument("--split", default="all", choices=["train", "val", "test", "all"])
    p.add_argument("--task", default="emoset", help="read the labels of this task (default emoset)")
    p.add_argument("--lenient", action="store_true", help="skip bad entries and report them instead of failing")
    p.add_argument("--check-images", dest="check_images", default="decode", choices=["decode", "header", "none"],
                   help="decode: full decode (finds truncated JPEGs); header: headers only; none: existence")
    p.add_argument("--report", help="write a JSON report of skipped entries (a file, or a folder for all splits)")

    model = sub.add_parser("model", help="model families and offline tiny models").add_subparsers(
        dest="model_command", required=True, metavar="SUBCOMMAND")
    p = add(model, "tiny", "write a random-weight model that loads like a hub checkpoint", cmd_model_tiny)
    p.add_argument("--family", default=DEFAULT_FAMILY, choices=list(FAMILIES))
    p.add_argument("--size", default="tiny", choices=list(MODEL_SIZES),
                   help="tiny: unit tests; small: ~10M parameters, for learning runs on a CPU; "
                   "*-shape: real sizes with random weights, for GPU memory checks")
    # real by default: a tiny model stands in for a real checkpoint of the family, and a real checkpoint
    # carries its real tokenizer; small is the CPU-training speed trade-off that svlm run makes (model.tokenizer).
    p.add_argument("--tokenizer", default="real", choices=list(TOKENIZERS),
                   help="real (default): the family's real tokenizer, chat template and processor settings, real "
                   "vocabulary size; small: a 1-4k-token local BPE with single-token <think>/<answer> tags, "
                   "~10x faster to train on a CPU")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    add(model, "list", "list the registered model families", cmd_model_list)

    cot = sub.add_parser("cot", help="chain-of-thought data from teacher VLMs").add_subparsers(
        dest="cot_command", required=True, metavar="SUBCOMMAND")
    p = add(cot, "build", "ask teachers for reasoning traces and keep those that match the label", cmd_cot_build,
            overrides=True, config_flag=False)
    p.add_argument("--data", help="EmoSet data root")
    p.add_argument("--task", help="whose labels and question (a shipped task or a task YAML; default emoset)")
    p.add_argument("--split", help="split to build from (default train)")
    p.add_argument("--teachers", help="teachers YAML (teachers: [...], policy, k, rationalize); "
                   "default: the offline attribute teacher")
    p.add_argument("--out", help="output folder; rerunning the same command resumes")
    p.add_argument("--limit", type=int, help="only the first N images")

    p = add(sub, "train", "train the baseline and the four CLGRPO stages (QLoRA on CUDA, LoRA on CPU)", cmd_train,
            overrides=True)
    p.add_argument("--stages", help="which stages: 0-4 (default), 1-4, 2, 1,3 or full names; finished stages "
                   "are skipped and an interrupted one resumes from its last checkpoint")
    p.add_argument("--name", help="run name: outputs go to <output_dir>/<name>/<stage> (default 'default')")
    p.add_argument("--output-dir", dest="output_dir", help="where runs are written (default runs/)")
    p.add_argument("--data", help="EmoSet root (default <run>/data, as written by svlm run)")
    p.add_argument("--cot", help="CoT build folder (default <run>/cot)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="retrain finished stages whose settings or parent adapter changed (default: refuse)")
    add(sub, "stages", "list the training stages and what each one does", cmd_stages)

    p = add(sub, "tasks", "list the tasks (label set, questions, answer rule: configs/tasks/*.yaml) or write a "
            "new one", cmd_tasks)
    p.add_argument("--new", metavar="NAME", help="write configs/tasks/NAME.yaml for the labels in --labels")
    p.add_argument("--labels", help="the new task's labels, comma-separated, e.g. scratch,dent,clean")
    p.add_argument("--noun", default="class", help="what a label is, used in the questions (default class)")
    p.add_argument("--folder", default="configs/tasks", help="where to write it (default configs/tasks)")

    p = add(sub, "export", "merge a stage's adapter, export ONNX (vision / embed / decoder with KV), quantize, "
            "validate against PyTorch and write self-describing packages", cmd_export, overrides=True)
    p.add_argument("--run", help="training run folder, e.g. runs/default")
    p.add_argument("--stage", help="stage to export (default: the last finished one)")
    p.add_argument("--model", help="or a checkpoint (hub id or folder) to export without an adapter")
    p.add_argument("--task", help="the task the model answers (default: the stage's task.yaml, or the checkpoint "
                   "folder's; else emoset)")
    p.add_argument("--out", help="output folder (default <run>/export); built in <out>.tmp, renamed when valid")
    from export.layouts import LAYOUTS

    p.add_argument("--layout", choices=list(LAYOUTS), help="who runs the packages: " + "; ".join(
        f"{name}: {layout.runs_with}" for name, layout in LAYOUTS.items()) + " (default svlm)")
    p.add_argument("--quant", help="comma-separated subset of the layout's quantizations (svlm: fp32,int8,int4; "
                   "default all)")
    p.add_argument("--block-size", dest="block_size", type=int, help="int4 MatMulNBits block size (default 32)")
    p.add_argument("--accuracy-level", dest="accuracy_level", type=int, choices=range(5),
                   help="int4 MatMulNBits compute precision: 4 int8 (default, fast on CPU), 1 fp32, 0 unset")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing --out")

    bench = sub.add_parser("bench", help="benchmarks: accuracy per model and class; latency, size, memory").add_subparsers(
        dest="bench_command", required=True, metavar="SUBCOMMAND")
    p = add(bench, "accuracy", "accuracy, macro recall, per-class P/R/F1, confusion matrix, format rate of "
            "PyTorch stage outputs and ONNX packages", cmd_bench_accuracy)
    p.add_argument("--models", nargs="+", required=True, help="ONNX packages, stage outputs (runs/N/STAGE) or "
                   "checkpoints")
    p.add_argument("--data", required=True, help="EmoSet root")
    p.add_argument("--task", help="the task the split is read for (default: the first stage's task.yaml, else "
                   "emoset); every model must answer its labels")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    p.add_argument("--out", default="bench", help="report folder (default bench/)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=160)
    p.add_argument("--batch-size", dest="batch_size", type=_at_least(1), default=16,
                   help="images decoded together (default 16)")
    p.add_argument("--workers", type=_at_least(0), default=0,
                   help="batches an ONNX package runs at once, each on its share of the cores (default 0: one "
                   "per core)")
    p = add(bench, "latency", "p50/p95 preprocessing, vision, time to first token, decode tokens/s, end-to-end; "
            "peak RSS and size, one process per model", cmd_bench_latency)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--data", required=True, help="EmoSet root the images are drawn from")
    p.add_argument("--task", help="the task the split is read for (default: the first stage's task.yaml, else "
                   "emoset)")
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=4, help="distinct images cycled through (default 4)")
    p.add_argument("--runs", type=int, default=8, help="timed runs per model (default 8)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's choice)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=160)
    p.add_argument("--low-memory", dest="low_memory", action="store_true",
                   help="ONNX packages without onnxruntime's memory arena: lower peak RSS, slower first token")
    p.add_argument("--out", default="bench")

    p = add(sub, "demo", "Gradio app: streamed emotion reasoning for an image, any exported or trained variant",
            cmd_demo)
    p.add_argument("--model", help="an ONNX package or stage output to offer first (default: the int8 package of "
                   "the newest run)")
    p.add_argument("--runs", default="runs", help="where to look for variants (default runs/)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (warns without "
                   "--auth-env)")
    p.add_argument("--auth-env", dest="auth_env", metavar="VAR",
                   help="environment variable holding user:password the browser must give")

    p = add(sub, "ablate", "controlled experiments: stage-4 variants and stage ablations from one adapter of a run, "
            "x seeds, scored on its held-out set with intervals and paired tests (default grid: "
            "configs/ablate_default.yaml)", cmd_ablate, overrides=True)
    p.add_argument("--run", help="a finished svlm run to branch from (default runs/default)")
    p.add_argument("--name", help="results folder inside the run (default ablate)")

    p = add(sub, "run", "run the whole chain on the built-in default (small model, synthetic data)", cmd_run,
            overrides=True)
    p.add_argument("--name", help="run name: outputs go to <output_dir>/<name> (default 'default')")
    p.add_argument("--output-dir", dest="output_dir", help="where runs are written (default runs/)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="retrain finished stages whose settings or parent adapter changed (default: refuse)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (SVLMError, PackageError) as exc:
        print(f"svlm: error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:  # a JSON file of the user's (split, annotation, results) that is not JSON
        print(f"svlm: error: malformed JSON: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, a path that vanished: the system's own words
        print(f"svlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("svlm: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
