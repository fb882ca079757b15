"""The statistics of a results table: mean ± sd over seeds, and each run tested against the table's best.

Every evaluate and transfer stage writes each test user's metrics (`per_user.parquet`), once per seed of
`pipeline.seeds`. A table's runs are compared with its best (by mean test value) in two ways:

* over users, paired: each user's value averaged over the run's seeds (the test users are the same for
  every seed: the split does not depend on it), two-sided Wilcoxon signed-rank over the users both ranked;
* over seeds, unpaired, when both runs have two seeds or more: Welch's t-test on the seeds' test values
  (a seed of one model is not paired with a seed of another).

Each family of p-values is Holm-adjusted over the table's comparisons. The report stage and the sweep
command (`mmpipe.sweep`) both summarise seeds here, so "mean ± sd" means one thing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmpipe.io import read_parquet

ALPHA = 0.05


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """`mean ± sd` (sample standard deviation), or the one value for a single seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


@dataclass(frozen=True)
class Compared:
    """One run of a table over its seeds: its row label, each seed's test value, each seed's per-user file."""

    label: str
    values: tuple[float, ...]
    per_user: tuple[Path, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)


def significance_note(metric: str, seeds: int) -> str:
    """The sentence under a table that says what its "vs best" column computed."""
    users = "the users both ranked (paired per user, zero differences dropped)"
    if seeds > 1:
        users += f", each user's value the mean over the run's {seeds} seeds"
    note = (
        f"vs best: the difference in mean test {metric} to the table's best run, and the two-sided Wilcoxon "
        f"signed-rank test over {users}"
    )
    if seeds > 1:
        note += "; \"seeds p\": Welch's t-test over the runs' per-seed test values (unpaired)"
    return note + f". P-values Holm-adjusted over the table's comparisons; * marks p < {ALPHA}."


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


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test between two runs' per-seed values; when neither varies over
    its seeds, 1.0 for equal values and 0.0 for different ones (scipy gives no p-value there)."""
    from scipy.stats import ttest_ind

    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    if math.isnan(p):
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    return p


def user_means(files: Sequence[Path], metric: str) -> pd.DataFrame | None:
    """Each user's `metric` averaged over the seeds' per-user files (the users all of them ranked), or None
    when a file is missing (a run written before they existed)."""
    if not all(f.is_file() for f in files):
        return None
    merged: pd.DataFrame | None = None
    for n, path in enumerate(files):
        frame = read_parquet(path, columns=["user_idx", metric]).to_pandas().rename(columns={metric: n})
        merged = frame if merged is None else merged.merge(frame, on="user_idx")
    assert merged is not None
    return pd.DataFrame({"user_idx": merged["user_idx"], metric: merged[list(range(len(files)))].mean(axis=1)})


def _shown(p: float, template: str) -> str:
    """`template` with the p-value in it, then " *" when it is below ALPHA."""
    text = template.format(f"p {p:.2g}" if p >= 1e-4 else "p < 1e-4")
    return text + (" *" if p < ALPHA else "")


def versus_best(runs: Sequence[Compared], metric: str) -> dict[str, str]:
    """Each run's "vs best" cell by label: the difference of its mean to the best's, the users' test
    (Holm-adjusted p) and, when both have several seeds, the seeds' test; the best run's cell is "best"."""
    if len(runs) < 2:
        return {}
    best = max(runs, key=lambda r: r.mean)
    cells = {best.label: "best"}
    reference = user_means(best.per_user, metric)
    others = [r for r in runs if r.label != best.label]
    user_p: list[float] = []
    for run in others:
        values = user_means(run.per_user, metric) if reference is not None else None
        if values is None:
            user_p.append(math.nan)
            continue
        paired = reference.merge(values, on="user_idx", suffixes=("_best", ""))
        user_p.append(paired_wilcoxon(paired[f"{metric}_best"].to_numpy(), paired[metric].to_numpy()))
    seeded = [len(best.values) > 1 and len(r.values) > 1 for r in others]
    seed_p = [welch(best.values, r.values) if s else math.nan for r, s in zip(others, seeded, strict=True)]
    user_adj = _adjusted(user_p)
    seed_adj = _adjusted(seed_p)
    for run, pu, ps in zip(others, user_adj, seed_adj, strict=True):
        parts = [f"{run.mean - best.mean:+.4f}"]
        if not math.isnan(pu):
            parts.append(_shown(pu, "({})"))
        if not math.isnan(ps):
            parts.append(_shown(ps, "seeds {}"))
        cells[run.label] = " ".join(parts)
    return cells


def _adjusted(pvalues: list[float]) -> list[float]:
    """Holm over the p-values that exist (NaN: no test for that run), NaN kept in place."""
    present = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    for i, p in zip(present, holm([pvalues[i] for i in present]), strict=True):
        out[i] = p
    return out
