"""Raw formats (stages/sources/formats.py) and ingest's options: rating threshold, splits, several files."""

from __future__ import annotations

import ast
import gzip
import json
import random
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stages import download, ingest
from stages.common import interactions
from stages.common.params import ParamsError
from stages.sources import amazon, catalog, formats, line_parser, records, splits
from stages.sources.malformed import Malformed
from stages.sources.source import FILE_KEYS, FileSpec, Source
from tests.conftest import deduplicate_frame, k_core_frame

# ------------------------------------------------------------------------------------------------ helpers


def write(path: Path, lines: list[str] | bytes, gz: bool = False) -> Path:
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def reviews_of(path: Path, fmt: str = "amazon2014-reviews") -> tuple[list[tuple], Malformed, int]:
    bad = Malformed(path.name)
    cols = records.as_review_columns(formats.review_readers()[fmt](path, bad))
    rows = list(
        zip(
            cols.user_id.to_pylist(),
            cols.item_id.to_pylist(),
            cols.rating.tolist(),
            cols.timestamp.tolist(),
            strict=True,
        )
    )
    return rows, bad, cols.lines


def meta_of(path: Path, fmt: str, wanted: set[str] | None = None) -> tuple[list[dict], Malformed]:
    bad = Malformed(path.name)
    return list(formats.meta_readers()[fmt](path, bad, wanted)), bad


def r14(user: str, item: str, t: int, rating: float = 5.0, **extra) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": t, **extra})


def raw_dataset(root: Path, reviews: list[list[str]], meta: list[list[str]], **manifest_extra) -> Path:
    """raw/x with several reviews and meta files (JSON 2014 reviews, literal meta), listed in order."""
    raw = root / "raw" / "x"
    raw.mkdir(parents=True)
    files = []
    for role, groups in (("reviews", reviews), ("meta", meta)):
        for k, lines in enumerate(groups):
            name = f"{role}_{k}.json.gz"
            write(raw / name, lines, gz=True)
            files.append({"role": role, "path": name, "format": f"amazon2014-{role}"})
    (raw / "MANIFEST.json").write_text(json.dumps({"files": files, **manifest_extra}))
    return root / "raw"


def grid(users: range, items: range, t0: int = 0) -> list[str]:
    return [r14(f"U{u:02d}", f"I{i:02d}", t0 + 1000 * u + i) for u in users for i in items]


def read_out(root: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    inter = pq.read_table(root / "out/x/interactions.parquet").to_pandas()
    users = pq.read_table(root / "out/x/users.parquet").column("user_id").to_pylist()
    items = pq.read_table(root / "out/x/items.parquet").column("item_id").to_pylist()
    return inter, users, items


# --------------------------------------------------------------------------------------------- reviews


MESSY_2014 = [
    r14("U1", "I1", 100),
    '{"reviewerID": "U1", "asin": ',  # 2: truncated
    "",  # 3: blank, not counted
    "<html>502 Bad Gateway</html>",  # 4: not JSON
    r14("U2", "I1", 200, rating=4, reviewText="fine", helpful=[1, 2]),
    json.dumps({"reviewerID": "U3", "overall": 3.0, "unixReviewTime": 5}),  # 6: no asin
    r14("U3", "I2", 300, rating="five"),  # 7: bad number
    r14("U3", "I3", 400) + " " + r14("U3", "I4", 401),  # 8: two objects on one line
    json.dumps({"reviewerID": "U4", "asin": "I1", "unixReviewTime": 7}),  # 9: no rating -> 1.0
    json.dumps({"reviewerID": "U5", "asin": "I5", "overall": 2}),  # 10: no time
    json.dumps({"reviewerID": "", "asin": "I5", "unixReviewTime": 1}),  # 11: empty user
    r14("U6", "I6", 1.0),  # 12: a whole float time is accepted (per-line path)
    "  " + r14("U7", "I7", 700) + "  \r",  # 13: spaces and CR around an object
    "[1, 2, 3]",  # 14: not an object
    r14("U8", "I8", 800, style={"Size:": " Large"}, image=["http://x"]),
]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon2014_reviews_skip_and_count_with_line_numbers(tmp_path, gz):
    rows, bad, lines = reviews_of(write(tmp_path / "r.json", MESSY_2014, gz=gz))
    assert rows == [
        ("U1", "I1", 5.0, 100),
        ("U2", "I1", 4.0, 200),
        ("U4", "I1", 1.0, 7),
        ("U6", "I6", 5.0, 1),
        ("U7", "I7", 5.0, 700),
        ("U8", "I8", 5.0, 800),
    ]
    assert lines == len(MESSY_2014)
    assert [e["line"] for e in bad.lines] == [2, 4, 6, 7, 8, 10, 11, 14]
    reasons = {e["line"]: e["reason"] for e in bad.lines}
    assert reasons[6] == "missing field 'asin'" and reasons[10] == "missing field 'unixReviewTime'"
    assert reasons[11] == "missing field 'reviewerID'" and "'overall' is not a number" in reasons[7]
    assert "expected an object" in reasons[14] and bad.count == 8


def test_amazon2018_and_2023_reviews(tmp_path):
    r18 = [r14("A", "B", 1_500_000_000, vote="3", verified=True, reviewText="ok"), r14("C", "B", 1_500_000_001)]
    rows, bad, _ = reviews_of(write(tmp_path / "r18.json", r18, gz=True), "amazon2018-reviews")
    assert rows == [("A", "B", 5.0, 1_500_000_000), ("C", "B", 5.0, 1_500_000_001)] and bad.count == 0
    r23 = [
        json.dumps({"rating": 4.0, "title": "t", "text": "x", "images": [], "asin": "B0V1", "parent_asin": "B0P",
                    "user_id": "AG1", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True}),
        json.dumps({"rating": 5, "asin": "B0V2", "user_id": "AG2", "timestamp": 1588687728000}),  # no parent_asin
        json.dumps({"rating": 3, "parent_asin": "B0Q", "user_id": "AG3", "timestamp": -1}),  # -1 ms floors to -1 s
    ]  # fmt: skip
    rows, bad, _ = reviews_of(write(tmp_path / "r23.jsonl", r23), "amazon2023-reviews")
    assert rows == [("AG1", "B0P", 4.0, 1588687728), ("AG3", "B0Q", 3.0, -1)]
    assert bad.lines == [{"line": 2, "reason": "missing field 'parent_asin'"}]


def test_amazon2023_timestamps_in_seconds_are_read_as_seconds_with_a_warning(tmp_path, caplog):
    """The format gives milliseconds; a file in seconds divided by 1000 would date every review in 1970."""
    r23 = [json.dumps({"rating": 5, "parent_asin": f"P{i}", "user_id": "U1", "timestamp": 1588687728 + i})
           for i in range(3)]  # fmt: skip
    with caplog.at_level("WARNING", logger="mmpipe.ingest"):
        rows, bad, _ = reviews_of(write(tmp_path / "r23s.jsonl", r23), "amazon2023-reviews")
    assert [r[3] for r in rows] == [1588687728, 1588687729, 1588687730] and bad.count == 0
    assert "r23s.jsonl: timestamps look like seconds (median 1588687729" in caplog.text


def test_non_utf8_bytes_are_replaced_not_fatal(tmp_path):
    data = (r14("U1", "I1", 1) + "\n").encode() + b'{"reviewerID": "U\xff2", "asin": "I1", "unixReviewTime": 2}\n'
    data += b'{"reviewerID": "U3", "asin": "I1", "unixReviewTime": 3, "reviewText": "caf\xe9"}\n'
    rows, bad, _ = reviews_of(write(tmp_path / "r.json", data))
    assert [r[0] for r in rows] == ["U1", "U\ufffd2", "U3"] and bad.count == 0


def test_fast_path_and_per_line_fallback_give_the_same_result(tmp_path, monkeypatch):
    rng = random.Random(5)
    lines = []
    for _ in range(3000):
        u, i, t = f"U{rng.randrange(300)}", f"I{rng.randrange(200)}", rng.randrange(10**9)
        kind = rng.random()
        if kind < 0.01:
            lines.append(r14(u, i, t)[: rng.randrange(5, 40)])
        elif kind < 0.02:
            lines.append(r14(u, i, t, rating="x"))
        elif kind < 0.03:
            lines.append(r14(u, i, t) + r14(u, i, t))
        elif kind < 0.04:
            lines.append(json.dumps({"reviewerID": u, "unixReviewTime": t}))
        elif kind < 0.05:
            lines.append(r14(u, i, float(t)))
        elif kind < 0.06:
            lines.append("")
        else:
            lines.append(r14(u, i, t, rating=rng.choice([1, 2.5, 5]), reviewText="x" * rng.randrange(50)))
    path = write(tmp_path / "r.json.gz", lines, gz=True)
    spec = amazon.AMAZON2014_REVIEWS

    def read(**kw):
        bad = Malformed("r")
        cols = records.read_json_reviews(path, bad, spec, **kw)
        out = (cols.user_id.to_pylist(), cols.item_id.to_pylist(), cols.rating.tolist(), cols.timestamp.tolist())
        return out, bad.as_dict(), cols.lines

    default = read()
    # the reference: every line through the per-line rules
    bad = Malformed("r")
    part = records.ReviewBlockParser(spec).per_line([s.encode() for s in lines], np.arange(1, len(lines) + 1))
    for line_no, reason in part.bad:
        bad.add(line_no, reason)
    reference = (part.user.to_pylist(), part.item.to_pylist(), part.rating.to_pylist(), part.time.to_pylist())
    assert default[0][:2] == reference[:2] and default[0][3] == reference[3]
    assert np.array_equal(np.float32(default[0][2]), np.float32(reference[2]))
    assert default[1] == bad.as_dict() and default[2] == len(lines)
    # tiny blocks and pieces: many pyarrow calls, many rejections; one worker and several
    monkeypatch.setattr(records, "PIECE_BYTES", 700)
    for kw in ({"block_size": 4096, "workers": 1}, {"block_size": 1000, "workers": 3}, {"block_size": 50}):
        assert read(**kw) == default, kw
    assert records.LAST_READ["r.json.gz"].fallback_pieces > 0


def test_gzip_members_bom_crlf_and_truncation(tmp_path):
    one = ("\ufeff" + r14("U1", "I1", 1) + "\r\n").encode()
    two = (r14("U2", "I2", 2) + "\r\n" + r14("U3", "I3", 3)).encode()  # no final newline
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress(one, mtime=0) + gzip.compress(two, mtime=0) + b"\x00" * 8)
    rows, bad, lines = reviews_of(path)
    assert [r[0] for r in rows] == ["U1", "U2", "U3"] and bad.count == 0 and lines == 3
    whole = zlib.compressobj(6, zlib.DEFLATED, 31)
    data = whole.compress(((r14("U1", "I1", 1) + "\n") * 2000).encode()) + whole.flush()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="gzip stream ends early"):
        reviews_of(path)


# ------------------------------------------------------------------------------------------------- meta


def test_amazon2014_meta_literals_html_categories_and_wanted(tmp_path):
    lines = [
        repr({"asin": "A1", "title": "Tom &amp; Jerry's  \n cup", "imUrl": "http://i/1.jpg", "price": 3.5,
              "categories": [["Baby", "Feeding"], ["Baby", "Cups"]], "related": {"also_bought": ["A2"]},
              "salesRank": {"Baby": 5}, "description": None}),
        "{'asin': 'A2', 'title': 'cut",  # 2: truncated, counted although A2 is not wanted
        repr({"asin": "A3", "title": 'say "hi"', "brand": "", "flag": True, "none": None}),
        json.dumps({"asin": "A4", "title": "json é", "categories": [["X"]]}),  # JSON (with \\u00e9) too
        repr({"asin": "A5", "title": "not wanted"}),
        "{'title': 'no asin'}",  # 6: parsed (no id found), counted
        repr({"asin": "A6", "title": "caf\u00e9 \\ back\\slash", "description": "a\tb\x07"}),
        "",
    ]  # fmt: skip
    data = ("\n".join(lines) + "\n").encode() + b"{'asin': 'A7\xff', 'title': 'caf\xe9'}\n"  # 9: Latin-1
    path = write(tmp_path / "m.json.gz", data, gz=True)
    items, bad = meta_of(path, "amazon2014-meta", {"A1", "A3", "A4", "A6", "A7\u00ff", "A9"})
    by_id = {it["item_id"]: it for it in items}
    # a line that is not UTF-8 is read as Windows-1252 (its accents kept) and counted
    assert list(by_id) == ["A1", "A3", "A4", "A6", "A7\u00ff"] and by_id["A7\u00ff"]["title"] == "caf\u00e9"
    assert bad.repairs["decoded_as_cp1252"] == 1
    assert by_id["A1"] == {
        "item_id": "A1", "title": "Tom & Jerry's cup", "description": None, "brand": None,
        "categories": ["Baby", "Feeding", "Cups"], "image_url": "http://i/1.jpg",
    }  # fmt: skip
    assert by_id["A3"]["title"] == 'say "hi"' and by_id["A3"]["brand"] is None
    assert by_id["A4"]["title"] == "json é" and by_id["A4"]["categories"] == ["X"]
    assert by_id["A6"]["title"] == "café \\ back\\slash" and by_id["A6"]["description"] == "a b\x07"
    assert [e["line"] for e in bad.lines] == [2, 6] and "missing field 'asin'" in bad.lines[1]["reason"]
    all_items, _ = meta_of(path, "amazon2014-meta")  # no filter: every record
    assert [it["item_id"] for it in all_items] == ["A1", "A3", "A4", "A5", "A6", "A7\u00ff"]


def test_amazon2018_meta(tmp_path):
    lines = [
        json.dumps({"asin": "B1", "title": "T", "description": ["First.", "Second &amp; more."], "brand": "Br",
                    "category": ["Toys", "Dolls", "Toys"], "feature": ["f1"], "imageURL": ["http://s/1.jpg"],
                    "imageURLHighRes": ["", "http://h/1.jpg"]}),
        json.dumps({"asin": "B2", "description": [], "feature": ["Soft", "Small"], "imageURL": ["http://s/2.jpg"]}),
        json.dumps({"asin": "B3", "details": {"ASIN:": "B1"}, "also_buy": ["B1"]}),
    ]  # fmt: skip
    items, bad = meta_of(write(tmp_path / "m.json", lines), "amazon2018-meta", {"B1", "B2", "B3"})
    assert bad.count == 0
    assert items[0] == {
        "item_id": "B1", "title": "T", "description": "First. Second & more.", "brand": "Br",
        "categories": ["Toys", "Dolls"], "image_url": "http://h/1.jpg",
    }  # fmt: skip
    assert items[1]["description"] == "Soft Small" and items[1]["image_url"] == "http://s/2.jpg"  # features fold in
    assert items[2] == dict.fromkeys(("title", "description", "brand", "categories", "image_url")) | {"item_id": "B3"}


def test_amazon2023_meta_image_choice(tmp_path):
    def img(variant, hi_res=None, large=None, thumb=None):
        return {"variant": variant, "hi_res": hi_res, "large": large, "thumb": thumb}

    lines = [
        json.dumps({"parent_asin": "P1", "title": "T1", "store": "Shop", "categories": [], "main_category": "Toys",
                    "description": [], "features": ["Bright", "Loud"],
                    "images": [img("PT01", "http://h/pt01"), img("MAIN", "http://h/main", "http://l/main")]}),
        json.dumps({"parent_asin": "P2", "description": ["D"], "features": ["F"], "categories": ["A", "B"],
                    "images": [img("PT01", None, "http://l/pt01"), img("MAIN", None, "http://l/main")]}),
        json.dumps({"parent_asin": "P3", "images": [img("PT01", None, None, "http://t/pt01")]}),
        json.dumps({"parent_asin": "P4", "images": {"hi_res": [None, "http://h/2"], "variant": ["MAIN", "PT01"],
                                                     "large": ["http://l/1", "http://l/2"]}}),
        json.dumps({"asin": "V5", "parent_asin": "P5", "images": []}),
    ]  # fmt: skip
    items, bad = meta_of(write(tmp_path / "m.jsonl", lines, gz=True), "amazon2023-meta", None)
    got = {it["item_id"]: it for it in items}
    assert got["P1"]["image_url"] == "http://h/main" and got["P1"]["brand"] == "Shop"
    assert got["P1"]["description"] == "Bright Loud" and got["P1"]["categories"] == ["Toys"]
    assert got["P2"]["image_url"] == "http://l/main" and got["P2"]["description"] == "D"
    assert got["P2"]["categories"] == ["A", "B"]
    assert got["P3"]["image_url"] == "http://t/pt01" and got["P4"]["image_url"] == "http://l/1"
    assert got["P5"]["image_url"] is None and bad.count == 0


def _random_text(rng: random.Random) -> str:
    alphabet = ["a", "Z", " ", "'", '"', "\\", "\n", "\t", "é", "\u2603", "\x07", "\x00", "/", "&amp;", "True", "}"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.choice([0, -3, 2**70, 1.5, -0.0, 1e300, 3.25e-5])
    if kind < 6:
        return _random_text(rng)
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    return {_random_text(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_literal_translation_equals_literal_eval():
    """Python-literal meta lines take a fast JSON route; it must give literal_eval's value, or step aside."""
    rng = random.Random(0)
    translated = 0
    for _ in range(3000):
        record = {"asin": _random_text(rng), **{_random_text(rng): _random_value(rng) for _ in range(3)}}
        line = repr(record)
        want = ast.literal_eval(line)
        assert line_parser.parse_record(line) == want, line
        text = line_parser.literal_to_json(line)
        if text is not None:
            try:
                got = json.loads(text)
            except ValueError:
                continue
            translated += 1
            assert got == want, (line, text)
    assert translated > 1000  # most lines go the fast way
    for bad in ["{'a': 1", "{'a': 'x}", "{'a': u'x'}", "{'a': (1,)}", "{'a': 1} # c", "{'a': 'x' 'y'}"]:
        assert line_parser.literal_to_json(bad) is None or _json_fails(line_parser.literal_to_json(bad)), bad


def _json_fails(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


# ----------------------------------------------------------------------------------------------- ingest


def test_several_files_in_manifest_order(tmp_path, params):
    reviews = [grid(range(3), range(5)), grid(range(3, 6), range(5)) + [r14("U00", "I00", 5)]]  # a later repeat
    meta = [
        [repr({"asin": "I01", "title": "first"}), "{'asin': 'I02', 'title': 'cut"],
        [repr({"asin": "I01", "title": "second"}), repr({"asin": "I03", "title": "three"})],
    ]
    raw_root = raw_dataset(tmp_path, reviews, meta)
    stats = ingest.run("x", params, raw_root, tmp_path / "out")
    assert stats["rows_read"] == {"review_lines": 31, "meta_lines": 4, "reviews_parsed": 31}
    assert stats["duplicates"]["repeated_pairs_kept_earliest"] == 1 and stats["interactions"] == 30
    assert [f["path"] for f in stats["files"]["reviews"]] == ["reviews_0.json.gz", "reviews_1.json.gz"]
    assert stats["malformed"]["meta"]["count"] == 1
    assert stats["malformed"]["meta"]["first"] == [{"file": "meta_0.json.gz", "line": 2, "reason": stats[
        "malformed"]["meta"]["files"]["meta_0.json.gz"]["first"][0]["reason"]}]  # fmt: skip
    items = pq.read_table(tmp_path / "out/x/items.parquet").to_pylist()
    assert [it["title"] for it in items] == [None, "first", None, "three", None]  # the first record of I01 wins


def test_rating_threshold_keeps_liked_reviews(tmp_path, params):
    reviews = [
        r14(f"U{u:02d}", f"I{i:02d}", 1000 * u + i, rating=2.0 if i == 5 else 4.0) for u in range(6) for i in range(6)
    ]
    raw_root = raw_dataset(tmp_path, [reviews], [[]])
    params["kcore"].update(rating_min=4, user_min=5, item_min=5)
    stats = ingest.run("x", params, raw_root, tmp_path / "out")
    assert stats["rating_filter"] == {"rating_min": 4.0, "removed": 6} and stats["items"] == 5
    inter, _, items = read_out(tmp_path)
    assert inter.rating.min() == 4.0 and "I05" not in items
    params["kcore"]["rating_min"] = 4.5
    with pytest.raises(ValueError, match="36 below kcore.rating_min = 4.5"):
        ingest.run("x", params, raw_root, tmp_path / "out")
    params["kcore"]["rating_min"] = "high"
    with pytest.raises(ParamsError, match="kcore.rating_min"):
        ingest.run("x", params, raw_root, tmp_path / "out")


def test_split_random_keeps_user_time_counts_and_is_seeded(tmp_path, params):
    raw_root = raw_dataset(tmp_path, [grid(range(8), range(12))], [[]])
    stats_time = ingest.run("x", params, raw_root, tmp_path / "out")
    by_time = read_out(tmp_path)[0]
    params["split"].update(method="random", seed=3)
    stats = ingest.run("x", params, raw_root, tmp_path / "out")
    first = read_out(tmp_path)[0]
    assert stats["split"] == stats_time["split"] and stats["split_method"] == {
        "method": "random", "ratios": [0.8, 0.1, 0.1], "seed": 3}  # fmt: skip
    counts = pd.crosstab(first.user_idx, first.split)
    assert counts.equals(pd.crosstab(by_time.user_idx, by_time.split))
    assert not first.split.equals(by_time.split)  # not the chronological one
    ingest.run("x", params, raw_root, tmp_path / "out")
    assert read_out(tmp_path)[0].split.equals(first.split)  # same seed, same split
    params["split"]["seed"] = 4
    ingest.run("x", params, raw_root, tmp_path / "out")
    assert not read_out(tmp_path)[0].split.equals(first.split)


def test_split_leave_one_out():
    user = np.array([0] * 5 + [1] * 2 + [2] * 3, dtype=np.int32)
    assert splits.split_leave_one_out(user).tolist() == [0, 0, 0, 1, 2, 0, 0, 0, 1, 2]


def test_split_global_time_removes_cold_rows_and_compacts(tmp_path, params):
    # times 0..9: 80/10/10 -> train t < 8, valid t = 8, test t = 9
    rows = [("U0", f"I{t}", t) for t in range(8)]  # U0 trains on I0..I7
    rows += [("U1", "I0", 0), ("U1", "I8", 8), ("U2", "I1", 9), ("U3", "I9", 9)]  # I8/I9, U2... cold
    rows += [("U1", "I1", 1)]
    reviews = [r14(u, i, t) for u, i, t in rows]
    raw_root = raw_dataset(tmp_path, [reviews], [[]])
    params["kcore"].update(user_min=1, item_min=1)
    params["split"].update(method="global_time")
    stats = ingest.run("x", params, raw_root, tmp_path / "out")
    inter, users, items = read_out(tmp_path)
    # valid: (U1, I8) cold item; test: (U2, I1) cold user, (U3, I9) cold both
    assert stats["split_removed_cold"] == {"valid": 1, "test": 2, "users_dropped": 2, "items_dropped": 2}
    assert users == ["U0", "U1"] and items == [f"I{k}" for k in range(8)]
    assert stats["split"] == {"train": 10, "valid": 0, "test": 0} and len(inter) == 10
    assert inter.user_idx.max() + 1 == stats["users"] and inter.item_idx.max() + 1 == stats["items"]


def test_split_global_time_cut():
    ts = np.array([5, 1, 2, 3, 4, 6, 7, 8, 9, 10])
    assert splits.split_global_time(ts, [0.8, 0.1, 0.1]).tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    ties = np.array([1, 1, 1, 2, 2, 2, 2, 2, 2, 2])  # the 80% cut falls inside the ties at t=2: all later
    assert splits.split_global_time(ties, [0.8, 0.1, 0.1]).tolist() == [0, 0, 0] + [2] * 7


def test_unknown_split_method_and_format_are_clear_errors(tmp_path, params):
    raw_root = raw_dataset(tmp_path, [grid(range(5), range(5))], [[]])
    params["split"]["method"] = "by_magic"
    with pytest.raises(ParamsError, match="split.method = 'by_magic' is not supported"):
        ingest.run("x", params, raw_root, tmp_path / "out")
    params["split"]["method"] = "user_time"
    manifest = raw_root / "x/MANIFEST.json"
    doc = json.loads(manifest.read_text())
    doc["files"][0]["format"] = "amazon1999-reviews"
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="format 'amazon1999-reviews' has no reviews reader"):
        ingest.run("x", params, raw_root, tmp_path / "out")


def test_a_new_source_is_one_declaration(tmp_path, params, monkeypatch):
    """A source declared once (its keys, its files, its readers) goes through the params check, download
    from a local folder and ingest, found by name; its interactions reader may return a DataFrame."""

    def read_tsv(path: Path, bad: Malformed) -> pd.DataFrame:
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            user, _, items = line.partition("\t")
            if not items:
                bad.add(n, "no tab")
                continue
            rows += [(user, item, 1.0, pos) for pos, item in enumerate(items.split())]
        return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])

    def read_titles(path: Path, bad: Malformed, wanted: set[str] | None):
        for line in path.read_text().splitlines():
            item, _, title = line.partition("\t")
            if wanted is None or item in wanted:
                yield {"item_id": item, "title": title}
        return 99

    def toy_files(cfg) -> list[FileSpec]:
        interactions = FileSpec("interactions", "seq.tsv", "test-seq", None)
        return [interactions, FileSpec("items", "titles.tsv", "test-titles", None)]

    toy = Source(
        "toyseq", keys=(*FILE_KEYS, "name"), files=toy_files,
        review_readers={"test-seq": read_tsv}, meta_readers={"test-titles": read_titles}, no_direct_link="toy data",
    )  # fmt: skip
    monkeypatch.setitem(catalog.SOURCES, "toyseq", toy)
    folder = tmp_path / "hand"
    folder.mkdir()
    (folder / "seq.tsv").write_text(
        "".join(f"u{u}\t" + " ".join(f"v{i}" for i in range(5)) + "\n" for u in range(5)) + "bad\n"
    )
    (folder / "titles.tsv").write_text("".join(f"v{i}\tVideo {i}\n" for i in range(5)))
    params["datasets"]["x"] = {"source": "toyseq", "name": "x", "category": "Baby"}
    with pytest.raises(ParamsError, match="category do not apply to source 'toyseq'.*its keys: source, published"):
        download.run("x", params, tmp_path / "raw")
    params["datasets"]["x"] = {"source": "toyseq", "path": str(folder)}
    manifest = download.run("x", params, tmp_path / "raw")
    assert manifest["source"] == "toyseq" and [f["format"] for f in manifest["files"]] == ["test-seq", "test-titles"]
    stats = ingest.run("x", params, tmp_path / "raw", tmp_path / "out")
    assert stats["interactions"] == 25 and stats["malformed"]["reviews"]["count"] == 1
    assert stats["rows_read"]["meta_lines"] == 99 and stats["items_missing"]["title"] == 0
    params["datasets"]["x"] = {"source": "toyseq"}  # no folder, and the source has no URL: say why
    with pytest.raises(ParamsError, match=r"no URL for its interactions file seq.tsv \(toy data\)"):
        download.run("x", params, tmp_path / "raw2")


def test_presplit_sources_are_handed_to_presplit(tmp_path, params, monkeypatch):
    import pyarrow as pa

    from mmpipe import schemas
    from stages.sources import presplit

    frame = pd.DataFrame(
        {
            "user_idx": np.array([0, 1], np.int32),
            "item_idx": np.array([1, 0], np.int32),
            "rating": np.ones(2, np.float32),
            "timestamp": np.zeros(2, np.int64),
            "split": np.array([0, 2], np.int8),
        }
    )
    items = {name: pa.nulls(2, field.type) for name, field in zip(schemas.ITEMS.names, schemas.ITEMS, strict=True)}
    items.update(item_idx=pa.array([0, 1], pa.int32()), item_id=pa.array(["a", "b"]))
    users = pa.table({"user_idx": pa.array([0, 1], pa.int32()), "user_id": ["u", "v"]}, schema=schemas.USERS)
    calls = []

    def fake_load(manifest, raw_dir):
        calls.append(manifest["source"])
        return frame, pa.table(items, schema=schemas.ITEMS), users, {"x": 1}

    monkeypatch.setattr(presplit, "load", fake_load)
    raw = tmp_path / "raw/m"
    raw.mkdir(parents=True)
    (raw / "MANIFEST.json").write_text(json.dumps({"source": "mmrec", "files": []}))
    params["kcore"]["user_min"] = 50  # not applied
    stats = ingest.run("m", params, tmp_path / "raw", tmp_path / "out")
    run_id = stats.pop("ingest_id")  # the id the three tables carry (schemas.INGEST_ID)
    assert stats == {"x": 1} and calls == ["mmrec"] and len(run_id) == 16
    inter = pq.read_table(tmp_path / "out/m/interactions.parquet")
    assert inter.schema == schemas.INTERACTIONS and inter.column("split").to_pylist() == [0, 2]
    assert pq.read_table(tmp_path / "out/m/items.parquet").column("item_id").to_pylist() == ["a", "b"]
    assert json.loads((tmp_path / "out/m/ingest_stats.json").read_text()) == {"x": 1, "ingest_id": run_id}


# ---------------------------------------------------------------------------------- integer-code helpers


def test_codes_helpers_match_reference_implementations():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 400))
        frame = pd.DataFrame(
            {
                "user_id": [f"u{x}" for x in rng.integers(0, 30, n)],
                "item_id": [f"i{x}" for x in rng.integers(0, 20, n)],
                "rating": rng.integers(1, 3, n).astype(np.float32),
                "timestamp": rng.integers(0, 4, n),
            }
        )
        # duplicates: the former pandas rules
        exp = frame.drop_duplicates()
        exact = n - len(exp)
        exp = exp.sort_values(["user_id", "item_id", "timestamp", "rating"], kind="stable")
        exp = exp.drop_duplicates(["user_id", "item_id"], keep="first")
        got, g_exact, g_repeated = deduplicate_frame(frame)
        key = ["user_id", "item_id", "timestamp", "rating"]
        assert got.sort_values(key).reset_index(drop=True).equals(exp.sort_values(key).reset_index(drop=True))
        assert (g_exact, g_repeated) == (exact, n - exact - len(exp))
        # k-core: a counting loop until stable
        pairs = list(zip(got.user_id, got.item_id, strict=True))
        rounds = []
        while True:
            uc, ic = pd.Series([p[0] for p in pairs]).value_counts(), pd.Series([p[1] for p in pairs]).value_counts()
            low_u, low_i = set(uc[uc < 3].index), set(ic[ic < 2].index)
            drop = [p for p in pairs if p[0] in low_u or p[1] in low_i]
            if not drop:
                break
            rounds.append((len(low_u), len(low_i), len(drop)))
            pairs = [p for p in pairs if p not in set(drop)]
        core, got_rounds = k_core_frame(got, user_min=3, item_min=2)
        assert sorted(zip(core.user_id, core.item_id, strict=True)) == sorted(pairs)
        assert [(r["users_removed"], r["items_removed"], r["interactions_removed"]) for r in got_rounds] == rounds
        # user_time split: the former per-user loop
        sizes = rng.integers(1, 25, 20)
        user = np.repeat(np.arange(len(sizes)), sizes)
        ratios = [float(x) for x in rng.dirichlet([2, 1, 1])] if trial % 3 else [0.8, 0.1, 0.1]
        assert splits.split_user_time(user, ratios).tolist() == _old_split(user, ratios).tolist()
        # row order: (user, time, item) with unique pairs
        pairs_u = rng.choice(900, size=min(n, 900), replace=False)
        u, i = (pairs_u // 30).astype(np.int32), (pairs_u % 30).astype(np.int32)
        t = rng.integers(0, 3, len(u)) * 86400 + 10**9
        assert np.array_equal(interactions.row_order(u, t, i), np.lexsort((i, t, u)))


def _old_split(user_idx: np.ndarray, ratios: list[float]) -> np.ndarray:
    r_train, r_valid, r_test = ratios
    share_eval = (r_valid + r_test) / (r_train + r_valid + r_test)
    share_valid = r_valid / (r_valid + r_test) if r_valid + r_test > 0 else 0.0
    split = np.zeros(len(user_idx), dtype=np.int8)
    starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]])
    ends = np.r_[starts[1:], len(user_idx)]
    for s, e in zip(starts, ends, strict=True):
        n = e - s
        if share_eval == 0 or n < 2:
            continue
        n_eval = min(max(2, int(n * share_eval + 1e-9)), n - 1)
        n_valid = int(n_eval * share_valid + 1e-9)
        split[e - n_eval : e - n_eval + n_valid] = 1
        split[e - n_eval + n_valid : e] = 2
    return split


def test_image_url_fields_of_every_release(tmp_path):
    """2014 `imUrl`; 2018 `imageURLHighRes`, `imageURL` or only `image` (38x50 thumbnails: the original is
    the URL without its size modifiers); 2023 `images` dicts (tested above). The largest is kept."""
    thumb = "https://images-na.ssl-images-amazon.com/images/I/317ZQtCvFzL._SX38_SY50_CR,0,0,38,50_.jpg"
    lines18 = [
        json.dumps({"asin": "G1", "image": [thumb, "https://images-na.ssl-images-amazon.com/images/I/41x._SX38_.jpg"]}),
        json.dumps({"asin": "G2", "imageURL": ["https://images-na.ssl-images-amazon.com/images/I/5a._US40_.jpg"],
                    "imageURLHighRes": ["https://images-na.ssl-images-amazon.com/images/I/5a._SL1500_.jpg"]}),
        json.dumps({"asin": "G3", "imageURL": ["http://example.com/plain.jpg"], "image": [thumb]}),
        json.dumps({"asin": "G4", "image": []}),
    ]  # fmt: skip
    got = {
        it["item_id"]: it["image_url"] for it in meta_of(write(tmp_path / "m18.json", lines18), "amazon2018-meta")[0]
    }
    assert got == {
        "G1": "https://images-na.ssl-images-amazon.com/images/I/317ZQtCvFzL.jpg",
        "G2": "https://images-na.ssl-images-amazon.com/images/I/5a.jpg",
        "G3": "http://example.com/plain.jpg",
        "G4": None,
    }
    lines14 = [repr({"asin": "A1", "imUrl": "http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg"})]
    got14 = meta_of(write(tmp_path / "m14.json", lines14), "amazon2014-meta")[0]
    assert got14[0]["image_url"] == "http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg"  # as MMRec uses it
