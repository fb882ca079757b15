"""report: one table per dataset and setting, published numbers beside ours, curves, unsupported cold-start."""

from __future__ import annotations

import json

import pytest

from mmpipe import significance
from stages import report


def write_run(root, dataset, model, setting, recall, scores_cold=True, epochs=3, feature_set="default", seed=2026):
    run = root / dataset / model / feature_set / setting if feature_set else root / dataset / model / setting
    run = run / f"seed-{seed}"
    run.mkdir(parents=True)
    metrics = {
        "model": model,
        "setting": setting,
        "feature_set": feature_set,
        "test": {f"{m}@{k}": recall / k for m in ("recall", "ndcg", "precision", "map") for k in (10, 20)},
        "valid": {"recall@20": recall / 19, "ndcg@20": recall / 40},
        "users_evaluated": 7,
        "best_epoch": epochs,
        "scores_cold_items": scores_cold,
        "dataset_stats": {"users": 9, "items": 5, "train": 20, "valid": 3, "test": 4},
    }
    (run / "evaluation.json").write_text(json.dumps(metrics))
    (run / "train_times.json").write_text(json.dumps({"seconds_per_epoch": 0.5, "train_seconds": 0.5 * epochs}))
    rows = "\n".join(f"{e},0.5,{recall / 20 * e / epochs}" for e in range(1, epochs + 1))
    (run / "history.csv").write_text("epoch,loss,valid_recall@20\n" + rows + "\n")
    return run


def test_report_tables_published_numbers_and_plots(tmp_path, params):
    runs = tmp_path / "runs"
    params["pipeline"].update(
        datasets=["baby"],
        train_datasets=["baby"],
        id_models=["bpr"],
        feature_models=["vbpr"],
        graph_models=[],
        cold_feature_models=["vbpr"],
        cold_graph_models=[],
    )
    params["datasets"] = {"baby": {"source": "mmrec", "published": "mmrec-baby"}}
    write_run(runs, "baby", "bpr", "warm", 1.0, scores_cold=False, feature_set=None)
    write_run(runs, "baby", "vbpr", "warm", 2.0)
    write_run(runs, "baby", "vbpr", "cold", 0.4)
    write_run(runs, "baby", "lattice", "warm", 9.0)  # not enabled: left out
    text = report.run(params, runs, tmp_path / "reports")
    assert "## baby: warm" in text and "## baby: cold-start" in text
    warm_table = text.split("## baby: warm")[1].split("## baby: cold")[0]
    assert "| bpr | 0.1000 | 0.0500 | 0.1000 | 0.0500 | 0.0526 |" in warm_table  # recall/ndcg@10/20, valid recall@20
    assert "| vbpr (default) | 0.2000 |" in warm_table  # a feature-reading model names its feature set
    assert "| 0.0575 | 0.0249 |" in warm_table  # MMRec's published BPR on Baby beside ours
    assert "enoche/MMRec, evaluation/README.md" in warm_table and "split: MMRec's Baby" in warm_table
    assert "lattice" not in text
    assert "Not evaluated on cold-start items (they cannot rank items unseen in training): bpr." in text
    csv_rows = (tmp_path / "reports/results.csv").read_text().splitlines()
    assert csv_rows[0].startswith("dataset,setting,model,feature_set,seed,recall@10,recall@20") and len(csv_rows) == 4
    plots = sorted(p.name for p in (tmp_path / "reports/plots").iterdir())
    assert plots == ["baby_cold_valid_recall_at_20.png", "baby_warm_valid_recall_at_20.png"]


def test_report_names_an_unknown_published_table(tmp_path, params):
    params["pipeline"].update(datasets=["baby"], train_datasets=["baby"], id_models=["bpr"])
    params["datasets"] = {"baby": {"source": "mmrec", "published": "mmrec-babby"}}
    write_run(tmp_path / "runs", "baby", "bpr", "warm", 1.0, scores_cold=False, feature_set=None)
    with pytest.raises(ValueError, match=r"published = 'mmrec-babby' is not a table of .*mmrec-baby, mmrec-sports"):
        report.run(params, tmp_path / "runs", tmp_path / "reports")


def test_report_without_runs_says_what_to_do(tmp_path, params):
    with pytest.raises(FileNotFoundError, match="run evaluate first"):
        report.run(params, tmp_path / "runs", tmp_path / "reports")
    assert not (tmp_path / "reports/results.md").exists()


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, 2 x 0.02, max(0.04, 1 x 0.04) -> 0.03, 0.04, 0.04
    assert significance.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert significance.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, non-decreasing


def test_each_model_is_tested_against_the_best_over_the_same_users(tmp_path, params):
    """The warm table's "vs best" column: each run's per-user Recall@20 paired with the best run's on
    user_idx, scipy's two-sided Wilcoxon signed-rank test, Holm-adjusted over the table's comparisons."""
    import numpy as np
    import pyarrow as pa
    from scipy.stats import wilcoxon

    from mmpipe.io import write_parquet

    runs = tmp_path / "runs"
    params["pipeline"].update(datasets=["demo"], train_datasets=["demo"], id_models=["pop", "bpr", "lightgcn"],
                              feature_models=[], graph_models=[], cold_feature_models=[], cold_graph_models=[],
                              lmm4rec_models=[], e2e_models=[])  # fmt: skip
    rng = np.random.default_rng(0)
    users = np.arange(40, dtype=np.int32)
    values = {"lightgcn": rng.uniform(0.3, 1.0, 40)}
    values["bpr"] = np.clip(values["lightgcn"] - rng.uniform(0.0, 0.4, 40), 0, 1)  # clearly worse, every user
    values["pop"] = values["lightgcn"].copy()
    values["pop"][:3] -= 0.05  # worse on 3 users only
    for model, per_user in values.items():
        run = write_run(runs, "demo", model, "warm", float(per_user.mean()) * 20, feature_set=None)
        order = users[::-1] if model == "pop" else users  # paired on user_idx, not on row order
        write_parquet(run / "per_user.parquet", pa.table({"user_idx": order, "recall@20": per_user[order]}))
    text = report.run(params, runs, tmp_path / "reports")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["lightgcn"].endswith("| best |")
    p_bpr = wilcoxon(values["lightgcn"], values["bpr"]).pvalue
    p_pop = wilcoxon(values["lightgcn"], values["pop"]).pvalue
    adjusted = significance.holm([p_pop, p_bpr])
    assert "(p < 1e-4) *" in rows["bpr"] and adjusted[1] < 1e-4  # p shown as a bound below 1e-4
    assert f"(p {adjusted[0]:.2g})" in rows["pop"] and adjusted[0] >= 0.05 and "*" not in rows["pop"].split("|")[-2]
    assert "Wilcoxon signed-rank" in text and "Holm-adjusted" in text


def test_the_sequential_table_tests_each_variant_against_the_best(tmp_path, params):
    """PMMRec's table: each transfer variant's per-user HR@10 (the transfer stage's per_user.parquet)
    against the best variant's, Wilcoxon signed-rank, Holm-adjusted; the column and its note are there."""
    import numpy as np
    import pyarrow as pa
    from scipy.stats import wilcoxon

    from mmpipe.io import write_parquet

    runs = tmp_path / "runs"
    params["pipeline"].update(
        datasets=["demo", "demo_b"], train_datasets=["demo"], id_models=["pop"], feature_models=[], graph_models=[],
        cold_feature_models=[], cold_graph_models=[], lmm4rec_models=[], e2e_models=[], pretrain_models=["pmmrec"],
        pretrain_sources=["demo"], transfer_targets=["demo_b"], transfer_variants=["sasrec", "full"],
    )  # fmt: skip
    write_run(runs, "demo", "pop", "warm", 1.0, feature_set=None)
    rng = np.random.default_rng(1)
    hits = {"full": (rng.uniform(size=60) < 0.5).astype(np.float32)}
    hits["sasrec"] = hits["full"] * (rng.uniform(size=60) < 0.5)  # a subset of full's hits: clearly worse
    for variant, hr in hits.items():
        run = runs / "demo_b" / "pmmrec" / variant / "seed-2026"
        run.mkdir(parents=True)
        test = {"hr@10": float(hr.mean()), "ndcg@10": 0.1, "hr@20": 0.2, "ndcg@20": 0.1}
        record = {"target": "demo_b", "variant": variant, "item_tower": "id", "pretrain_part": "none", "test": test,
                  "valid": {"hr@10": 0.3}, "best_epoch": 1, "seconds_per_epoch": 0.1, "encoder_params_trained": 0,
                  "users": 60, "users_dropped_short": 0, "items": 30}  # fmt: skip
        (run / "evaluation.json").write_text(json.dumps(record))
        write_parquet(run / "per_user.parquet", pa.table({"user_idx": np.arange(60, dtype=np.int32), "hr@10": hr}))
    text = report.run(params, runs, tmp_path / "reports")
    section = text.split("## demo_b: sequential")[1]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ")}
    assert rows["full"].endswith("| best |")
    p = wilcoxon(hits["full"], hits["sasrec"]).pvalue  # one comparison: Holm leaves it as is
    shown = f"p {p:.2g}" if p >= 1e-4 else "p < 1e-4"
    assert f"| {hits['sasrec'].mean() - hits['full'].mean():+.4f} ({shown}) * |" in rows["sasrec"]
    assert "vs best: the difference in mean test hr@10" in section


def test_several_seeds_give_mean_sd_per_seed_csv_rows_and_both_tests(tmp_path, params):
    """Three seeds per run: the table shows mean ± sample sd and each seed's best epoch, results.csv one
    row per seed; "vs best" pairs each user's mean over the seeds (Wilcoxon) and compares the seeds'
    values unpaired (Welch), each family Holm-adjusted; a seed not in pipeline.seeds is not read."""
    import statistics

    import numpy as np
    import pyarrow as pa
    from scipy.stats import ttest_ind, wilcoxon

    from mmpipe.io import write_parquet

    runs = tmp_path / "runs"
    seeds = [1, 2, 3]
    params["pipeline"].update(datasets=["demo"], train_datasets=["demo"], id_models=["pop", "lightgcn"], seeds=seeds,
                              feature_models=[], graph_models=[], cold_feature_models=[], cold_graph_models=[],
                              lmm4rec_models=[], e2e_models=[])  # fmt: skip
    rng = np.random.default_rng(3)
    users = np.arange(50, dtype=np.int32)
    per_user = {
        (model, seed): np.clip(rng.uniform(0.2, 0.9, 50) - (0.25 if model == "pop" else 0.0), 0, 1)
        for model in ("pop", "lightgcn")
        for seed in seeds
    }
    recall = {key: float(v.mean()) for key, v in per_user.items()}
    for (model, seed), values in per_user.items():
        run = write_run(runs, "demo", model, "warm", recall[model, seed] * 20, feature_set=None, seed=seed, epochs=seed)
        write_parquet(run / "per_user.parquet", pa.table({"user_idx": users, "recall@20": values}))
    write_run(runs, "demo", "pop", "warm", 19.0, feature_set=None, seed=4)  # not a seed of pipeline.seeds
    text = report.run(params, runs, tmp_path / "reports")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    pop = [recall["pop", s] for s in seeds]
    best = [recall["lightgcn", s] for s in seeds]
    recall20 = f"{statistics.fmean(pop):.4f} ± {statistics.stdev(pop):.4f}"  # write_run: recall@10 = 2 x @20
    assert rows["pop"].startswith(
        f"| pop | {2 * statistics.fmean(pop):.4f} ± {2 * statistics.stdev(pop):.4f} | {recall20} |"
    )
    assert "| 1/2/3 |" in rows["pop"] and rows["lightgcn"].endswith("| best |")
    p_users = wilcoxon(np.mean([per_user["lightgcn", s] for s in seeds], axis=0),
                       np.mean([per_user["pop", s] for s in seeds], axis=0)).pvalue  # fmt: skip
    p_seeds = ttest_ind(best, pop, equal_var=False).pvalue  # one comparison: Holm leaves both as they are
    shown = f"p {p_users:.2g}" if p_users >= 1e-4 else "p < 1e-4"
    cell = f"{statistics.fmean(pop) - statistics.fmean(best):+.4f} ({shown}) * seeds p {p_seeds:.2g}"
    assert cell in rows["pop"], rows["pop"]
    assert "mean over the run's 3 seeds" in text and "Welch's t-test" in text and "pipeline.seeds (1, 2, 3)" in text
    csv_rows = (tmp_path / "reports/results.csv").read_text().splitlines()
    assert [r.split(",")[2:5] for r in csv_rows[1:]] == [["pop", "", "1"], ["pop", "", "2"], ["pop", "", "3"],
                                                         ["lightgcn", "", "1"], ["lightgcn", "", "2"],
                                                         ["lightgcn", "", "3"]]  # fmt: skip


def test_a_run_missing_a_seed_is_named(tmp_path, params):
    """A seed added to pipeline.seeds whose stages have not run yet: the report says which runs lack it."""
    runs = tmp_path / "runs"
    params["pipeline"].update(datasets=["demo"], train_datasets=["demo"], id_models=["pop", "bpr"], seeds=[1, 2],
                              feature_models=[], graph_models=[], cold_feature_models=[], cold_graph_models=[],
                              lmm4rec_models=[], e2e_models=[])  # fmt: skip
    for model, seeds in (("pop", (1, 2)), ("bpr", (2,))):
        for seed in seeds:
            write_run(runs, "demo", model, "warm", 1.0, feature_set=None, seed=seed)
    text = report.run(params, runs, tmp_path / "reports")
    assert (
        "**Seeds missing** (stages not run yet; these rows summarise the seeds present): demo/bpr warm (1 of 2)."
        in text
    )
    assert "demo/pop" not in text
