"""ingest at scale: synthetic Amazon-2014-format files, end-to-end lines/s, peak memory, and a k-core check.

    python -m bench.ingest_scale [--reviews 10000000] [--meta 1000000] [--sample 200000] [--seed 0]

Generates (once, cached under bench/.cache/ingest_scale/, deterministic from the seed) a gzip reviews
file in the Amazon 2014 format (JSON lines with reviewText, summary, helpful, ...; reviewerID like
A1B2C3D4E5F6G7, asin like B00XXXXXXX; power-law user activity and item popularity, so the 5-core
takes several rounds; ~0.1% exact duplicate lines, ~0.01% malformed lines of five kinds, a few blank
lines) and a gzip meta file with one Python-literal dict per item (related lists, sales ranks,
categories, some titles with quotes, escapes and non-ASCII text), plus a MANIFEST.json. Then runs the
real `stages.ingest.run` in a fresh process and prints lines/s over the end-to-end wall time, the peak
RSS (the process and its children), the counts, and how often the block parser fell back. Finally,
on the first `--sample` review lines, compares ingest's k-core result with a plain-Python reference
(json.loads per line, a dict per pair, a counting loop until stable): prints OK or MISMATCH and exits
non-zero on a mismatch.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mmpipe.paths import MANIFEST, PROCESSED, DatasetDir

CACHE = Path(__file__).resolve().parent / ".cache" / "ingest_scale"
REVIEWS_FILE = "reviews_Bench.json.gz"
META_FILE = "meta_Bench.json.gz"
ALPHABET = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
CHUNK = 250_000  # lines formatted per task
MALFORMED_RATE = 1e-4
DUPLICATE_RATE = 1e-3

SENTENCES = (
    "Works as described.", "My little one loves it.", "Good quality for the price.", "Would buy again.",
    "Not bad, a bit smaller than expected.", "Arrived quickly and well packed.", "Easy to clean.",
    "The color is nicer in person.", "Broke after two weeks.", "Exactly what we needed.",
    "Instructions were confusing.", "Sturdy and light.", "Great gift for new parents.",
    "Fits perfectly in the car.", "A little pricey but worth it.", "Five stars!", "Meh.",
    "We use it every day.", "Smells a bit at first.", "Customer service was helpful.",
)  # fmt: skip
SUMMARIES = ("Great", "Love it", "Okay", "Not for us", "Perfect", "Good value", "Disappointed", "Five Stars")
NAMES = tuple(f"{a} {b}." for a in ("Anna", "Ben", "Chloe", "Dan", "Eve", "Finn", "Gus", "Hana") for b in "ABCDEFGH")
NOUNS = ("stroller", "car seat", "bottle", "diaper bag", "crib", "rattle", "bath tub", "baby gate", "onesie", "swing")
ADJS = ("foldable", "lightweight", "padded", "anti-colic", "convertible", "musical", "non-slip", "wireless")
BRANDS = ("Sunbeam Kids", "Little Oak", "Nestly", "Babbo", "Cuddle Co", "Tiny Steps", "Moonpie", "Bloom & Co")
CATEGORY_PATHS = (("Baby", "Strollers"), ("Baby", "Car Seats"), ("Baby", "Feeding", "Bottles"), ("Baby", "Nursery"))

_G: dict[str, Any] = {}  # the generator's arrays, shared with forked workers


# ---------------------------------------------------------------------------------------------- generation


def _base36(values: np.ndarray, width: int) -> np.ndarray:
    """Fixed-width base-36 strings (bytes) of non-negative integers."""
    digits = np.empty((len(values), width), dtype=np.uint8)
    v = values.astype(np.uint64)
    for k in range(width - 1, -1, -1):
        digits[:, k] = ALPHABET[(v % 36).astype(np.int64)]
        v //= 36
    return digits.view(f"S{width}").ravel()


def _ids(n: int, prefix: bytes, width: int, mult: int) -> np.ndarray:
    """n distinct ids: an odd multiplier scrambles 0..n-1 (a bijection modulo 2**64, or 36**width if smaller)."""
    x = np.arange(n, dtype=np.uint64) * np.uint64(mult)  # wraps modulo 2**64: still a bijection
    if 36**width < 2**64:
        x %= np.uint64(36**width)  # mult is coprime with 36 too, so a bijection while n <= 36**width
    return np.char.add(prefix, _base36(x, width))


def _powerlaw(rng: np.random.Generator, n_cat: int, n: int, alpha: float) -> np.ndarray:
    """n draws from n_cat categories with weights 1/(rank+10)^alpha, ranks shuffled."""
    weights = 1.0 / (np.arange(n_cat) + 10.0) ** alpha
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    perm = rng.permutation(n_cat).astype(np.int32)
    out = np.empty(n, dtype=np.int32)
    for s in range(0, n, 1 << 22):
        out[s : s + (1 << 22)] = perm[np.searchsorted(cdf, rng.random(min(1 << 22, n - s)))]
    return out


def _plan(n_reviews: int, n_meta: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users = max(n_reviews // 4, 10)
    n_items = max(n_meta, 10)
    _G["users"] = _ids(n_users, b"A", 13, 0x9E3779B97F4A7C15)
    _G["items"] = _ids(n_items, b"B00", 7, 2654435761)
    _G["u"] = _powerlaw(rng, n_users, n_reviews, 0.8)
    _G["i"] = _powerlaw(rng, n_items, n_reviews, 0.9)
    _G["t"] = rng.integers(946684800, 1406073600, n_reviews)  # 2000-01-01 .. 2014-07-23
    _G["r"] = rng.choice(np.array([1, 2, 3, 4, 5], dtype=np.int8), n_reviews, p=[0.06, 0.05, 0.09, 0.2, 0.6])
    _G["aux"] = rng.integers(0, 1 << 30, (n_reviews, 2))
    # line kinds: 0 normal, 1 duplicated (written twice), 2..6 malformed kinds, 7 followed by a blank line
    kind = np.zeros(n_reviews, dtype=np.int8)
    kind[rng.random(n_reviews) < DUPLICATE_RATE] = 1
    bad = rng.random(n_reviews) < MALFORMED_RATE
    kind[bad] = rng.choice(np.array([2, 2, 3, 4, 5, 6], dtype=np.int8), int(bad.sum()))
    kind[(rng.random(n_reviews) < 2e-5) & (kind == 0)] = 7
    _G["kind"] = kind
    _G["n_meta"] = n_meta
    _G["seed"] = seed


def _review_chunk(bounds: tuple[int, int]) -> bytes:
    start, end = bounds
    users, items = _G["users"], _G["items"]
    u, i, t, r, aux, kind = (_G[k][start:end] for k in ("u", "i", "t", "r", "aux", "kind"))
    days = (t // 86400).astype("datetime64[D]")
    years = days.astype("datetime64[Y]").astype(int) + 1970
    months = days.astype("datetime64[M]").astype(int) % 12 + 1
    mdays = (days - days.astype("datetime64[M]")).astype(int) + 1
    out: list[str] = []
    for k in range(end - start):
        a, b = int(aux[k, 0]), int(aux[k, 1])
        line = (
            f'{{"reviewerID": "{users[u[k]].decode()}", "asin": "{items[i[k]].decode()}", '
            f'"reviewerName": "{NAMES[a % len(NAMES)]}", "helpful": [{a % 5}, {a % 5 + b % 4}], '
            f'"reviewText": "{SENTENCES[a % 20]} {SENTENCES[b % 20]}", "overall": {r[k]}.0, '
            f'"summary": "{SUMMARIES[b % 8]}", "unixReviewTime": {t[k]}, '
            f'"reviewTime": "{months[k]:02d} {mdays[k]}, {years[k]}"}}'
        )
        kd = kind[k]
        if kd == 1:
            out.append(line)
        elif kd == 2:  # truncated
            line = line[: 10 + b % (len(line) - 20)]
        elif kd == 3:  # not JSON at all
            line = "<html><body>502 Bad Gateway</body></html>"
        elif kd == 4:  # valid JSON, no asin
            line = line.replace('"asin"', '"ASIN"')
        elif kd == 5:  # a bad number
            line = line.replace(f'"overall": {r[k]}.0', '"overall": "five"')
        elif kd == 6:  # two objects on one line
            line = line + " " + line
        out.append(line)
        if kd == 7:
            out.append("")
    return ("\n".join(out) + "\n").encode("utf-8")


def _meta_chunk(bounds: tuple[int, int]) -> bytes:
    start, end = bounds
    items = _G["items"]
    rng = np.random.default_rng([_G["seed"], start])
    out: list[str] = []
    for k in range(start, end):
        x = rng.integers(0, 1 << 30, 8)
        brand = BRANDS[x[0] % len(BRANDS)]
        noun, adj = NOUNS[x[1] % len(NOUNS)], ADJS[x[2] % len(ADJS)]
        title = f"{brand} {adj.title()} {noun.title()}"
        if x[3] % 10 == 0:
            title += " - Baby's First"  # repr() picks double quotes
        elif x[3] % 100 == 1:
            title += ' - the "Deluxe" Edition\'s'  # both quotes: escapes
        elif x[3] % 50 == 2:
            title += " - Édition Spéciale"
        rec: dict[str, Any] = {"asin": items[k].decode(), "title": title}
        if x[4] % 10:
            rec["price"] = round(float(x[4] % 20000) / 100 + 1, 2)
        if x[5] % 20:
            rec["imUrl"] = f"http://ecx.images-amazon.com/images/I/{items[k].decode()[3:]}L.jpg"
        rel = rng.integers(0, len(items), 1 + int(x[6] % 40))
        rec["related"] = {
            "also_bought": [items[j].decode() for j in rel[: len(rel) * 2 // 3]],
            "also_viewed": [items[j].decode() for j in rel[len(rel) * 2 // 3 :]],
        }
        rec["salesRank"] = {"Baby": int(x[7] % 500000)}
        rec["categories"] = [list(CATEGORY_PATHS[x[0] % 4]), ["Baby", noun.title()]]
        if x[1] % 10 < 7:
            rec["brand"] = brand
        if x[2] % 10 < 8:
            desc = " ".join(SENTENCES[(x[3] + j) % 20] for j in range(2 + int(x[5] % 6)))
            if x[6] % 33 == 0:
                desc = desc.replace(". ", ".\n", 1)  # repr() writes \n: an escape
            rec["description"] = f"This {adj} {noun} &amp; more. {desc}"
        line = repr(rec)
        if x[7] % 10000 == 0:
            line = line[: len(line) // 2]  # truncated
        out.append(line)
    return ("\n".join(out) + "\n").encode("utf-8")


def _write_gzip(path: Path, chunks: Any) -> int:
    """One gzip member from an iterator of byte chunks; returns the uncompressed size."""
    tmp = path.with_suffix(".tmp")
    size = 0
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(tmp, "wb") as fh:
        for chunk in chunks:
            size += len(chunk)
            fh.write(comp.compress(chunk))
        fh.write(comp.flush())
    os.replace(tmp, path)
    return size


def generate(raw_dir: Path, n_reviews: int, n_meta: int, seed: int) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _plan(n_reviews, n_meta, seed)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        bounds = [(s, min(s + CHUNK, n_reviews)) for s in range(0, n_reviews, CHUNK)]
        size_r = _write_gzip(raw_dir / REVIEWS_FILE, pool.imap(_review_chunk, bounds))
        bounds = [(s, min(s + CHUNK // 4, n_meta)) for s in range(0, n_meta, CHUNK // 4)]
        size_m = _write_gzip(raw_dir / META_FILE, pool.imap(_meta_chunk, bounds))
    write_manifest(raw_dir, REVIEWS_FILE, META_FILE, {"reviews": n_reviews, "meta": n_meta, "seed": seed})
    print(
        f"generated {n_reviews} review lines ({size_r / 1e9:.2f} GB) and {n_meta} meta lines "
        f"({size_m / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s -> {raw_dir}",
        flush=True,
    )


def write_manifest(raw_dir: Path, reviews: str, meta: str, generator: dict[str, Any]) -> None:
    manifest = {
        "dataset": raw_dir.name,
        "source": "bench",
        "files": [
            {"role": "reviews", "path": reviews, "format": "amazon2014-reviews"},
            {"role": "meta", "path": meta, "format": "amazon2014-meta"},
        ],
        "generator": generator,
    }
    (raw_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------- measuring


def bench_params(user_min: int = 5, item_min: int = 5) -> dict[str, Any]:
    return {
        "kcore": {"user_min": user_min, "item_min": item_min, "rating_min": None},
        "split": {"method": "user_time", "ratios": [0.8, 0.1, 0.1]},
    }


def child(raw_root: Path, out_root: Path) -> None:
    """In a fresh process: the real ingest, timed, with its peak RSS."""
    from stages import ingest
    from stages.sources import records

    start = time.perf_counter()
    stats = ingest.run("bench", bench_params(), raw_root, out_root)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    read = records.LAST_READ.get(REVIEWS_FILE)
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_kb": peak,
                "stats": stats,
                "fallback": None if read is None else vars(read),
            }
        )
    )


def measure(raw_root: Path, out_root: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.ingest_scale", "--child", str(raw_root), str(out_root)]
    env = {**os.environ, "MMPIPE_PROGRESS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    sys.stderr.write("".join(f"  | {line}\n" for line in proc.stderr.splitlines() if "INFO" in line))
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- reference


def reference_kcore(lines: list[bytes], user_min: int, item_min: int) -> tuple[set, list[tuple[int, int, int]]]:
    """Plain Python: parse, keep the earliest review per pair, drop low users/items until stable."""
    best: dict[tuple[str, str], tuple[int, float]] = {}
    for raw in lines:
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        user, item, ts = rec.get("reviewerID"), rec.get("asin"), rec.get("unixReviewTime")
        if not (isinstance(user, str) and user and isinstance(item, str) and item and type(ts) is int):
            continue
        rating = rec.get("overall", 1.0)
        try:
            rating = float(rating if rating is not None else 1.0)
        except (TypeError, ValueError):
            continue
        value = (ts, float(np.float32(rating)))
        key = (user, item)
        if key not in best or value < best[key]:
            best[key] = value
    pairs = dict(best)
    rounds = []
    while True:
        ucount = Counter(u for u, _ in pairs)
        icount = Counter(i for _, i in pairs)
        low_u = {u for u, c in ucount.items() if c < user_min}
        low_i = {i for i, c in icount.items() if c < item_min}
        drop = [p for p in pairs if p[0] in low_u or p[1] in low_i]
        if not drop:
            break
        rounds.append((len(low_u), len(low_i), len(drop)))
        for p in drop:
            del pairs[p]
    return {(u, i, t, r) for (u, i), (t, r) in pairs.items()}, rounds


def check_sample(reviews: Path, meta: Path, n_lines: int, work: Path) -> bool:
    """ingest vs the reference on the first n_lines review lines; prints the comparison."""
    import pyarrow.parquet as pq

    from stages import ingest

    lines: list[bytes] = []
    with gzip.open(reviews, "rb") as fh:
        for raw in fh:
            lines.append(raw.rstrip(b"\n"))
            if len(lines) >= n_lines:
                break
    raw_dir = work / "raw" / "sample"
    raw_dir.mkdir(parents=True)
    (raw_dir / "reviews.json").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(meta, "rb") as fh:
        (raw_dir / "meta.json").write_bytes(b"".join(fh.readline() for _ in range(100)))
    write_manifest(raw_dir, "reviews.json", "meta.json", {"sample_of": reviews.name, "lines": len(lines)})
    start = time.perf_counter()
    stats = ingest.run("sample", bench_params(), work / "raw", work / "processed")
    seconds = time.perf_counter() - start
    out = DatasetDir.of("sample", work / PROCESSED)
    inter = pq.read_table(out.interactions).to_pydict()
    users = pq.read_table(out.users).column("user_id").to_pylist()
    items = pq.read_table(out.items).column("item_id").to_pylist()
    got = {
        (users[u], items[i], t, float(r))
        for u, i, t, r in zip(inter["user_idx"], inter["item_idx"], inter["timestamp"], inter["rating"], strict=True)
    }
    got_rounds = [(r["users_removed"], r["items_removed"], r["interactions_removed"]) for r in stats["kcore"]["rounds"]]
    start = time.perf_counter()
    want, want_rounds = reference_kcore(lines, 5, 5)
    ref_seconds = time.perf_counter() - start
    ok = got == want and got_rounds == want_rounds
    print(
        f"k-core check on the first {len(lines)} review lines: {'OK' if ok else 'MISMATCH'} "
        f"({len(got)} interactions, {stats['users']} users, {stats['items']} items, {len(got_rounds)} rounds; "
        f"ingest {seconds:.1f} s, reference {ref_seconds:.1f} s)"
    )
    if not ok:
        print(f"  ingest only: {sorted(got - want)[:5]}\n  reference only: {sorted(want - got)[:5]}")
        print(f"  rounds ingest {got_rounds}\n  rounds reference {want_rounds}")
    return ok


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=10_000_000)
    parser.add_argument("--meta", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=200_000, help="review lines for the k-core check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("RAW_ROOT", "OUT_ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return 0

    raw_root = CACHE / f"r{args.reviews}-m{args.meta}-s{args.seed}"
    raw_dir = raw_root / "bench"
    if not (raw_dir / MANIFEST).is_file():
        cmd = [sys.executable, "-c", f"from bench.ingest_scale import generate; from pathlib import Path; "
               f"generate(Path({str(raw_dir)!r}), {args.reviews}, {args.meta}, {args.seed})"]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="ingest_scale.") as tmp:
        result = measure(raw_root, Path(tmp) / "processed")
        stats = result["stats"]
        wall = result["wall_s"]
        review_lines, meta_lines = stats["rows_read"]["review_lines"], stats["rows_read"]["meta_lines"]
        print(f"ingest of {review_lines} review lines + {meta_lines} meta lines ({os.cpu_count()} cores):")
        print(f"  wall time            {wall:8.1f} s")
        print(f"  lines/s (all)        {(review_lines + meta_lines) / wall:10,.0f}")
        print(f"  review lines/s       {review_lines / wall:10,.0f}")
        print(f"  peak RSS             {result['peak_rss_kb'] / 2**20:8.2f} GiB")
        malformed = stats["malformed"]
        print(
            f"  reviews parsed {stats['rows_read']['reviews_parsed']}, malformed {malformed['reviews']['count']} "
            f"reviews / {malformed['meta']['count']} meta, duplicates {stats['duplicates']}"
        )
        print(
            f"  {len(stats['kcore']['rounds'])} k-core rounds -> {stats['users']} users, {stats['items']} items, "
            f"{stats['interactions']} interactions; split {stats['split']}"
        )
        if result["fallback"]:
            fb = result["fallback"]
            print(
                f"  blocks {fb['blocks']}, pieces re-parsed after a pyarrow rejection {fb['fallback_pieces']}, "
                f"lines parsed one by one {fb['fallback_lines']}"
            )
        ok = check_sample(raw_dir / REVIEWS_FILE, raw_dir / META_FILE, args.sample, Path(tmp) / "sample")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
