"""A hyperparameter grid's table, from the experiments DVC recorded: `python -m mmpipe.sweep`.

DVC runs the grid (`dvc exp run --queue -S 'train.lattice.reg_weight=0,1e-4,1e-3' -S
'pipeline.seeds=[1,2,3]'`, then `dvc queue start -j 2` or `dvc exp run --run-all`): every experiment
trains the model once per seed of `pipeline.seeds` (`<run>/seed-<n>/metrics.json`). This command only
reads what DVC recorded (`dvc.api.exp_show`), adds no tracker of its own, and turns one run's metrics into
a table: every point of the grid (the params that differ between the experiments, the seed list aside),
its validation and test metric as mean ± standard deviation over the seeds run at that point, and the
point chosen by the best mean *validation* metric. Test metrics never take part in the choice (MMRec's
grid keeps the best by test, which overstates every number it reports).

Not a pipeline stage and imported by none: a command over DVC's experiment records.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpipe.config import UserError
from mmpipe.io import write_text
from mmpipe.paths import SEED_DIR, RunFiles
from mmpipe.significance import mean_std

SEED_KEY = "pipeline.seeds"  # the seeds of every experiment: not a grid axis
BOOKKEEPING = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


@dataclass(frozen=True)
class Trial:
    """One seed's run in one recorded experiment: the experiment's name, its grid values, the seed and the
    run's two metrics."""

    name: str
    point: tuple[Any, ...]
    seed: int
    valid: float
    test: float


@dataclass(frozen=True)
class Point:
    """One grid point: its trials over seeds, summarised."""

    point: tuple[Any, ...]
    trials: tuple[Trial, ...]

    @property
    def valid(self) -> list[float]:
        return [t.valid for t in self.trials]

    @property
    def test(self) -> list[float]:
        return [t.test for t in self.trials]


def seed_columns(columns: Sequence[str], run: str, key: str) -> dict[int, str]:
    """The exp_show column of `key` in each seed's metrics file of the run folder `run`, by seed."""
    pattern = re.compile(re.escape(f"{run}/{SEED_DIR}") + r"(\d+)/" + re.escape(f"{RunFiles(Path('')).metrics}:{key}"))
    found = {int(m.group(1)): c for c in columns if (m := pattern.fullmatch(c))}
    if not found:
        known = sorted({c.split(":", 1)[0] for c in columns if ":" in c})
        raise UserError(
            f"no metric {key!r} of {run}/{SEED_DIR}<n>/metrics.json among DVC's experiments; metrics files "
            f"recorded: {', '.join(known) or 'none'} (is {run} a run's folder, and did the grid run?)"
        )
    return found


def axes_of(rows: list[dict[str, Any]], metric_columns: set[str], seed_key: str) -> list[str]:
    """The params that differ between the experiments (the grid's axes), the seed key aside."""
    params = [c for c in rows[0] if c not in BOOKKEEPING and c not in metric_columns and ":" not in c]
    varying = [c for c in params if len({repr(r.get(c)) for r in rows}) > 1]
    return [c for c in varying if c != seed_key and not _is_dependency_hash(rows, c)]


DEPENDENCY_HASH = re.compile(r"[0-9a-f]{32}(\.dir)?")  # a file's md5, a folder's md5 + ".dir"


def _is_dependency_hash(rows: list[dict[str, Any]], column: str) -> bool:
    """exp_show also lists file and folder dependencies (their md5 hashes) beside the params: not axes."""
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return all(isinstance(v, str) and DEPENDENCY_HASH.fullmatch(v) for v in values)


def collect(
    rows: list[dict[str, Any]], run: str, metric: str, seed_key: str, axes: Sequence[str] | None
) -> tuple[list[str], list[Trial], int]:
    """(axes, trials: one per experiment and seed, experiments skipped for want of any seed's metrics): the
    workspace row is left out, the baseline commit counts like any experiment."""
    rows = [r for r in rows if r.get("rev") != "workspace"]
    if not rows:
        raise UserError("DVC has recorded no experiment here (dvc exp show lists none); run the grid first")
    columns = list(rows[0])
    valid_cols = seed_columns(columns, run, f"valid.{metric}")
    test_cols = seed_columns(columns, run, f"test.{metric}")
    seeds = sorted(set(valid_cols) & set(test_cols))

    def measured(r: dict[str, Any], seed: int) -> bool:
        """The experiment ran this seed (its seed list names it) and recorded both metrics. A metrics file of
        a seed the list does not name is a leftover of the commit it started from, not this grid point's."""
        listed = r.get(seed_key)
        if isinstance(listed, list) and seed not in [_number(s) for s in listed]:
            return False
        return _number(r.get(valid_cols[seed])) is not None and _number(r.get(test_cols[seed])) is not None

    complete = [r for r in rows if any(measured(r, s) for s in seeds)]
    if not complete:
        raise UserError(f"none of DVC's {len(rows)} experiments has {run}'s valid/test {metric} for any seed")
    if axes is None:
        axes = axes_of(complete, {*valid_cols.values(), *test_cols.values()}, seed_key)
    unknown = [a for a in axes if a not in columns]
    if unknown:
        raise UserError(f"--axes {', '.join(unknown)}: not params of the experiments DVC recorded")
    trials = [
        Trial(
            name=str(r.get("Experiment") or r.get("rev")),
            point=tuple(r.get(a) for a in axes),
            seed=seed,
            valid=float(r[valid_cols[seed]]),
            test=float(r[test_cols[seed]]),
        )
        for r in complete
        for seed in seeds
        if measured(r, seed)
    ]
    return list(axes), trials, len(rows) - len(complete)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def group(trials: list[Trial]) -> list[Point]:
    """Trials grouped by grid point; the same seed twice at one point (a re-run) counts once."""
    points: dict[tuple[Any, ...], dict[Any, Trial]] = {}
    for trial in trials:
        points.setdefault(trial.point, {}).setdefault(repr(trial.seed), trial)
    return [Point(p, tuple(sorted(by_seed.values(), key=lambda t: repr(t.seed)))) for p, by_seed in points.items()]


def choose(points: list[Point]) -> Point:
    """The point with the best mean validation metric (ties: the first in the table's order)."""
    return max(sorted(points, key=lambda p: repr(p.point)), key=lambda p: statistics.fmean(p.valid))


def table(axes: list[str], points: list[Point], chosen: Point, metric: str) -> str:
    """The grid as Markdown, one row per point, the chosen point marked."""
    head = [*axes, "seeds", f"valid {metric}", f"test {metric}", "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted(points, key=lambda p: repr(p.point)):
        cells = [*(_cell(v) for v in p.point), str(len(p.trials)), mean_std(p.valid), mean_std(p.test)]
        lines.append("| " + " | ".join([*cells, "**yes**" if p is chosen else ""]) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # exp_show gives integer params as floats
    return str(value)


def trials_csv(axes: list[str], trials: list[Trial], chosen: Point) -> str:
    """Every experiment: its name, grid values, seed, both metrics, and whether its point was chosen."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["experiment", *axes, "seed", "valid", "test", "chosen_point"])
    for t in sorted(trials, key=lambda t: (repr(t.point), repr(t.seed), t.name)):
        writer.writerow([t.name, *map(_cell, t.point), _cell(t.seed), t.valid, t.test, t.point == chosen.point])
    return out.getvalue()


def sweep(
    rows: list[dict[str, Any]],
    run: str,
    metric: str = "recall@20",
    seed_key: str = SEED_KEY,
    axes: Sequence[str] | None = None,
) -> tuple[str, str]:
    """(Markdown table with a summary line, CSV of every experiment and seed) for the run folder `run`
    (the folder of its seeds, e.g. runs/demo/lattice/default/warm)."""
    run = run.rstrip("/")
    found_axes, trials, skipped = collect(rows, run, metric, seed_key, axes)
    points = group(trials)
    chosen = choose(points)
    described = ", ".join(f"{a} = {_cell(v)}" for a, v in zip(found_axes, chosen.point, strict=True)) or "the one point"
    seeds = len(chosen.trials)
    summary = (
        f"{run}: {len({t.name for t in trials})} experiments ({len(trials)} runs over their seeds), {len(points)} "
        f"grid points over {', '.join(found_axes) or 'no param'}"
        f"{f' ({skipped} without metrics, left out)' if skipped else ''}. Chosen on validation {metric} "
        f"(mean over seeds; test never used for the choice): {described}, test {metric} {mean_std(chosen.test)} "
        f"over {seeds} seed{'s' if seeds != 1 else ''}."
    )
    return f"{summary}\n\n{table(found_axes, points, chosen, metric)}\n", trials_csv(found_axes, trials, chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmpipe.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run",
        required=True,
        help="the folder of a run's seeds (seed-<n>/metrics.json), e.g. runs/demo/lattice/default/warm",
    )
    parser.add_argument("--metric", default="recall@20", help="chosen on valid.<metric>, reported with test.<metric>")
    parser.add_argument("--seed-key", default=SEED_KEY, help="the param listing the seeds (not a grid axis)")
    parser.add_argument("--axes", nargs="+", help="the grid's params (default: those that differ between experiments)")
    parser.add_argument("--num", type=int, default=1, help="experiments of the last N commits (dvc exp show -n)")
    parser.add_argument("--csv", type=Path, help="also write every experiment to this CSV")
    parser.add_argument("--md", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    import dvc.api

    try:
        markdown, rows_csv = sweep(dvc.api.exp_show(num=args.num), args.run, args.metric, args.seed_key, args.axes)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown, end="")
    for path, text in ((args.csv, rows_csv), (args.md, markdown)):
        if path:
            write_text(path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
