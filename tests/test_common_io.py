"""Atomic and deterministic writers: nothing half-written, same input -> same bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from mmpipe import lmdb_store
from mmpipe.io import (
    atomic_dir,
    atomic_path,
    read_csr,
    read_json,
    read_parquet,
    write_csr,
    write_json,
    write_parquet,
)
from mmpipe.schemas import read_features


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # the temp file is gone


def test_atomic_dir_replaces_whole_directory_only_on_success(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_npz_and_parquet_bytes_are_reproducible(tmp_path):
    m = sp.random(50, 40, density=0.1, random_state=1, format="csr", dtype=np.float32)
    write_csr(tmp_path / "a.npz", m)
    write_csr(tmp_path / "b.npz", m)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert (read_csr(tmp_path / "a.npz") != m).nnz == 0

    table = pa.table({"x": pa.array([3, 1, 2], pa.int32())})
    write_parquet(tmp_path / "a.parquet", table)
    write_parquet(tmp_path / "b.parquet", table)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_lmdb_store_is_single_file_deterministic_and_merges_base(tmp_path):
    items = [(f"k{i:03d}".encode(), bytes([i]) * 10) for i in range(100)]
    assert lmdb_store.write_store(tmp_path / "a.lmdb", items) == 100
    assert lmdb_store.write_store(tmp_path / "b.lmdb", list(reversed(items))) == 100
    assert (tmp_path / "a.lmdb").read_bytes() == (tmp_path / "b.lmdb").read_bytes()
    with lmdb_store.reading(tmp_path / "a.lmdb") as txn:
        assert txn.get(b"k007") == bytes([7]) * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lmdb", "b.lmdb"]  # no -lock files
    before = (tmp_path / "a.lmdb").read_bytes()
    lmdb_store.write_store(tmp_path / "a.lmdb", [(b"new", b"v")], base=tmp_path / "a.lmdb")
    assert lmdb_store.count(tmp_path / "a.lmdb") == 101
    assert (tmp_path / "b.lmdb").read_bytes() == before  # reading never modifies a store


def test_missing_and_broken_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        read_parquet(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(ValueError, match=r"bad.json: line 3"):
        read_json(bad)
    with pytest.raises(FileNotFoundError, match="store.lmdb"):
        lmdb_store.open_readonly(tmp_path / "store.lmdb")


def test_json_is_sorted_and_stable(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_read_features_checks_contract(tmp_path):
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    table = pa.table(
        {
            "item_idx": pa.array([0, 1, 2], pa.int32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 2),
            "has_input": pa.array([True, False, True]),
        }
    )
    write_parquet(tmp_path / "f.parquet", table)
    matrix, has = read_features(tmp_path / "f.parquet")
    np.testing.assert_array_equal(matrix, emb)
    assert has.tolist() == [True, False, True]
    write_parquet(tmp_path / "g.parquet", table.drop_columns(["has_input"]))
    with pytest.raises(ValueError, match="g.parquet: column 'has_input' is missing"):
        read_features(tmp_path / "g.parquet")
