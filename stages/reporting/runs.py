"""The report stage's runs: which run folders a params file enables (one per seed of pipeline.seeds),
their records grouped back into runs, and the cells that summarise a run over its seeds.

A library of `stages/report.py` alone (no other stage reads results), kept apart so that the report's
module holds its tables and this one the bookkeeping under them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmpipe.io import read_json
from mmpipe.paths import RunFiles, run_dir
from mmpipe.significance import Compared, mean_std
from stages.common import pipeline

METRIC_ORDER = ("recall", "ndcg", "precision", "map")

Record = dict[str, Any]  # one seed of one run: its evaluation.json, timings, files, seed


def runs_of(cfg: pipeline.PipelineConfig, dataset: str) -> list[tuple[str, str, str | None, str]]:
    """(model, setting, feature set, group) of every enabled run of a dataset, in the lists' order."""
    out = []
    for list_name, (group, setting) in pipeline.MODEL_LISTS.items():
        if group == "id":
            sets: tuple[str | None, ...] = (None,)
        elif group == "e2e":
            sets = ("e2e",)
        else:
            sets = cfg.lmm4rec_feature_sets if group == "lmm" else cfg.model_feature_sets
        for model in getattr(cfg, list_name):
            for feature_set in sets:
                out.append((model, setting, feature_set, group))
    return out


def collect(cfg: pipeline.PipelineConfig, runs_root: Path) -> list[Record]:
    """One record per existing run of an enabled dataset/model/setting/feature set."""
    records = []
    for dataset in cfg.train_datasets:
        for model, setting, feature_set, group in runs_of(cfg, dataset):
            for seed in cfg.seeds:
                files = RunFiles(run_dir(dataset, model, setting, seed, feature_set, runs_root))
                if files.evaluation.is_file():
                    times = read_json(files.train_times) if files.train_times.is_file() else {"seconds_per_epoch": 0.0}
                    records.append(
                        {"dataset": dataset, "files": files, "group": group, **read_json(files.evaluation), **times,
                         "seed": seed}
                    )  # fmt: skip
    return records


def collect_sequential(cfg: pipeline.PipelineConfig, runs_root: Path) -> list[Record]:
    """The evaluation of every enabled transfer run (target x sequential model x variant x seed) that
    exists, with its model, seed and files."""
    out = []
    for target in cfg.transfer_targets:
        for model in cfg.pretrain_models:
            for variant in cfg.transfer_variants:
                for seed in cfg.seeds:
                    files = RunFiles(run_dir(target, model, variant, seed, runs=runs_root))
                    if files.evaluation.is_file():
                        out.append({**read_json(files.evaluation), "model": model, "files": files, "seed": seed})
    return out


def by_run(recs: list[Record], key: Callable[[Record], str] | None = None) -> list[list[Record]]:
    """The records grouped into runs (one record per seed), in first-seen order; `key` names a run
    (default: its row label)."""
    runs: dict[str, list[Record]] = {}
    for rec in recs:
        runs.setdefault((key or run_label)(rec), []).append(rec)
    return list(runs.values())


def run_label(rec: Record) -> str:
    return f"{rec['model']} ({rec['feature_set']})" if rec.get("feature_set") else rec["model"]


def cell(seeds: list[Record], part: str, metric: str) -> str:
    """A run's `part` ('test' or 'valid') `metric` over its seeds: mean ± sd, the value, or '-'."""
    values = [r[part][metric] for r in seeds if metric in r.get(part, {})]
    return mean_std(values) if len(values) == len(seeds) else "-"


def epochs_cell(seeds: list[Record]) -> str:
    """Each seed's best epoch, in seed order."""
    return "/".join(str(r["best_epoch"]) for r in seeds)


def per_epoch(seeds: list[Record], digits: int = 3) -> str:
    return f"{sum(r['seconds_per_epoch'] for r in seeds) / len(seeds):.{digits}f}"


def compared(runs: list[list[Record]], metric: str, label: Callable[[Record], str] | None = None) -> list[Compared]:
    """Each run (its seeds' records) with the tested metric, for `versus_best`."""
    label = label or run_label
    return [
        Compared(label(seeds[0]), tuple(r["test"][metric] for r in seeds), tuple(r["files"].per_user for r in seeds))
        for seeds in runs
        if all(metric in r["test"] for r in seeds)
    ]


def metric_columns(records: list[Record]) -> list[str]:
    names = {k for r in records for k in r["test"]}
    ks = sorted({int(n.split("@")[1]) for n in names})
    return [f"{m}@{k}" for m in METRIC_ORDER for k in ks if f"{m}@{k}" in names]


def markdown_table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def seeds_sentence(seeds: tuple[int, ...]) -> str:
    if len(seeds) == 1:
        return f"One seed per run ({seeds[0]}; pipeline.seeds lists them): each value is that run's."
    return (
        f"Each run trained once per seed of pipeline.seeds ({', '.join(map(str, seeds))}): mean ± sample standard "
        f"deviation over the {len(seeds)} seeds, each seed's best epoch in order; results.csv has every seed's values."
    )


def missing_seeds(records: list[Record], wanted: int) -> list[str]:
    """A warning line (and a blank one) naming the runs that lack some of the seeds (their stages not run
    yet, e.g. `dvc repro report` alone after adding a seed): their cells summarise the seeds present."""

    def name(rec: Record) -> str:
        if "variant" in rec:  # a transfer run
            return f"{rec['target']}/{rec['model']} {rec['variant']}"
        return f"{rec['dataset']}/{run_label(rec)} {rec['setting']}"

    short = [f"{name(seeds[0])} ({len(seeds)} of {wanted})" for seeds in by_run(records, name) if len(seeds) < wanted]
    if not short:
        return []
    return [f"**Seeds missing** (stages not run yet; these rows summarise the seeds present): {', '.join(short)}.", ""]


def csv_row(rec: Record) -> dict[str, Any]:
    """One seed of one run in results.csv: what names it, then every test metric."""
    return {"dataset": rec["dataset"], "setting": rec["setting"], "model": rec["model"],
            "feature_set": rec.get("feature_set") or "", "seed": rec["seed"], **rec["test"]}  # fmt: skip
