"""``svlm bench accuracy``: any mix of PyTorch stage outputs and ONNX packages on one EmoSet split.

The split is read for one task (``factory.tasks``; by default the task of the first PyTorch stage given, else
EmoSet's); every model must answer that task's labels, and each model's answers are parsed by its own
answer format (a package's manifest, a stage's task), the rule the runtime applies.

Per model: accuracy, macro recall, per-class precision / recall / F1, the confusion matrix (all from
scikit-learn), format compliance and the unparsable-answer rate, with a 95 % bootstrap interval on
accuracy; models named in ``compare_to`` are tested against every other model on the same images (exact
McNemar, paired bootstrap interval of the difference; ``factory.stats``). Writes ``accuracy.json``,
``accuracy.md`` and plots (a confusion matrix per model, per-class recall bars, accuracy by model with its
interval).
"""

from __future__ import annotations

from pathlib import Path

from factory import stats
from factory.files import write_report


def metrics(y_true: list[str], y_pred: list[str | None], well_formed: list[bool], labels: list[str]) -> dict:
    """Everything the report shows, from scikit-learn; an unparsable answer counts as wrong."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, recall_score

    pred = [p or "<unparsable>" for p in y_pred]
    labels = list(labels)
    n = len(y_true)
    report = classification_report(y_true, pred, labels=labels, output_dict=True, zero_division=0)
    return {
        "n": n,
        "accuracy": float(accuracy_score(y_true, pred)),
        "macro_recall": float(recall_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "format_rate": sum(well_formed) / n if n else 0.0,
        "unparsable_rate": sum(p is None for p in y_pred) / n if n else 0.0,
        "per_class": {lab: {k: float(report[lab][k]) for k in ("precision", "recall", "f1-score", "support")}
                      for lab in labels},
        # rows: true label, columns: predicted label, in the task's order plus a last column for unparsable
        "confusion": confusion_matrix(y_true, pred, labels=labels + ["<unparsable>"]).tolist(),
    }


def predict(model, records, max_new_tokens: int, batch_size: int, progress: bool) -> list[str]:
    """Greedy completions for every record, ``batch_size`` images decoded together (PyTorch stage or ONNX
    package alike: ``factory.inference``)."""
    images = [r.image_path for r in records]
    if not progress:
        return [g.text for g in model.generate_batch(images, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                     label_probs=False)]
    from tqdm import tqdm

    with tqdm(total=len(images), desc=model.name, unit="img") as bar:
        return [g.text for g in model.generate_batch(images, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                     label_probs=False, on_batch=bar.update)]


def run(models: list[str], data: str, split: str = "test", limit: int = 0, out: str | Path = "bench",
        max_new_tokens: int = 160, batch_size: int = 16, progress: bool = True, command: str | None = None,
        compare_to: list[str] | None = None, plots: bool = True, workers: int = 0, task=None) -> dict:
    """Score every model on the split; ``compare_to``: model paths (from ``models``) the others are tested
    against; ``plots=False`` writes only the JSON and markdown; ``workers``: batches an ONNX package runs at
    once, each on its share of the cores (0: one per core; PyTorch spreads each operation over the cores
    itself); ``task``: the task the split is read for (module docstring)."""
    from factory.data.emoset import read_split
    from factory.inference import open_model

    task = models_task(models, task)
    records = read_split(data, split, task=task, strict=False, check_images="header").records
    if limit:
        records = records[:limit]
    results = []
    for spec in models:
        model = open_model(spec, workers=workers)
        if list(model.answer_format.labels) != list(task.labels):
            raise ValueError(f"{spec} answers the labels {list(model.answer_format.labels)}, not task {task.name!r}'s "
                             f"{task.labels}; score it with its own task (--task)")
        texts = predict(model, records, max_new_tokens, batch_size, progress)
        parsed = [model.answer_format.parse(t, allow_bare_label=model.style == "label") for t in texts]
        well = [p.well_formed if model.style == "cot" else p.label is not None for p in parsed]
        m = metrics([r.label for r in records], [p.label for p in parsed], well, task.labels)
        correct = [p.label == r.label for p, r in zip(parsed, records)]
        m["accuracy_ci"] = list(stats.bootstrap_ci(correct))
        results.append({"model": model.name, "path": str(spec), "kind": model.kind, "style": model.style, **m,
                        "predictions": [{"image_id": r.image_id, "label": r.label, "predicted": p.label}
                                        for r, p in zip(records, parsed)]})
        del model
    _agreement(results)
    comparisons = compare(results, compare_to or [])
    report = {"command": command, "data": str(data), "split": split, "task": task.name, "labels": list(task.labels),
              "images": len(records), "models": results, "comparisons": comparisons}
    write(report, Path(out), plots)
    return report


def models_task(models: list[str], task=None):
    """The task to score ``models`` on: ``task`` when given, else the first PyTorch stage folder's (its
    ``task.yaml``), else EmoSet's."""
    from factory.tasks import TASK_FILENAME, folder_task, load_task

    if task is not None:
        return load_task(task)
    for spec in models:
        if (Path(spec) / TASK_FILENAME).is_file():
            return folder_task(spec)
    return load_task()


def truth(prediction: dict) -> str:
    """The true label of a report's prediction (reports written before tasks named it ``emotion``)."""
    return prediction["label"] if "label" in prediction else prediction["emotion"]


def correctness(row: dict) -> list[bool]:
    """Per image, whether the model's parsed answer is the label (in report order)."""
    return [p["predicted"] == truth(p) for p in row["predictions"]]


def compare(results: list[dict], references: list[str]) -> list[dict]:
    """Every model against each reference model (by path), on the same images: accuracy difference with a
    paired bootstrap interval and the exact McNemar p-value."""
    by_path = {r["path"]: r for r in results}
    missing = [ref for ref in references if ref not in by_path]
    if missing:
        raise ValueError(f"compare_to names models that were not scored: {missing}")
    rows = []
    for ref in references:
        base = correctness(by_path[ref])
        for r in results:
            if r["path"] == ref:
                continue
            mine = correctness(r)
            diff, lo, hi = stats.paired_diff_ci(mine, base)
            rows.append({"model": r["model"], "reference": by_path[ref]["model"], "diff": diff, "diff_ci": [lo, hi],
                         **stats.mcnemar(mine, base)})
    return rows


def _agreement(results: list[dict]) -> None:
    """For each ONNX row, the share of images where it predicts the same label as the PyTorch model of the
    same stage (when that model is in the report)."""
    torch_rows = {r["model"].split()[0]: r for r in results if r["kind"] == "pytorch"}
    for r in results:
        ref = torch_rows.get(r["model"].split()[0])
        if r["kind"] == "onnx" and ref is not None:
            same = [a["predicted"] == b["predicted"] for a, b in zip(r["predictions"], ref["predictions"])]
            r["label_agreement_with_pytorch"] = sum(same) / len(same) if same else 0.0


def _labels(report: dict) -> list[str]:
    """The report's labels (reports written before tasks were EmoSet's)."""
    if "labels" in report:
        return report["labels"]
    from factory.tasks import load_task

    return load_task().labels


def markdown(report: dict) -> str:
    labels = _labels(report)
    task = f", task {report['task']}" if report.get("task") else ""
    lines = [f"# Accuracy on {report['split']} ({report['images']} images, {report['data']}{task})", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    lines += ["| model | kind | accuracy [95 % CI] | macro recall | format | unparsable | labels = PyTorch's |",
             "|---|---|---|---|---|---|---|"]
    for r in report["models"]:
        agree = r.get("label_agreement_with_pytorch")
        lines.append(f"| {r['model']} | {r['kind']} | {stats.fmt_ci(r['accuracy'], *r['accuracy_ci'])} | "
                     f"{r['macro_recall']:.1%} | {r['format_rate']:.1%} | {r['unparsable_rate']:.1%} | "
                     f"{'' if agree is None else f'{agree:.1%}'} |")
    if report.get("comparisons"):
        lines += ["", "Paired comparisons on the same images (difference in accuracy points with a paired "
                  "bootstrap 95 % interval; exact McNemar test; only-this / only-reference = images only one of "
                  "the two gets right):", "", "| model | vs | Δ accuracy [95 % CI] | only this / only reference "
                  "| McNemar |", "|---|---|---|---|---|"]
        for c in report["comparisons"]:
            lines.append(f"| {c['model']} | {c['reference']} | {_points(c['diff'], *c['diff_ci'])} | "
                         f"{c['a_only']} / {c['b_only']} | {stats.fmt_p(c['p_value'])} |")
    lines += ["", "Per-class recall:", "", "| model | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]
    for r in report["models"]:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['per_class'][e]['recall']:.0%}" for e in labels)
                     + " |")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path, plots: bool = True) -> None:
    write_report(out, "accuracy", report, markdown(report))
    if not plots:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models, labels = report["models"], _labels(report)
    for r in models:
        cm = np.array(r["confusion"])
        fig, ax = plt.subplots(figsize=(6.4, 5.4))
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(labels) + 1), list(labels) + ["unparsable"], rotation=45, ha="right")
        ax.set_yticks(range(len(labels) + 1), list(labels) + ["unparsable"])
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{r['model']}: accuracy {r['accuracy']:.1%}")
        fig.tight_layout()
        fig.savefig(out / f"confusion_{_slug(r['model'])}.png", dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.6))
    width = 0.8 / max(len(models), 1)
    for i, r in enumerate(models):
        ax.bar([j + i * width for j in range(len(labels))], [r["per_class"][e]["recall"] for e in labels],
               width, label=r["model"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], list(labels), rotation=20)
    _save(fig, ax, "recall", out / "per_class_recall.png")
    fig, ax = plt.subplots(figsize=(1.3 * len(models) + 2, 3.4))
    acc = np.array([r["accuracy"] for r in models])
    ci = np.array([r.get("accuracy_ci", [a, a]) for r, a in zip(models, acc)]).T
    ax.bar(range(len(models)), acc, color="tab:blue", yerr=np.abs(ci - acc), capsize=3,
           error_kw={"label": "95 % bootstrap interval"})
    ax.axhline(1 / len(labels), color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xticks(range(len(models)), [r["model"] for r in models], rotation=25, ha="right", fontsize=8)
    _save(fig, ax, "accuracy", out / "accuracy_by_model.png")


def _save(fig, ax, ylabel: str, path: Path) -> None:
    """A 0-1 y axis with a legend, written and closed."""
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _points(d: float, lo: float, hi: float) -> str:
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")
