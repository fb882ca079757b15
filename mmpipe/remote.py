"""Check the objects of a DVC remote against their names, say which workspace files a bad one holds, repair.

DVC names every object by the md5 of its content, but `dvc push` only checks that an object of that name
exists, and `dvc status -c` compares names: an object damaged on the remote (a flipped bit, a truncated
upload by another tool) stays "in sync" forever, a pull with the remote's `verify false` writes it into
the cache and the workspace, and a pull with `verify true` (this project's documented setting) refuses it
with "Checkout failed" without naming it. This reads every object of the remote, hashes it, and for each
mismatch names the remote path and the files of this project (from the dvc.lock files) that it holds.

    python -m mmpipe.remote verify [--remote NAME]            # report; exit status 1 if an object is bad
    python -m mmpipe.remote verify [--remote NAME] --repair   # also delete the bad objects (remote, cache)

After `--repair`, `dvc push` from a clone that has the good files sends them again (the remote no longer
has objects of those names), and `dvc pull` here brings them back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

CHUNK = 1 << 20


@dataclass(frozen=True)
class BadObject:
    oid: str  # the object's name: the md5 it should have (".dir" for a folder's manifest)
    actual: str  # the md5 of what the remote holds
    remote_path: str
    files: tuple[str, ...]  # the workspace files (or folders) of this project that the object holds
    folders: tuple[str, ...] = ()  # the `.dir` objects of the tracked folders that contain it


def md5_of(fs: Any, path: str) -> str:
    digest = hashlib.md5()
    with fs.open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def tracked_outputs(repo: Any) -> dict[str, list[str]]:
    """md5 -> the workspace paths recorded with it: every output of every stage (and .dvc file) as DVC's
    own index reads them from the dvc.yaml and dvc.lock files."""
    owners: dict[str, list[str]] = defaultdict(list)
    for out in repo.index.outs:
        oid = out.hash_info.value if out.hash_info else None
        path = os.path.relpath(out.fs_path, repo.root_dir)
        if oid and path not in owners[oid]:
            owners[oid].append(path)
    return owners


def manifest(fs: Any, path: str) -> list[dict[str, str]]:
    """The entries (md5, relpath) of a folder's `.dir` object; [] if it cannot be read as one."""
    try:
        with fs.open(path, "rb") as handle:
            entries = json.loads(handle.read())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and "md5" in e and "relpath" in e]


def file_owners(repo: Any, odbs: list[Any]) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """(md5 -> workspace paths, md5 -> the `.dir` objects of the folders that contain it), the files inside
    tracked folders included (their manifests read from the first of `odbs` that has them: the local cache,
    then the remote)."""
    owners = tracked_outputs(repo)
    folders: dict[str, set[str]] = defaultdict(set)
    for oid, paths in list(owners.items()):
        if not oid.endswith(".dir"):
            continue
        for odb in odbs:
            path = odb.oid_to_path(oid)
            if odb.fs.exists(path):
                for entry in manifest(odb.fs, path):
                    owners.setdefault(entry["md5"], []).extend(f"{p}/{entry['relpath']}" for p in paths)
                    folders[entry["md5"]].add(oid)
                break
    return owners, folders


def verify(repo: Any, remote: str | None = None, progress: bool = True) -> tuple[int, list[BadObject]]:
    """(objects checked, the bad ones) of `remote` (the default remote when None)."""
    odb = repo.cloud.get_remote_odb(remote, "verify")
    oids = sorted(odb.all())
    owners, folders = file_owners(repo, [repo.cache.local, odb])
    bad = []
    for oid in tqdm(oids, desc="objects", unit="obj", disable=not progress):
        path = odb.oid_to_path(oid)
        actual = md5_of(odb.fs, path)
        if actual != oid.removesuffix(".dir"):
            bad.append(BadObject(oid, actual, path, tuple(owners.get(oid, ())), tuple(sorted(folders.get(oid, ())))))
    return len(oids), bad


def repair(repo: Any, bad: list[BadObject], remote: str | None = None) -> list[str]:
    """Delete the bad objects from the remote, and from the local cache where its copy is bad too.

    The manifests of the folders holding a bad file go too: `dvc push` takes a folder whose manifest is on
    the remote for complete and would not send the file again (they are pushed again with it)."""
    odb = repo.cloud.get_remote_odb(remote, "verify")
    cache = repo.cache.local
    removed = []
    for oid in sorted({o.oid for o in bad} | {f for o in bad for f in o.folders}):
        path = odb.oid_to_path(oid)
        if odb.fs.exists(path):
            odb.fs.rm(path)
            removed.append(path)
        local = cache.oid_to_path(oid)
        if cache.fs.exists(local) and md5_of(cache.fs, local) != oid.removesuffix(".dir"):
            cache.fs.rm(local)
            removed.append(local)
    return removed


def describe(obj: BadObject) -> str:
    held = ", ".join(obj.files) if obj.files else "no file of this project's dvc.lock files"
    return f"{obj.remote_path}: content md5 {obj.actual}, expected {obj.oid}; holds {held}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["verify"])
    parser.add_argument("--remote", "-r", default=None, help="the DVC remote (default: the default remote)")
    parser.add_argument("--repair", action="store_true", help="delete the bad objects (remote and local cache)")
    args = parser.parse_args(argv)

    from dvc.repo import Repo

    with Repo(".") as repo:
        checked, bad = verify(repo, args.remote, progress=sys.stderr.isatty())
        if not bad:
            print(f"all {checked} objects of the remote match their names")
            return 0
        print(f"{len(bad)} of {checked} objects of the remote do not match their names (damaged on the remote):")
        for obj in bad:
            print(f"  {describe(obj)}")
        if not args.repair:
            print(
                "Repair: `python -m mmpipe.remote verify --repair` deletes them from the remote (and this cache); "
                "then `dvc push` from a clone that has the good files, and `dvc pull` here."
            )
            return 1
        removed = repair(repo, bad, args.remote)
        print(f"deleted {len(removed)} object(s): {', '.join(removed)}")
        print("Now `dvc push` from a clone that has the good files (its `dvc status -c` lists them as missing on "
              "the remote), then `dvc pull` here.")  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
