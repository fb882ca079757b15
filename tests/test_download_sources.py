"""download for the real sources: URLs from the catalog (overridden to a local server), the resumable cache,
local folders, and the errors a user without network sees; product images fetched after ingest (the images
stage) for the items that survived the k-core, with failures by reason."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from mmpipe import lmdb_store
from mmpipe.io import read_json, sha256_file
from stages import download, images, ingest
from stages.common import datasets
from stages.common.params import ParamsError
from stages.sources import catalog, formats, presplit
from stages.sources.http import DownloadError
from stages.sources.reading import META_ROLES, REVIEW_ROLES


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="JPEG")
    return buf.getvalue()


def amazon2014_files(n_users: int = 6, n_items: int = 6) -> dict[str, bytes]:
    """A tiny category in the 2014 format: every user reviews every item; one item has a dead image link."""
    reviews = [
        json.dumps({"reviewerID": f"U{u}", "asin": f"B{i:03d}", "overall": 4.0, "unixReviewTime": 100 * u + i})
        for u in range(n_users)
        for i in range(n_items)
    ]
    meta = []
    for i in range(n_items):
        url = {0: "/img/missing.jpg", 1: "/img/notimage.jpg"}.get(i, f"/img/B{i:03d}.jpg")
        meta.append(repr({"asin": f"B{i:03d}", "title": f"Item {i}", "imUrl": "{base}" + url}))
    meta.append(repr({"asin": "B999", "title": "never reviewed", "imUrl": "{base}/img/B999.jpg"}))
    return {
        "/reviews_Baby_5.json.gz": gzip.compress(("\n".join(reviews) + "\n").encode()),
        "/meta_Baby.json.gz": ("\n".join(meta) + "\n").encode(),  # templated with the server's address below
    }


class Server:
    """Serves a dict of path -> bytes on 127.0.0.1 and records every request path."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    files = amazon2014_files()
    srv = Server(files)
    meta = files["/meta_Baby.json.gz"].decode().replace("{base}", srv.base)
    files["/meta_Baby.json.gz"] = gzip.compress(meta.encode())
    for i in range(2, 6):
        files[f"/img/B{i:03d}.jpg"] = jpeg((40 * i, 0, 0))
    files["/img/B999.jpg"] = jpeg((0, 0, 255))
    files["/img/notimage.jpg"] = b"<html>not found</html>"
    yield srv
    srv.close()


def baby_params(params: dict, base: str, tmp_path: Path) -> dict:
    params["datasets"]["baby"] = {
        "source": "amazon2014",
        "category": "Baby",
        "urls": {"reviews": f"{base}/reviews_Baby_5.json.gz", "meta": f"{base}/meta_Baby.json.gz"},
    }
    params["download"] = {"cache_dir": str(tmp_path / "cache"), "timeout": 2, "retries": 1}
    params["images"].update(fetch=True, fetch_workers=4, fetch_timeout=2)
    return params


def test_catalog_urls_follow_each_release():
    specs = {s.role: s for s in catalog.file_specs("amazon2014", {"category": "Baby"})}
    assert (
        specs["reviews"].url == "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Baby_5.json.gz"
    )
    assert specs["meta"].format == "amazon2014-meta" and specs["image_features"].optional
    specs = {s.role: s for s in catalog.file_specs("amazon2023", {"category": "Baby_Products"})}
    assert specs["reviews"].url.endswith("/amazon_2023/raw/review_categories/Baby_Products.jsonl.gz")
    assert specs["meta"].url.endswith("/amazon_2023/raw/meta_categories/meta_Baby_Products.jsonl.gz")
    specs = {s.role: s for s in catalog.file_specs("amazon2018", {"category": "Sports_and_Outdoors"})}
    assert specs["reviews"].url.endswith("/amazon_v2/categoryFilesSmall/Sports_and_Outdoors_5.json.gz")
    with pytest.raises(ParamsError, match="'Babies' has no per-category file in amazon2014"):
        catalog.file_specs("amazon2014", {"category": "Babies"})


def test_every_declared_source_is_found_by_name_and_reads_its_own_formats():
    """Each `Source` in catalog.SOURCES is the whole of its source: the params check takes its keys, its
    files' review and meta formats are read by readers it declares, or ingest keeps its published split."""
    block = {"category": "Baby", "name": "baby", "urls": {"reviews": "https://example.org/r"}}
    assert {"demo", "local", "amazon2014", "amazon2018", "amazon2023", "bilibili", "mmrec", "lattice"} <= set(
        catalog.SOURCES
    )
    for name, source in catalog.SOURCES.items():
        assert catalog.source(name) is source and source.name == name
        assert datasets.source_keys(name) == (*datasets.COMMON, *source.keys)
        if source.files is None:
            assert name not in catalog.file_sources()
            continue
        specs = catalog.file_specs(name, block)
        roles = {spec.role: spec.format for spec in specs}
        if source.presplit is not None:
            assert presplit.is_presplit(name) and not set(roles.values()) & set(formats.review_readers()), name
            continue
        review = [fmt for role, fmt in roles.items() if role in REVIEW_ROLES]
        meta = [fmt for role, fmt in roles.items() if role in META_ROLES]
        assert len(review) == len(meta) == 1, (name, roles)
        assert review[0] in source.review_readers and meta[0] in source.meta_readers, (name, roles)
        assert formats.review_readers()[review[0]] is source.review_readers[review[0]]
        assert not source.no_direct_link or all(spec.url is None for spec in specs), name
    with pytest.raises(ParamsError, match="source 'amazon1999' is not in the catalog"):
        catalog.source("amazon1999")
    with pytest.raises(ParamsError, match="source 'demo' has no files of its own"):
        catalog.file_specs("demo", {})


def test_download_fetches_files_then_images_stage_fetches_kcore_items(tmp_path, params, server):
    baby_params(params, server.base, tmp_path)
    manifest = download.run("baby", params, tmp_path / "raw")
    raw = tmp_path / "raw/baby"
    roles = {e["role"]: e for e in manifest["files"]}
    assert set(roles) == {"reviews", "meta"}  # image_features only when asked for
    assert roles["reviews"]["url"] == f"{server.base}/reviews_Baby_5.json.gz"
    for entry in manifest["files"]:
        assert entry["sha256"] == sha256_file(raw / entry["path"]) and entry["status"] == "downloaded"
    assert read_json(raw / "MANIFEST.json") == manifest and manifest["source"] == "amazon2014"
    assert not [r for r in server.requests if r.startswith("/img/")]  # images come after ingest
    # ingest reads what download wrote
    stats = ingest.run("baby", params, tmp_path / "raw", tmp_path / "processed")
    assert stats["users"] == 6 and stats["items"] == 6
    # the images stage fetches the images of the items that survived the k-core, into the download cache
    report = images.run("baby", params, tmp_path / "raw", tmp_path / "processed")
    assert report["fetch"]["ok"] == 4 and report["fetch"]["failed"] == {"http_404": 1, "not_an_image": 1}
    assert (report["stored"], report["missing_file"]) == (4, 2)
    assert "/img/B999.jpg" not in server.requests  # an item outside the reviews is not fetched
    cached = tmp_path / "cache/images/amazon2014"
    assert sorted(p.name for p in cached.iterdir()) == [f"B{i:03d}.jpg" for i in range(2, 6)]
    with lmdb_store.reading(tmp_path / "processed/baby/images.lmdb") as txn:
        assert sorted(k.decode() for k, _ in txn.cursor()) == [f"B{i:03d}" for i in range(2, 6)]

    # A re-run (DVC empties raw/baby first) takes every complete file and image from the cache.
    server.requests.clear()
    download.run("baby", params, tmp_path / "raw")
    assert server.requests == []
    images.run("baby", params, tmp_path / "raw", tmp_path / "processed")
    assert set(server.requests) == {"/img/missing.jpg", "/img/notimage.jpg"}  # only failures are retried


def test_without_network_the_error_names_the_url_and_where_to_put_the_file(tmp_path, params):
    baby_params(params, "http://127.0.0.1:9", tmp_path)  # port 9 (discard): connection refused
    with pytest.raises(DownloadError) as err:
        download.run("baby", params, tmp_path / "raw")
    text = str(err.value)
    assert "http://127.0.0.1:9/reviews_Baby_5.json.gz" in text and "reviews_Baby_5.json.gz" in text
    assert not (tmp_path / "raw/baby").exists()  # nothing half-made under the output name


def test_a_file_placed_by_hand_in_the_cache_is_used_without_network(tmp_path, params, server):
    baby_params(params, "http://127.0.0.1:9", tmp_path)
    for name in ("reviews_Baby_5.json.gz", "meta_Baby.json.gz"):
        dest = download.cache_path(tmp_path / "cache", f"http://127.0.0.1:9/{name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(server.files[f"/{name}"])
    manifest = download.run("baby", params, tmp_path / "raw")
    assert [e["status"] for e in manifest["files"]] == ["present", "present"]
    assert server.requests == []


def test_sha256_pinned_in_params_is_checked(tmp_path, params, server):
    baby_params(params, server.base, tmp_path)
    params["datasets"]["baby"].update(sha256={"reviews": "0" * 64})
    with pytest.raises(DownloadError, match="sha256"):
        download.run("baby", params, tmp_path / "raw")
    assert not (tmp_path / "raw/baby").exists()


def test_local_folder_in_mmrec_format(tmp_path, params):
    src = tmp_path / "mmrec_baby"
    src.mkdir()
    (src / "baby.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t2\n1\t1\t0\n1\t0\t1\n")
    params["datasets"]["mb"] = {"source": "mmrec", "name": "baby", "path": str(src)}
    manifest = download.run("mb", params, tmp_path / "raw")
    assert manifest["origin"] == "local" and manifest["source"] == "mmrec"
    assert [(e["role"], e["format"]) for e in manifest["files"]] == [("interactions", "mmrec-inter")]
    assert (tmp_path / "raw/mb/baby.inter").read_bytes() == (src / "baby.inter").read_bytes()

    params["datasets"]["mb"]["name"] = "sports"
    with pytest.raises(FileNotFoundError, match=r"sports.inter: the interactions file of dataset 'mb'"):
        download.run("mb", params, tmp_path / "raw2")


def test_local_source_names_its_format(tmp_path, params, server):
    folder = tmp_path / "by_hand"
    folder.mkdir()
    (folder / "r.json.gz").write_bytes(server.files["/reviews_Baby_5.json.gz"])
    (folder / "meta_Baby.json.gz").write_bytes(server.files["/meta_Baby.json.gz"])
    params["datasets"]["hand"] = {"source": "local", "format": "amazon2014", "category": "Baby", "path": str(folder)}
    params["datasets"]["hand"]["files"] = {"reviews": "r.json.gz"}
    manifest = download.run("hand", params, tmp_path / "raw")
    assert manifest["source"] == "amazon2014" and {e["role"] for e in manifest["files"]} == {"reviews", "meta"}
    params["datasets"]["hand"]["format"] = "amazon1999"
    with pytest.raises(ParamsError, match="datasets.hand.format = 'amazon1999'"):
        download.run("hand", params, tmp_path / "raw")


def test_sources_without_direct_links_say_what_to_do(tmp_path, params):
    params["datasets"]["bb"] = {"source": "mmrec", "name": "baby"}
    with pytest.raises(ParamsError, match=r"Google Drive.*datasets.bb.path"):
        download.run("bb", params, tmp_path / "raw")


def test_bilibili_folder_in_pmmrec_layout_runs_through_download_ingest_and_images(tmp_path, params):
    import pickle

    import lmdb
    import numpy as np
    import pyarrow.parquet as pq

    from tests.test_presplit_export import LMDB_Image

    folder = tmp_path / "bili_food"
    folder.mkdir()
    # 6 users x 5 items (a 5-core already), each sequence in a user-specific order
    seqs = {f"u{u}": [f"v{10 + (u + k) % 5}" for k in range(5)] for u in range(6)}
    (folder / "bilibili_food_users.tsv").write_text("".join(f"{u}\t{' '.join(s)}\n" for u, s in seqs.items()))
    (folder / "bilibili_food_items_texts.tsv").write_text("".join(f"v{10 + i}\t视频 {i}\n" for i in range(5)))
    env = lmdb.open(str(folder / "bilibili_food_items_images.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(4):  # item v14 has no cover
            txn.put(str(10 + i).encode(), pickle.dumps(LMDB_Image(np.full((8, 8, 3), 40 * i, np.uint8), str(10 + i))))
    env.close()

    params["datasets"]["bili"] = {"source": "bilibili", "name": "bili_food", "path": str(folder)}
    params["split"]["method"] = "leave_one_out"
    manifest = download.run("bili", params, tmp_path / "raw")
    assert manifest["covers"]["written"] == 4 and manifest["covers"]["missing"] == 1
    stats = ingest.run("bili", params, tmp_path / "raw", tmp_path / "processed")
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 5, 30)
    inter = pq.read_table(tmp_path / "processed/bili/interactions.parquet").to_pandas()
    users = pq.read_table(tmp_path / "processed/bili/users.parquet").to_pandas()
    items = pq.read_table(tmp_path / "processed/bili/items.parquet").to_pandas()
    # leave-one-out on the sequence order: each user's last item is test, the one before valid
    for user_idx, user_id in zip(users.user_idx, users.user_id, strict=True):
        rows = inter[inter.user_idx == user_idx]
        last = items.item_id[rows[rows.split == 2].item_idx.item()]
        before = items.item_id[rows[rows.split == 1].item_idx.item()]
        assert (before, last) == (seqs[user_id][-2], seqs[user_id][-1])
    assert items.title.tolist() == [f"视频 {i}" for i in range(5)]
    report = images.run("bili", params, tmp_path / "raw", tmp_path / "processed")
    assert report["stored"] == 4 and report["no_url"] == 1
