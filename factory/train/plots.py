"""Training curves: one PNG per stage (loss, rewards, per-class accuracy reward, clip ratios, entropy, format
rate, …) and a per-stage summary.

Panels are drawn only for the metrics a stage logged, so the same function serves SFT and GRPO stages.
"""

from __future__ import annotations

from pathlib import Path

from factory.rewards import ACCURACY_BY_CLASS

#: (panel title, trl log keys drawn in it); a key ending in ``/*`` stands for every logged key under it
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss",)),
    ("token accuracy (SFT)", ("mean_token_accuracy",)),
    ("rewards", ("reward", "rewards/format_reward/mean", "rewards/accuracy_reward/mean")),
    ("format rate (format reward mean)", ("rewards/format_reward/mean",)),
    # one class collapsing (recall 0 %) hides in the overall accuracy reward
    ("accuracy reward by class", (f"{ACCURACY_BY_CLASS}/*",)),
    ("clip ratios", ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")),
    ("entropy (mean per token)", ("entropy",)),
    ("completion length", ("completions/mean_length",)),
    ("learning rate", ("learning_rate",)),
)


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        if key in row and "step" in row:
            xs.append(row["step"])
            ys.append(float(row[key]))
    return xs, ys


def stage_panels(history: list[dict]) -> list[tuple[str, list[str]]]:
    """The panels with data in ``history``, each with the keys it draws."""
    logged = sorted(set().union(*history)) if history else []
    panels = []
    for title, keys in PANELS:
        expanded = [k for key in keys
                    for k in ([n for n in logged if n.startswith(key[:-1])] if key.endswith("/*") else [key])]
        expanded = [k for k in expanded if _series(history, k)[0]]
        if expanded:
            panels.append((title, expanded))
    return panels


def plot_stage(history: list[dict], out: str | Path, title: str) -> Path | None:
    """Draw the panels that have data; returns the PNG path (None when nothing was logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = stage_panels(history)
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (panel, keys) in zip(axes.flat, panels):
        for key in keys:
            label = key.replace(f"{ACCURACY_BY_CLASS}/", "").replace("rewards/", "").replace("/mean", "")
            ax.plot(*_series(history, key), marker=".", label=label)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_summary(rows: list[dict], out: str | Path, title: str = "per-stage evaluation", classes: int = 8) -> Path:
    """Grouped bars of format rate, accuracy and macro recall per stage, against chance (1 / ``classes``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("format_rate", "accuracy", "macro_recall")
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.6))
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(xs, [r[metric] for r in rows], width, label=metric.replace("_", " "))
    ax.axhline(1 / classes, color="grey", linestyle="--", linewidth=0.8, label=f"chance (1/{classes})")
    ax.set_xticks(range(len(rows)), [r["stage"] for r in rows], rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
