"""The numbers the README and docs/ quote are the committed reports' numbers.

`reports/results.csv` is written by the tour's `report` stage and `reports/full/` by `make demo-full`; a
table or sentence in the prose that was typed in by hand (or left behind by an earlier run) fails here.
The reports themselves are re-derived from a fresh run of the committed code by `make test-slow`
(tests/test_tour_twice.py compares that run's dvc.lock and results.csv with the committed ones).
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from mmpipe.significance import mean_std
from tests.conftest import ROOT

README_MODELS = {"Pop": "pop", "ItemKNN": "itemknn", "VBPR": "vbpr", "LightGCN": "lightgcn", "REARM": "rearm"}
DOC_MODELS = {"Pop": "pop", "BPR": "bpr", "LightGCN": "lightgcn", "VBPR": "vbpr", "ItemKNN-CBF": "itemknn",
              "LATTICE": "lattice", "FREEDOM": "freedom", "MICRO": "micro", "REARM": "rearm"}  # fmt: skip
PARADIGMS = {"pre-trained": "clip", "fine-tuned": "clip_ft", "end to end": "e2e"}


def markdown_tables(path) -> list[pd.DataFrame]:
    """Every table of a markdown file, in order."""
    tables, rows = [], []
    for line in [*path.read_text().splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            header, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            tables.append(pd.DataFrame(body, columns=header))
            rows = []
    return tables


def table_with(path, *columns: str) -> pd.DataFrame:
    """The one table of a markdown file whose header starts with `columns`."""
    found = [t for t in markdown_tables(path) if tuple(t.columns[: len(columns)]) == columns]
    assert len(found) == 1, (path, columns)
    return found[0]


def results(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def seeds(table: pd.DataFrame, **where: str) -> pd.DataFrame:
    """The rows of one run: one per seed."""
    match = table
    for column, value in where.items():
        match = match[match[column] == value]
    assert len(match) >= 1 and match["seed"].is_unique, where
    return match


def row(table: pd.DataFrame, **where: str) -> pd.Series:
    """The one row of a one-seed run (the tour's)."""
    match = seeds(table, **where)
    assert len(match) == 1, where
    return match.iloc[0]


def cell(table: pd.DataFrame, metric: str, **where: str) -> str:
    """A run's `metric` as the report writes it: mean ± sd over its seeds (the value for one seed)."""
    return mean_std(list(seeds(table, **where)[metric]))


def test_readme_quotes_the_tours_report():
    text = " ".join((ROOT / "README.md").read_text().split())
    sentence = re.search(r"test Recall@20 in `reports/results.md`: (.*?)\): the budgets", text).group(1)
    tour = results(ROOT / "reports/results.csv")
    warm = tour[(tour["dataset"] == "demo") & (tour["setting"] == "warm")]

    def recall(model: str, feature_set: str = "default") -> float:
        fs = "" if model in ("pop", "lightgcn") else feature_set
        return float(row(warm, model=model, feature_set=fs)["recall@20"])

    def same(quoted: str, actual: float) -> bool:
        return quoted == f"{actual:.3f}"

    for name, model in README_MODELS.items():
        quoted = re.search(rf"{name} (0\.\d+)", sentence)
        assert quoted and same(quoted.group(1), recall(model)), (name, recall(model))
    low, high = re.search(r"LATTICE, FREEDOM and MICRO (0\.\d+)-(0\.\d+)", sentence).groups()
    graph = [recall(m) for m in ("lattice", "freedom", "micro")]
    assert same(low, min(graph)) and same(high, max(graph)), graph
    assert same(re.search(r"ends its \d+ epochs at (0\.\d+)", text).group(1), recall("vbpr", "e2e"))


@pytest.mark.parametrize(("header", "setting"), [("model (warm)", "warm"), ("model (cold-start items)", "cold")])
def test_docs_results_tables_are_the_full_report(header, setting):
    table = table_with(ROOT / "docs/results.md", header, "Recall@20")
    full = results(ROOT / "reports/full/results.csv")
    for _, quoted in table.iterrows():
        model = DOC_MODELS[quoted[header].split(" (")[0]]
        fs = "" if model in ("pop", "bpr", "lightgcn") else "default"
        for column, metric in (("Recall@20", "recall@20"), ("NDCG@20", "ndcg@20")):
            actual = cell(full, metric, dataset="demo", setting=setting, model=model, feature_set=fs)
            assert quoted[column] == actual, (model, column)


def test_docs_systems_tables_are_the_full_report():
    transfer = table_with(ROOT / "docs/systems.md", "variant", "item tower")
    sequential = results(ROOT / "reports/full/sequential.csv")
    assert len(transfer) == len(sequential.drop_duplicates(["dataset", "model", "variant"]))
    for _, quoted in transfer.iterrows():
        for metric in ("hr@10", "ndcg@10", "hr@20", "ndcg@20"):
            actual = cell(sequential, metric, dataset="demo_b", variant=quoted["variant"])
            assert quoted[metric] == actual, (quoted["variant"], metric)
    lmm = table_with(ROOT / "docs/systems.md", "model", "paradigm")
    assert len(lmm) == 9
    full = results(ROOT / "reports/full/results.csv")
    for _, quoted in lmm.iterrows():
        run = {
            "dataset": "demo",
            "setting": "warm",
            "model": quoted["model"],
            "feature_set": PARADIGMS[quoted["paradigm"]],
        }
        for metric in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
            assert quoted[metric] == cell(full, metric, **run), (quoted["model"], quoted["paradigm"], metric)
