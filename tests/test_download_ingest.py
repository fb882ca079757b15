"""download (demo source) and ingest: formats, bad lines, duplicates, k-core, split, determinism."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from mmpipe.io import read_json, sha256_file
from stages import download, ingest
from stages.common.params import ParamsError
from stages.sources import line_parser, splits
from tests.conftest import k_core_frame


def write_raw(raw_dir: Path, reviews: list[str], meta: list[str], gz: bool = True) -> None:
    """A raw dataset folder with a manifest, as download writes it."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for role, lines in (("reviews", reviews), ("meta", meta)):
        name = f"{role}.json" + (".gz" if gz else "")
        data = ("\n".join(lines) + "\n").encode("utf-8")
        (raw_dir / name).write_bytes(gzip.compress(data) if gz else data)
        files.append({"role": role, "path": name})
    (raw_dir / "MANIFEST.json").write_text(json.dumps({"files": files}))


def review(user: str, item: str, t: int, rating: float = 5.0) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": t})


def full_grid_reviews(n_users: int, n_items: int) -> list[str]:
    """Every user reviews every item, at increasing times (so every k-core holds)."""
    return [review(f"U{u:02d}", f"I{i:02d}", 1000 * u + i) for u in range(n_users) for i in range(n_items)]


def test_demo_download_is_deterministic_and_manifest_matches(tmp_path, params):
    a = download.run("demo", params, tmp_path / "a")
    download.run("demo", params, tmp_path / "b")
    for entry in a["files"]:
        pa_, pb = tmp_path / "a/demo" / entry["path"], tmp_path / "b/demo" / entry["path"]
        assert pa_.read_bytes() == pb.read_bytes()
        assert entry["sha256"] == sha256_file(pa_) and entry["bytes"] == pa_.stat().st_size
    manifest = read_json(tmp_path / "a/demo/MANIFEST.json")
    assert manifest["images"]["count"] == len(list((tmp_path / "a/demo/images").iterdir()))
    planted = manifest["generator"]["planted"]
    assert planted["malformed_review_lines"] == 3 and planted["items_without_image"] > 0


def test_demo_meta_is_python_literal_like_amazon_2014(tmp_path, params):
    download.run("demo", params, tmp_path)
    with gzip.open(tmp_path / "demo/meta_Demo.json.gz", "rt") as fh:
        first = fh.readline()
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)  # single quotes: not JSON
    record = line_parser.parse_record(first)
    assert {"asin", "title", "categories", "imUrl"} <= set(record)
    assert isinstance(record["categories"][0], list)


def test_unsupported_source_is_a_clear_error(tmp_path, params):
    params["datasets"]["x"] = {"source": "amazon2099"}
    with pytest.raises(ParamsError, match=r"datasets.x.source = 'amazon2099' is not supported"):
        download.run("x", params, tmp_path)
    assert not (tmp_path / "x").exists()


def test_ingest_counts_malformed_lines_with_numbers(tmp_path, params):
    reviews = full_grid_reviews(5, 5)
    reviews.insert(2, '{"reviewerID": "U00", "asin": ')  # line 3: truncated
    reviews.insert(5, json.dumps({"reviewerID": "U01", "unixReviewTime": 5}))  # line 6: no asin
    reviews.append("\u00ff\u00fe not json")  # last line: garbage
    meta = [repr({"asin": f"I{i:02d}", "title": f"Item &amp; {i}", "categories": [["Baby", "Toys"]]}) for i in range(5)]
    meta.insert(1, "{'asin': 'I99', 'title': 'cut")
    write_raw(tmp_path / "raw/x", reviews, meta)
    stats = ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    bad = stats["malformed"]["reviews"]
    assert bad["count"] == 3
    assert [e["line"] for e in bad["first"]] == [3, 6, len(reviews)]
    assert "missing field 'asin'" in bad["first"][1]["reason"]
    assert stats["malformed"]["meta"]["count"] == 1 and stats["malformed"]["meta"]["first"][0]["line"] == 2
    items = pq.read_table(tmp_path / "out/x/items.parquet").to_pylist()
    assert items[0]["title"] == "Item & 0"  # HTML entities unescaped
    assert items[0]["categories"] == ["Baby", "Toys"]


def test_ingest_reads_plain_text_and_bad_utf8(tmp_path, params):
    reviews = full_grid_reviews(5, 5)
    write_raw(tmp_path / "raw/x", reviews, ['{"asin": "I00", "title": "caf\\u00e9"}'], gz=False)
    path = tmp_path / "raw/x/reviews.json"
    path.write_bytes(path.read_bytes() + b'{"reviewerID": "U00", "asin": "I00\xff", "unixReviewTime": 1}\n')
    stats = ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    assert stats["rows_read"]["reviews_parsed"] == 26  # the bad byte is replaced, the line still parses
    assert stats["interactions"] == 25  # its item has one review: removed by the 5-core
    items = pq.read_table(tmp_path / "out/x/items.parquet").to_pylist()
    assert items[0]["title"] == "café" and items[1]["title"] is None  # no meta -> nulls, item kept
    assert stats["items_missing"]["meta"] == 4


def test_duplicates_keep_earliest_review(tmp_path, params):
    reviews = full_grid_reviews(5, 5)
    reviews.append(reviews[0])  # exact duplicate line
    reviews.append(review("U00", "I00", 999_999, rating=1.0))  # same pair, later
    write_raw(tmp_path / "raw/x", reviews, [])
    stats = ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    assert stats["duplicates"] == {"exact_lines": 1, "repeated_pairs_kept_earliest": 1}
    inter = pq.read_table(tmp_path / "out/x/interactions.parquet").to_pandas()
    row = inter[(inter.user_idx == 0) & (inter.item_idx == 0)]
    assert row.timestamp.tolist() == [0] and row.rating.tolist() == [5.0]


def test_k_core_iterates_until_stable():
    # Round 1 drops items i3, i4 (2 users each); then u3, u4 fall to 2 items (round 2); then i5 falls to
    # 1 user (round 3); the 3x3 block u0-u2 x i0-i2 is what a 3-core keeps.
    rows = [(u, i) for u in ("u0", "u1", "u2") for i in ("i0", "i1", "i2")]
    rows += [(u, i) for u in ("u3", "u4") for i in ("i0", "i3", "i4", "i5")]
    rows += [("u0", "i5")]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
    out, rounds = k_core_frame(frame, user_min=3, item_min=3)
    assert sorted(out.user_id.unique()) == ["u0", "u1", "u2"]
    assert sorted(out.item_id.unique()) == ["i0", "i1", "i2"] and len(out) == 9
    assert [(r["users_removed"], r["items_removed"]) for r in rounds] == [(0, 2), (2, 0), (0, 1)]
    assert sum(r["interactions_removed"] for r in rounds) == len(frame) - 9


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (5, [0, 0, 0, 1, 2]),  # n < 10: the last two are valid, test (MMRec)
        (9, [0] * 7 + [1, 2]),
        (10, [0] * 8 + [1, 2]),  # int(10 * 0.2) = 2
        (13, [0] * 11 + [1, 2]),
        (15, [0] * 12 + [1, 2, 2]),  # int(15 * 0.2) = 3: 1 valid, 2 test
        (20, [0] * 16 + [1, 1, 2, 2]),
        (2, [0, 2]),  # never an empty train
    ],
)
def test_user_time_split_follows_mmrec_rule(n, expected):
    split = splits.split_user_time(np.zeros(n, dtype=np.int32), [0.8, 0.1, 0.1])
    assert split.tolist() == expected


def test_split_is_chronological_per_user(tmp_path, params):
    # user U00 reviews items in reverse id order over time: the latest two become valid/test
    reviews = [review("U00", f"I{i:02d}", 100 - i) for i in range(5)]
    reviews += [review(f"U{u:02d}", f"I{i:02d}", i) for u in range(1, 5) for i in range(5)]
    write_raw(tmp_path / "raw/x", reviews, [])
    ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    inter = pq.read_table(tmp_path / "out/x/interactions.parquet").to_pandas()
    u0 = inter[inter.user_idx == 0].sort_values("timestamp")
    assert u0.split.tolist() == [0, 0, 0, 1, 2]
    assert u0.item_idx.tolist()[-2:] == [1, 0]  # latest reviews: items I01 then I00


def test_ingest_on_demo_is_byte_identical_across_runs(tmp_path, params, demo_project):
    for run in ("a", "b"):
        ingest.run("demo", params, demo_project / "raw", tmp_path / run)
    for name in ("interactions.parquet", "items.parquet", "users.parquet", "ingest_stats.json"):
        assert (tmp_path / "a/demo" / name).read_bytes() == (tmp_path / "b/demo" / name).read_bytes(), name
    stats = read_json(tmp_path / "a/demo/ingest_stats.json")
    assert stats["malformed"]["reviews"]["count"] == 3 and stats["malformed"]["meta"]["count"] == 2
    assert stats["duplicates"]["exact_lines"] > 0 and stats["duplicates"]["repeated_pairs_kept_earliest"] > 0
    inter = pq.read_table(tmp_path / "a/demo/interactions.parquet").to_pandas()
    assert inter.groupby("user_idx").size().min() >= 5 and inter.groupby("item_idx").size().min() >= 5
    assert inter.user_idx.max() + 1 == stats["users"] and inter.item_idx.max() + 1 == stats["items"]


def test_missing_manifest_role_is_a_clear_error(tmp_path, params):
    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), [])
    manifest = tmp_path / "raw/x/MANIFEST.json"
    manifest.write_text(json.dumps({"files": [{"role": "reviews", "path": "reviews.json.gz"}]}))
    with pytest.raises(ValueError, match="MANIFEST.json: no file with role 'meta'"):
        ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    (tmp_path / "raw/x/reviews.json.gz").unlink()
    with pytest.raises(FileNotFoundError, match="reviews.json.gz: listed in"):
        ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out/x/interactions.parquet").exists()


def test_k_core_that_empties_the_data_stops_with_reason(tmp_path, params):
    write_raw(tmp_path / "raw/x", full_grid_reviews(3, 3), [])
    with pytest.raises(ValueError, match="no interactions left after 5/5-core"):
        ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    shutil.rmtree(tmp_path / "raw")


# ---------------------------------------------------------------------------- real data as it comes (issue 12)


def test_reviews_without_one_valid_line_say_so(tmp_path, params):
    write_raw(tmp_path / "raw/x", ["{not json", '{"reviewerID": "U1"}', ""], [])
    with pytest.raises(ValueError) as err:
        ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    message = str(err.value)  # was: "no interactions left after 5/5-core filtering"
    assert "no valid review line was read (3 lines, 2 malformed; first: reviews.json.gz: line 1:" in message
    assert "line 2: missing field 'asin'" in message
    (tmp_path / "raw/x/reviews.json.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(ValueError, match=r"reviews.json.gz: empty: no review line to read"):
        ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out/x").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("kcore.user_min", "five", r"kcore.user_min = 'five': expected an integer"),
        ("kcore.user_min", 5.7, r"kcore.user_min = 5.7: expected an integer \(no fractional part\)"),
        ("kcore.item_min", -1, r"kcore.item_min = -1: must be >= 1"),
        ("kcore.rating_min", "4", r"kcore.rating_min = '4': expected a number or null"),
        ("kcore.user_minn", 5, r"kcore has unknown key 'user_minn' \(known: user_min, item_min, rating_min\)"),
        ("split.ratios", [0.5, 0.5, 0.5], r"split.ratios = \[0.5, 0.5, 0.5\] sum to 1.5; the shares must sum to 1"),
        ("split.ratios", [0.1, 0.1, 0.1], r"sum to 0.3; the shares must sum to 1"),
        ("split.ratios", [0.8, 0.2], r"expected three non-negative shares"),
        ("split.method", "by_time", r"split.method = 'by_time' is not supported \(supported: user_time, random"),
    ],
)  # fmt: skip
def test_ingest_params_are_checked_with_the_key_the_value_and_what_is_allowed(tmp_path, params, key, value, message):
    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), [])
    block, name = key.split(".")
    params[block][name] = value
    with pytest.raises(ParamsError, match=message):
        ingest.run("x", params, tmp_path / "raw", tmp_path / "out")


def test_a_bad_param_is_one_line_on_the_command_line(tmp_path, params, monkeypatch, capsys):
    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), [])
    params["kcore"]["user_min"] = "five"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert ingest.main(["--dataset", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: params.yaml: kcore.user_min = 'five': expected an integer"  # no traceback


def test_meta_text_repairs_are_made_and_counted(tmp_path, params):
    meta = [
        "{'asin': 'I00', 'title': 'Cup', 'price': nan, 'categories': [['Baby']]}",  # Python's repr of a missing price
        json.dumps({"asin": "I01", "title": '<span class="a-size-medium a', "description": "<b>Big</b> mug"}),
        json.dumps({"asin": "I02", "title": float("nan"), "brand": "B"}),  # JSON NaN where text belongs
    ]  # fmt: skip
    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), meta)
    path = tmp_path / "raw/x/meta.json.gz"
    path.write_bytes(
        gzip.compress(gzip.decompress(path.read_bytes()) + b"{'asin': 'I03', 'title': 'Caf\xe9 cr\xe8me'}\n")
    )
    stats = ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    items = {r["item_id"]: r for r in pq.read_table(tmp_path / "out/x/items.parquet").to_pylist()}
    assert items["I00"]["title"] == "Cup" and items["I00"]["categories"] == ["Baby"]  # was: the line was dropped
    assert items["I01"]["title"] is None and items["I01"]["description"] == "Big mug"  # markup is not text
    assert items["I02"]["title"] is None and items["I02"]["brand"] == "B"
    assert items["I03"]["title"] == "Café crème"  # Windows-1252 bytes decoded, not U+FFFD
    assert stats["malformed"]["meta"]["count"] == 0
    assert stats["repaired"]["meta"] == {"decoded_as_cp1252": 1, "markup_stripped": 2, "nan_as_missing": 2}


def test_outputs_of_different_ingest_runs_are_never_paired(tmp_path, params):
    from mmpipe.io import read_parquet, write_parquet
    from models.core.data import load_split

    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), [])
    ingest.run("x", params, tmp_path / "raw", tmp_path / "a")
    write_raw(tmp_path / "raw/x", full_grid_reviews(6, 5), [])
    ingest.run("x", params, tmp_path / "raw", tmp_path / "b")
    mixed = tmp_path / "mixed/x"
    shutil.copytree(tmp_path / "a/x", mixed)
    shutil.copy(tmp_path / "b/x/interactions.parquet", mixed / "interactions.parquet")  # a crash between renames
    with pytest.raises(ValueError, match=r"written by different ingest runs; re-run ingest"):
        load_split(mixed, "warm")
    # files without an id (written by hand, or by an older version) are not held to it
    write_parquet(mixed / "interactions.parquet", read_parquet(tmp_path / "a/x/interactions.parquet"))
    assert load_split(mixed, "warm").n_users == 5


@pytest.mark.parametrize("encoding", ["utf-16", "malformed"])
def test_a_meta_file_without_one_usable_line_is_an_error(tmp_path, params, encoding):
    """Every item would silently lose its text: the meta side stops as the reviews side does."""
    meta = [json.dumps({"asin": f"I{i:02d}", "title": f"item {i}"}) for i in range(5)]
    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), [])
    if encoding == "utf-16":
        data = ("\n".join(meta) + "\n").encode("utf-16")
    else:
        data = ("\n".join("{broken " + line for line in meta) + "\n").encode("utf-8")
    (tmp_path / "raw/x/meta.json.gz").write_bytes(gzip.compress(data))
    with pytest.raises(ValueError, match=r"meta.json.gz: no usable meta record \(\d+ lines?, \d+ malformed; first: "):
        ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out/x/items.parquet").exists()


def test_kept_items_without_a_meta_record_are_named_in_a_warning(tmp_path, params, caplog):
    meta = [json.dumps({"asin": f"I{i:02d}", "title": f"item {i}"}) for i in range(3)]  # I03, I04 have none
    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), meta)
    with caplog.at_level("WARNING", logger="mmpipe.ingest"):
        stats = ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    assert stats["items_missing"]["meta"] == 2
    assert "meta.json.gz: 2 of the 5 kept items have no record (first: I03, I04)" in caplog.text


def test_what_a_killed_ingest_left_is_removed_by_the_next_run(tmp_path, params):
    """SIGKILL skips every `finally`: the next run removes temporaries of processes that no longer run."""
    write_raw(tmp_path / "raw/x", full_grid_reviews(5, 5), [])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    out = tmp_path / "out/x"
    stale = [out / f".ingest.{pid}.abc.tmp", out / f".shipped.{pid}.def.tmp", out / f".shipped.{pid}.g.old"]
    for path in stale:
        (path / "part").mkdir(parents=True)
    live = out / f".ingest.{os.getpid()}.mine.tmp"  # a run still going (this process): kept
    live.mkdir()
    ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    # ingest's own temporaries and shipped/'s (written with atomic_dir) are cleared; the live run's is kept
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [live.name]
