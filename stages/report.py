"""Stage `report`: one results table (models x metrics) per dataset and setting, plus training curves.

Reads every run of the enabled datasets and models (`runs/.../evaluation.json` and `history.csv`) and
writes `reports/results.md` (Recall/NDCG@10/20 on test, the best validation value, with published
numbers beside ours where the dataset names a table of `reports/published.yaml`), `reports/results.csv`
(one row per run, every metric) and `reports/plots/*.png` (validation curves). PMMRec's transfer runs
get one table per target (SASRec, from scratch, each pre-trained part, one modality) and
`reports/sequential.csv`. LMM4Rec's runs get one table per dataset: model x paradigm (pre-trained and
fine-tuned encoder features, end to end), with the encoder parameters each run trained.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmpipe.config import ParamsError
from mmpipe.io import atomic_dir, read_json, write_text
from mmpipe.log import get_logger
from mmpipe.paths import PUBLISHED, REPORTS, RUNS, ReportFiles, RunFiles, pretrain_dir
from mmpipe.significance import mean_std, significance_note, versus_best
from stages.common import pipeline
from stages.common.datasets import dataset_config
from stages.common.params import declared, run_stage
from stages.reporting.runs import (
    by_run,
    cell,
    collect,
    collect_sequential,
    compared,
    csv_row,
    epochs_cell,
    markdown_table,
    metric_columns,
    missing_seeds,
    per_epoch,
    run_label,
    seeds_sentence,
)

log = get_logger("report")

TABLE_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")  # what published tables report
TESTED_METRIC = "recall@20"  # the per-user metric the paired tests compare
SEQ_TESTED_METRIC = "hr@10"  # the sequential tables' (PMMRec reports HR/NDCG@10)


LMM_GROUPS = ("lmm", "e2e")  # LMM4Rec's runs: their own table per dataset


def param_keys() -> list[str]:
    return ["pipeline", "datasets", "train.common.valid_metric", "features"]


@dataclass(frozen=True)
class Published:
    """One published table: where it comes from, on which split, and its numbers by model."""

    name: str
    source: str
    split: str
    results: Mapping[str, Mapping[str, float]]


def load_published(path: Path = PUBLISHED) -> dict[str, Published]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = {}
    for name, entry in data.items():
        for key in ("source", "split", "results"):
            if key not in (entry or {}):
                raise ValueError(f"{path}: entry '{name}' has no '{key}'")
        out[name] = Published(name, entry["source"], entry["split"], entry["results"])
    return out


def plot_curves(records: list[dict[str, Any]], out_dir: Path, metric: str) -> list[str]:
    """valid <metric> per epoch, one PNG per dataset/setting, all runs on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault((rec["dataset"], rec["setting"]), []).append(rec)
    for (dataset, setting), recs in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for n, seeds in enumerate(by_run(recs)):  # one colour per run, one line per seed, labelled once
            for rec in seeds:
                rows = list(csv.DictReader(io.StringIO(rec["files"].history.read_text())))
                points = [(int(r["epoch"]), float(r[f"valid_{metric}"])) for r in rows if r.get(f"valid_{metric}")]
                label = run_label(rec) if rec is seeds[0] else None
                if len(points) == 1:
                    ax.axhline(points[0][1], linestyle="--", color=f"C{n}", label=label and f"{label} (no training)")
                elif points:
                    ax.plot(*zip(*points, strict=True), color=f"C{n}", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {metric}")
        ax.set_title(f"{dataset} ({setting})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{dataset}_{setting}_valid_{metric.replace('@', '_at_')}.png"
        fig.savefig(out_dir / name, metadata={"Software": None})
        plt.close(fig)
        written.append(name)
    return written


def dataset_section(
    dataset: str, setting: str, recs: list[dict[str, Any]], published: Published | None, valid_metric: str
) -> list[str]:
    """The markdown of one dataset and setting: counts, the table (one row per run, its seeds summarised), notes."""
    info = recs[0].get("dataset_stats", {})
    title = "warm (all items seen in training)" if setting == "warm" else "cold-start items (MICRO protocol)"
    md = [f"## {dataset}: {title}", ""]
    if info:
        md += [
            f"{info['users']} users, {info['items']} items; train/valid/test interactions "
            f"{info['train']}/{info['valid']}/{info['test']}.",
            "",
        ]
    runs = by_run(recs)
    columns = [c for c in TABLE_METRICS if any(c in r["test"] for r in recs)]
    versus = versus_best(compared(runs, TESTED_METRIC), TESTED_METRIC)
    header = ["model", *columns, f"valid {valid_metric}", "users", "best epoch", "s/epoch"]
    header += ["vs best"] if versus else []
    if published:
        header += ["published recall@20", "published ndcg@20"]
    rows = []
    for seeds in runs:
        first = seeds[0]
        row = [
            run_label(first),
            *(cell(seeds, "test", c) for c in columns),
            cell(seeds, "valid", valid_metric),
            str(first["users_evaluated"]),
            epochs_cell(seeds),
            per_epoch(seeds),
        ]
        row += [versus.get(run_label(first), "-")] if versus else []
        if published:
            pub = published.results.get(first["model"], {})
            row += [f"{pub[m]:.4f}" if m in pub else "-" for m in ("recall@20", "ndcg@20")]
        rows.append(row)
    md += [markdown_table(rows, header), ""]
    if versus:
        md += [significance_note(TESTED_METRIC, max(len(r) for r in runs)), ""]
    if published:
        md += [f"Published ({published.name}): {published.source}; split: {published.split}.", ""]
    return md


def paradigm(feature_set: str, features: dict[str, Any]) -> tuple[str, str]:
    """(LMM4Rec paradigm, encoder) of a run's feature set: a set whose encoder is a `finetune_encoder`
    output is fine-tuned, any other encoded set pre-trained; `e2e` is the end-to-end group."""
    if feature_set == "e2e":
        return "end to end", "train.e2e"
    models = sorted({str(b.get("model")) for b in (features.get(feature_set) or {}).values() if isinstance(b, dict)})
    kind = "fine-tuned" if any("/finetuned/" in m for m in models) else "pre-trained"
    return kind, f"{feature_set}: {', '.join(models)}"


def valid_at_epoch(rec: dict[str, Any], metric: str, epoch: int) -> float | None:
    """The run's validation `metric` after `epoch` epochs (its history.csv), or None."""
    rows = csv.DictReader(io.StringIO(rec["files"].history.read_text()))
    values = [float(r[f"valid_{metric}"]) for r in rows if r.get(f"valid_{metric}") and int(r["epoch"]) == epoch]
    return values[0] if values else None


def lmm4rec_section(dataset: str, recs: list[dict[str, Any]], features: dict[str, Any], valid_metric: str) -> list[str]:
    """LMM4Rec's table for one dataset: every model under each paradigm, model by model; beside the
    test metrics of each run's best epoch, the validation metric of all runs at one equal epoch (the
    fewest epochs any of them ran), as the runs may have different budgets."""
    order = {"pre-trained": 0, "fine-tuned": 1, "end to end": 2}
    rows = []
    runs = by_run(recs)
    for seeds in runs:
        kind, encoder = paradigm(seeds[0]["feature_set"], features)
        rows.append((seeds[0]["model"], order[kind], kind, encoder, seeds))
    equal = min(int(rec["epochs_run"]) for rec in recs)
    versus = versus_best(compared(runs, TESTED_METRIC), TESTED_METRIC)
    header = ["model", "paradigm", "item features", *TABLE_METRICS, "best epoch", f"valid {valid_metric} at epoch "
              f"{equal}", "s/epoch", "encoder params trained"]  # fmt: skip
    header += ["vs best"] if versus else []
    table = []
    for model, _, kind, encoder, seeds in sorted(rows, key=lambda r: (r[0], r[1])):
        at_equal = [v for v in (valid_at_epoch(r, valid_metric, equal) for r in seeds) if v is not None]
        table.append(
            [model, kind, encoder, *(cell(seeds, "test", m) for m in TABLE_METRICS), epochs_cell(seeds),
             mean_std(at_equal) if len(at_equal) == len(seeds) else "-", per_epoch(seeds),
             f"{seeds[0].get('encoder_params_trained', 0):,}"]
            + ([versus.get(run_label(seeds[0]), "-")] if versus else [])
        )  # fmt: skip
    return [
        f"## {dataset}: LMM4Rec (pre-trained, fine-tuned, end-to-end encoders)",
        "",
        "Warm setting, as above. Pre-trained and fine-tuned: the encoder's frozen features (features stage); "
        "end to end: the encoder's top blocks trained by the recommendation loss (train.e2e).",
        "",
        markdown_table(table, header),
        "",
        *([significance_note(TESTED_METRIC, max(len(r) for r in runs)), ""] if versus else []),
    ]


SEQ_TABLE = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")  # PMMRec reports HR/NDCG@10


def seq_label(rec: dict[str, Any], with_model: bool) -> str:
    """A transfer run's row label: its variant, prefixed by its model when a table holds several."""
    return f"{rec['model']} {rec['variant']}" if with_model else rec["variant"]


def sequential_sections(cfg: pipeline.PipelineConfig, records: list[dict[str, Any]], runs_root: Path) -> list[str]:
    """One table per transfer target: SASRec, PMMRec from scratch, transferred per part, one modality."""
    md: list[str] = []
    for target in cfg.transfer_targets:
        recs = [r for r in records if r["target"] == target]
        if not recs:
            continue
        info, models = recs[0], list(dict.fromkeys(r["model"] for r in recs))
        md += [
            f"## {target}: sequential ({', '.join(models)}, leave-one-out, full ranking)",
            "",
            f"{info['users']} sequences ({info['users_dropped_short']} users with fewer than 3 items dropped), "
            f"{info['items']} items; the last item of each user is the test target, the one before the validation "
            "target; the user's history is masked.",
            "",
        ]
        for model in cfg.pretrain_models:
            path = RunFiles(pretrain_dir(model, runs_root)).train_summary
            if path.is_file():
                pre = read_json(path)
                md += [
                    f"Pre-trained on {' + '.join(pre['sources'])}: {pre['users']} sequences, {pre['items']} items, "
                    f"{pre['epochs_run']} epochs (best {pre['best_epoch']}, valid HR@10 "
                    f"{pre['best_valid'].get('hr@10', float('nan')):.4f}), {pre['seconds_per_epoch']:.1f} s/epoch.",
                    "",
                ]
        several = len(models) > 1

        def label(rec: dict[str, Any], several: bool = several) -> str:
            return seq_label(rec, several)

        runs = by_run(recs, label)
        versus = versus_best(compared(runs, SEQ_TESTED_METRIC, label), SEQ_TESTED_METRIC)
        header = ["variant", "item tower", "pre-trained part", *SEQ_TABLE, "valid hr@10", "best epoch", "s/epoch",
                  "encoder params trained"] + (["vs best"] if versus else [])  # fmt: skip
        rows = [
            [label(r[0]), r[0]["item_tower"], r[0]["pretrain_part"], *(cell(r, "test", m) for m in SEQ_TABLE),
             cell(r, "valid", "hr@10"), epochs_cell(r), per_epoch(r, 2), f"{r[0]['encoder_params_trained']:,}"]
            + ([versus.get(label(r[0]), "-")] if versus else [])
            for r in runs
        ]  # fmt: skip
        md += [markdown_table(rows, header), ""]
        md += [significance_note(SEQ_TESTED_METRIC, max(len(r) for r in runs)), ""] if versus else []
        md += ["Every metric at every cut-off: sequential.csv.", ""]
    return md


def run(params: dict[str, Any], runs_root: Path = RUNS, out_root: Path = REPORTS) -> str:
    start = time.perf_counter()
    params = declared(params, param_keys())
    cfg = pipeline.PipelineConfig.parse(params.get("pipeline"), "pipeline")
    valid_metric = params["train"]["common"]["valid_metric"]
    tables = load_published()
    records = collect(cfg, runs_root)
    sequential = collect_sequential(cfg, runs_root)
    if not records and not sequential:
        raise FileNotFoundError(f"{runs_root}: no evaluation.json for the enabled datasets/models; run evaluate first")
    columns = metric_columns(records)

    md = [
        "# Results",
        "",
        "Full-ranking test metrics (MMRec definitions, training items masked), and the best validation value that "
        "chose the epoch. Every metric of every run is in results.csv. Generated by `dvc repro`; do not edit.",
        "",
        seeds_sentence(cfg.seeds),
        "",
        *missing_seeds(records + sequential, len(cfg.seeds)),
    ]
    csv_rows = []
    for dataset in cfg.train_datasets:
        name = dataset_config(params, dataset).published
        if name is not None and name not in tables:
            raise ParamsError(
                f"params.yaml: datasets.{dataset}.published = {name!r} is not a table of {PUBLISHED} "
                f"(tables: {', '.join(tables) or 'none'})"
            )
        published = tables.get(name) if name else None
        for setting in pipeline.SETTINGS:
            recs = [r for r in records if (r["dataset"], r["setting"]) == (dataset, setting)]
            recs = [r for r in recs if r["group"] not in LMM_GROUPS]
            if not recs:
                continue
            md += dataset_section(dataset, setting, recs, published, valid_metric)
            csv_rows += [csv_row(r) for r in recs]
            if setting == "cold":
                # each model once, though it may have several warm runs (feature sets, LMM4Rec's paradigms)
                skipped = dict.fromkeys(
                    r["model"]
                    for r in records
                    if r["dataset"] == dataset and r["setting"] == "warm" and not r.get("scores_cold_items", False)
                )
                if skipped:
                    md += [
                        f"Not evaluated on cold-start items (they cannot rank items unseen in training): "
                        f"{', '.join(skipped)}.",
                        "",
                    ]
            plot = f"plots/{dataset}_{setting}_valid_{valid_metric.replace('@', '_at_')}.png"
            md += [f"![valid {valid_metric}]({plot})", ""]
        lmm = [r for r in records if r["dataset"] == dataset and r["group"] in LMM_GROUPS]
        if lmm:
            md += lmm4rec_section(dataset, lmm, params.get("features") or {}, valid_metric)
            csv_rows += [csv_row(r) for r in lmm]

    md += sequential_sections(cfg, sequential, runs_root)
    out_root.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_root)
    seq_buf = io.StringIO()
    seq_columns = sorted(
        {k for r in sequential for k in r["test"]}, key=lambda k: (k.split("@")[0], int(k.split("@")[1]))
    )
    writer = csv.DictWriter(
        seq_buf, fieldnames=["dataset", "model", "variant", "seed", *seq_columns], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(
        {"dataset": r["target"], "model": r["model"], "variant": r["variant"], "seed": r["seed"], **r["test"]}
        for r in sequential
    )
    write_text(files.sequential_csv, seq_buf.getvalue())
    with atomic_dir(files.plots) as tmp:
        plots = plot_curves([r for r in records if r["group"] not in LMM_GROUPS], tmp, valid_metric)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["dataset", "setting", "model", "feature_set", "seed", *columns], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(csv_rows)
    write_text(files.results_csv, buf.getvalue())
    text = "\n".join(md)
    write_text(files.results_md, text)
    log.info(
        "report: %d runs, %d plots -> %s (%.1f s)",
        len(records), len(plots), files.results_md, time.perf_counter() - start,
    )  # fmt: skip
    return text


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, (), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
