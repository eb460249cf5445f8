"""Statistics for accuracy claims: bootstrap intervals over test images, paired tests between two models
scored on the same images, and intervals over training seeds.

A test split of n images measures accuracy with a standard error of about sqrt(p(1-p)/n): at p = 0.85,
±1.8 points for n = 400, ±4 points for n = 80. Differences between two models on the *same* images are
judged by the images where exactly one of them is right (McNemar), which is much more sensitive than
comparing two intervals. Across training seeds the spread is the run-to-run variation of the method itself;
with 3 seeds a t interval is wide, and it is reported as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


def bootstrap_ci(correct: Sequence[bool | int], level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image correctness (resampling images).

    >>> lo, hi = bootstrap_ci([1] * 85 + [0] * 15)
    >>> 0.76 < lo < 0.80 and 0.90 < hi < 0.93
    True
    """
    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_diff_ci(a: Sequence[bool | int], b: Sequence[bool | int], level: float = LEVEL,
                   n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same images and its paired bootstrap interval: (diff, low, high).

    >>> d, lo, hi = paired_diff_ci([1, 1, 1, 0] * 25, [1, 0, 1, 0] * 25)
    >>> round(d, 2), lo > 0
    (0.25, True)
    """
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    lo, hi = bootstrap_ci(x, level, n_boot, seed)
    return float(x.mean()), lo, hi


def mcnemar(a: Sequence[bool | int], b: Sequence[bool | int]) -> dict:
    """Exact McNemar test of two models scored on the same images.

    Returns the discordant counts (``a_only``: images only ``a`` gets right, ``b_only``: only ``b``) and
    the two-sided exact binomial p-value of ``a_only`` among the discordant pairs under p = 1/2.

    >>> mcnemar([1] * 20 + [0] * 80, [0] * 20 + [0] * 80)["p_value"] < 1e-5
    True
    >>> mcnemar([1, 0, 1, 0], [0, 1, 0, 1])["p_value"]
    1.0
    """
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same images: {a.shape} vs {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean over seeds and its Student-t interval: (mean, low, high); one value gives NaN bounds.

    >>> m, lo, hi = t_interval([0.80, 0.82, 0.84])
    >>> round(m, 2), round(hi - m, 3)
    (0.82, 0.05)
    """
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def fmt_ci(value: float, lo: float, hi: float, pct: bool = True) -> str:
    """``85.0 % [81.5, 88.3]`` (or ``0.850 [0.815, 0.883]``).

    >>> fmt_ci(0.85, 0.815, 0.883)
    '85.0 % [81.5, 88.3]'
    """
    if pct:
        if math.isnan(lo):
            return f"{100 * value:.1f} %"
        return f"{100 * value:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
    if math.isnan(lo):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def fmt_p(p: float) -> str:
    """A p-value for a table: ``p=0.031``, ``p<0.001``.

    >>> fmt_p(0.0312), fmt_p(2e-5)
    ('p=0.031', 'p<0.001')
    """
    return "p<0.001" if p < 1e-3 else f"p={p:.3f}"
