"""Atomic, deterministic writers and readers shared by the stages.

Every output is written to a temporary path beside its target and renamed into place, so a
crash never leaves a half-written file that DVC could cache. Writers are deterministic (no
timestamps, sorted keys, fixed compression), so the same inputs give byte-identical files and
DVC hashes stay stable across runs and machines.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

_UMASK = os.umask(0)
os.umask(_UMASK)


def temp_prefix(name: str) -> str:
    """`.<name>.<pid>.`: a temporary sibling names the process that writes it, so that a later run can tell
    the leftovers of a killed one (`remove_stale_temps`) from the work of one still running."""
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(folder: Path, name: str) -> int:
    """Remove the temporary siblings of `name` in `folder` (`.<name>.<pid>.*.tmp*` / `.old`) whose process
    is gone (a SIGKILL or a power cut skips every cleanup); return how many."""
    removed = 0
    for path in folder.glob(f".{glob.escape(name)}.*") if folder.is_dir() else ():
        pid, _, rest = path.name[len(name) + 2 :].partition(".")
        if not pid.isdigit() or not (".tmp" in rest or rest.endswith(".old")) or _pid_alive(int(pid)):
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed += 1
    return removed


def _tmp_sibling(target: Path, suffix: str = "") -> Path:
    # no remove_stale_temps here: files are written one per item (images, covers), and a scan of the
    # folder per file would be quadratic; a killed file write leaves its temporary inside a folder that
    # atomic_dir or the stage replaces as a whole
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
    return Path(name)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; rename it onto `target` on success only."""
    target = Path(target)
    tmp = _tmp_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `target` as a whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text, columns in order of first appearance (a row may lack some): training histories."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_json(target: str | Path, obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline (stable bytes, readable diffs)."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # a leading BOM (as some tools write) is dropped
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found (run the stage that writes it first)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None


def write_parquet(target: str | Path, table: pa.Table, metadata: dict[str, str] | None = None) -> None:
    """Write a Parquet file without pandas metadata, so bytes depend only on the data (and `metadata`)."""
    table = table.replace_schema_metadata(metadata)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3, write_statistics=True)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (run the stage that writes it first)")
    # ParquetFile, not read_table: the latter imports pyarrow.dataset and pandas, 0.2 s at every stage start
    with pq.ParquetFile(path) as file:
        return file.read(columns=columns)


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(target: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Like numpy.savez, but with fixed zip timestamps so the bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            arr_buf = io.BytesIO()
            np.lib.format.write_array(arr_buf, np.asarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, arr_buf.getvalue())
    write_bytes(target, buf.getvalue())


def write_csr(target: str | Path, matrix: sp.spmatrix) -> None:
    """Save a sparse matrix in scipy's `save_npz` layout (readable by `scipy.sparse.load_npz`)."""
    csr = sp.csr_matrix(matrix)
    csr.sort_indices()
    write_npz(
        target,
        {
            "data": csr.data,
            "indices": csr.indices,
            "indptr": csr.indptr,
            "format": np.array(b"csr"),
            "shape": np.array(csr.shape, dtype=np.int64),
        },
    )


def read_csr(path: str | Path) -> sp.csr_matrix:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (run the stage that writes it first)")
    return sp.load_npz(path).tocsr()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """Hash a file or every file under a directory (relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        h.update(b"\0")
        h.update(sha256_file(file).encode())
    return h.hexdigest()
