"""Paired significance tests between the runs of one results table: per-user Wilcoxon, Holm-adjusted.

Every evaluate and transfer stage writes each test user's metrics (`per_user.parquet`); a table's runs
are compared with its best on the users both ranked, and the p-values adjusted for the table's number of
comparisons. A library of the report stage, kept apart so the tests' arithmetic has one home.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmpipe.io import read_parquet

ALPHA = 0.05


def significance_note(metric: str) -> str:
    return (
        f"vs best: the difference in test {metric} to the table's best run, and the two-sided Wilcoxon "
        f"signed-rank test over the users both ranked (paired per user, zero differences dropped), its p-values "
        f"Holm-adjusted over the table's comparisons; * marks p < {ALPHA}."
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (family-wise error): the i-th smallest is multiplied by
    m - i + 1 (i from 1), made non-decreasing in that order, capped at 1; returned in the input order."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for i, index in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - i) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired per-user values (zero differences
    dropped, as scipy's default); 1.0 when every pair is equal."""
    from scipy.stats import wilcoxon

    if not np.any(a != b):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def versus_best(runs: list[tuple[str, float | None, Path]], metric: str) -> dict[str, str]:
    """Each run's cell "difference to the best (Holm-adjusted p)" by label; the best run's is "best".

    `runs`: (label, test value of `metric`, the run's per_user.parquet). The per-user values are paired on
    user_idx; a run without that file (written before it existed) gets no cell.
    """
    scored = [r for r in runs if r[1] is not None]
    if len(scored) < 2:
        return {}
    best_label, best_value, best_file = max(scored, key=lambda r: r[1])
    cells = {best_label: "best"}
    if not best_file.is_file():
        return cells
    reference = read_parquet(best_file, columns=["user_idx", metric]).to_pandas()
    others, pvalues, deltas = [], [], []
    for label, value, per_user in scored:
        if label == best_label or not per_user.is_file():
            continue
        values = read_parquet(per_user, columns=["user_idx", metric]).to_pandas()
        paired = reference.merge(values, on="user_idx", suffixes=("_best", ""))
        others.append(label)
        pvalues.append(paired_wilcoxon(paired[f"{metric}_best"].to_numpy(), paired[metric].to_numpy()))
        deltas.append(value - best_value)
    for label, delta, p in zip(others, deltas, holm(pvalues), strict=True):
        shown = f"p {p:.2g}" if p >= 1e-4 else "p < 1e-4"
        cells[label] = f"{delta:+.4f} ({shown}){' *' if p < ALPHA else ''}"
    return cells
