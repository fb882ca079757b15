"""Sharing the pipeline's outputs through a real S3 server on loopback (moto's server, started here).

Each scenario is what a colleague does in a fresh clone of a project that ran `dvc repro` and pushed:
pull and reproduce nothing; pull only features and graphs and retrain; add items and encode only them
(the persisted LMDB embedding cache comes with `dvc pull`); restore a training from the run cache; a push
cut off by the server going away, then resumed; wrong credentials and an unreachable endpoint.
The server speaks the S3 API over HTTP (boto3 / s3fs, as against AWS or MinIO); credentials are enforced
(moto's IAM authentication), so a wrong key is refused as it would be by a real bucket.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3  # installed with the project (dvc-s3): a missing one fails `make test-remote`, never skips it
import moto.server as moto_server  # a dev dependency: pip install -e '.[dev]'
import pytest
import yaml

from tests.conftest import address, stages_run, tiny_params
from tests.test_pipeline_e2e import Project, copy_project

pytestmark = pytest.mark.remote

BUCKET = "mmpipe-team"
FEATURES = ("features@demo-default-text", "features@demo-default-image")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3:
    """A moto S3 server with one bucket and one IAM user allowed everything."""

    server: object
    url: str
    key_id: str
    secret: str

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
        )  # fmt: skip

    def count(self, prefix: str) -> int:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sum(page.get("KeyCount", 0) for page in pages)


def set_auth(url: str, free_actions: float) -> None:
    """moto's switch: after `free_actions` more requests, every request must be signed by an IAM key."""
    request = urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=str(free_actions).encode(), method="POST",
        headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def s3() -> S3:
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    anonymous = dict(region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", endpoint_url=url, **anonymous)
    iam.create_user(UserName="colleague")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="colleague", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="colleague")["AccessKey"]
    boto3.client("s3", endpoint_url=url, **anonymous).create_bucket(Bucket=BUCKET)
    set_auth(url, 0)
    yield S3(server, url, key["AccessKeyId"], key["SecretAccessKey"])
    set_auth(url, float("inf"))
    server.stop()


def add_remote(proj: Project, s3: S3, name: str, prefix: str, *, default: bool = True) -> None:
    """What docs/sharing.md tells a user: the bucket and `verify true` in .dvc/config (committed), the rest
    in config.local."""
    proj.sh("dvc", "remote", "add", *(["-d"] if default else []), name, f"s3://{BUCKET}/{prefix}")
    proj.sh("dvc", "remote", "modify", name, "verify", "true")
    set_credentials(proj, s3, name)


def set_credentials(proj: Project, s3: S3, name: str, cwd: Path | None = None) -> None:
    """Endpoint and keys in .dvc/config.local: never committed, set again in every clone."""
    for option, value in (("endpointurl", s3.url), ("access_key_id", s3.key_id), ("secret_access_key", s3.secret)):
        proj.sh("dvc", "remote", "modify", "--local", name, option, value, cwd=cwd)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, s3) -> Project:
    """The tiny demo project, reproduced, its remote committed, everything pushed."""
    proj = copy_project(tmp_path_factory.mktemp("s3") / "proj", tiny_params())
    proj.repro()
    add_remote(proj, s3, "team", "store")
    proj.commit("results and the team remote")
    proj.sh("dvc", "push")
    return proj


def clone(proj: Project, s3: S3, path: Path) -> Path:
    proj.sh("git", "clone", "-q", str(proj.path), str(path))
    set_credentials(proj, s3, "team", cwd=path)
    return path


def ran(output: str) -> set[str]:
    return stages_run(output)


def cached_files(root: Path) -> dict[str, bytes]:
    """Every file DVC caches, by path: what a pull must bring back byte for byte."""
    files = {}
    for top in ("raw", "processed", "runs"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and path.suffix in (".parquet", ".lmdb", ".pt", ".npz", ".png", ".jpg", ".json"):
                files[str(path.relative_to(root))] = path.read_bytes()
    return files


def workspace(root: Path) -> list[str]:
    """The clone's files outside .git and .dvc (DVC's own locks and temp files may come and go)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not {".git", ".dvc"} & set(p.parts))


def test_clone_pull_then_repro_runs_nothing(pushed, s3, tmp_path):
    work = clone(pushed, s3, tmp_path / "colleague")
    pushed.sh("dvc", "pull", cwd=work)
    assert "Running stage" not in pushed.sh("dvc", "repro", cwd=work)
    assert "up to date" in pushed.sh("dvc", "status", cwd=work)
    mine, theirs = cached_files(pushed.path), cached_files(work)
    assert mine.keys() == theirs.keys() and len(mine) > 20
    assert [p for p in mine if mine[p] != theirs[p]] == []
    assert s3.count("store/files/md5/") > 20


def test_pull_features_and_graphs_only_then_retrain(pushed, s3, tmp_path):
    """Only what a training param needs comes from the remote; nothing is extracted or downloaded again."""
    work = clone(pushed, s3, tmp_path / "trainer")
    # the features stages depend on the whole raw/encoders folder: with the demo CLIP absent DVC would
    # count that folder modified (not missing) and re-extract, so the encoder comes along (a few MB)
    targets = (*FEATURES, "graphs@demo-default", "demo_encoder@demo-clip")
    pushed.sh("dvc", "pull", *(address(t) for t in targets), cwd=work)
    assert not (work / "raw/demo").exists()
    stats_before = (work / "processed/demo/feature_stats/default-text.json").read_bytes()
    Project(work).set_param("train.freedom.reg_weight", 0.01)
    # --allow-missing: stages whose outputs are absent but whose deps and params did not change are
    # skipped; --pull: what a stage that must run needs (interactions.parquet, ...) comes from the remote
    out = pushed.sh("dvc", "repro", "--allow-missing", "--pull", cwd=work)
    assert ran(out) == {
        "check",
        "train_graph@demo-default-freedom-2026",
        "evaluate_graph@demo-default-freedom-2026",
        "report",
    }
    assert not (work / "raw/demo").exists()  # nothing downloaded, by DVC or by the download stage
    assert (work / "processed/demo/feature_stats/default-text.json").read_bytes() == stats_before


def test_new_items_encode_only_themselves(pushed, s3, tmp_path):
    """The persisted LMDB embedding cache comes with the pull: a laxer k-core encodes only the new items."""
    work = clone(pushed, s3, tmp_path / "grower")
    pushed.sh("dvc", "pull", cwd=work)
    old_stats = json.loads((work / "processed/demo/feature_stats/default-text.json").read_text())
    colleague = Project(work)
    colleague.set_param("kcore.item_min", 2)
    colleague.set_param("kcore.user_min", 2)
    out = pushed.sh("dvc", "repro", *(address(t) for t in FEATURES), cwd=work)
    assert {"ingest@demo", *FEATURES} <= ran(out) and "download@demo" not in ran(out)
    for modality in ("text", "image"):
        stats = json.loads((work / f"processed/demo/feature_stats/default-{modality}.json").read_text())
        assert stats["items"] > old_stats["items"], "the laxer k-core must add items"
        assert stats["encoded"] > 0 and stats["cache_hits"] > 0, modality
        assert stats["encoded"] <= stats["items"] - old_stats["items"], modality  # only new items encoded
        assert stats["encoded"] + stats["cache_hits"] == stats["with_input"], modality


def test_run_cache_restores_stages_without_uncached_reports(pushed, s3, tmp_path):
    """`dvc push --run-cache`: a colleague who sets the same params gets the run without running it.

    DVC 3 keeps a run-cache entry only for stages whose outputs are all cached, metrics or plots, and never
    for stages with `persist: true` outputs. Here that restores download, demo_encoder and export; the
    stages that write an uncached report beside their outputs (ingest_stats.json, feature_stats/,
    train.json, evaluation.json, ...) and the features stages (persisted LMDB cache) run again. Scenario 3
    works through the normal cache instead: the LMDB is pushed and pulled like any output.
    """
    encoder, training = "demo_encoder@demo-clip", "train_id@demo-lightgcn-2026"
    pushed.set_param("demo_encoders.demo-clip.seed", 7)
    pushed.set_param("train.lightgcn.n_layers", 1)
    assert {encoder, training} <= ran(pushed.sh("dvc", "repro", address(encoder), address(training)))
    weights = pushed.path / "raw/encoders/demo-clip/model.safetensors"
    seed7 = weights.read_bytes()
    pushed.sh("dvc", "push", "--run-cache")
    pushed.sh("git", "checkout", "--", ".")
    pushed.sh("dvc", "checkout")
    assert weights.read_bytes() != seed7

    work = clone(pushed, s3, tmp_path / "reuser")
    pushed.sh("dvc", "pull", cwd=work)
    colleague = Project(work)
    colleague.set_param("demo_encoders.demo-clip.seed", 7)
    colleague.set_param("train.lightgcn.n_layers", 1)
    # --pull fetches the run cache and, for an entry that matches, its outputs (`dvc pull --run-cache`
    # alone brings the entries but not the outputs of runs that dvc.lock does not name)
    out = pushed.sh("dvc", "repro", "--pull", address(encoder), address(training), cwd=work)
    assert f"Stage '{address(encoder)}' is cached - skipping run" in out and encoder not in ran(out)
    assert training in ran(out)  # train.json is an uncached output that is neither metric nor plot
    assert (work / "raw/encoders/demo-clip/model.safetensors").read_bytes() == seed7  # restored, not re-drawn


def test_a_push_cut_off_by_the_server_resumes_without_loss(pushed, s3, tmp_path):
    """The server stops mid-push; the push fails; after a restart a second push completes the set."""
    add_remote(pushed, s3, "cut", "cut", default=False)
    pushed.commit("a second remote")
    proc = subprocess.Popen(
        ["dvc", "push", "-r", "cut", "-j", "1"], cwd=pushed.path, env=pushed.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while s3.count("cut/") < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the push finished before the server could be stopped"
    s3.server.stop()
    output, _ = proc.communicate(timeout=600)
    s3.server.start()
    assert proc.returncode != 0, output[-2000:]
    partial = s3.count("cut/")
    pushed.sh("dvc", "push", "-r", "cut")
    assert s3.count("cut/") > partial
    assert "in sync" in pushed.sh("dvc", "status", "-c", "-r", "cut")
    work = tmp_path / "after-cut"
    pushed.sh("git", "clone", "-q", str(pushed.path), str(work))
    set_credentials(pushed, s3, "cut", cwd=work)
    pushed.sh("dvc", "pull", "-r", "cut", cwd=work)
    mine, theirs = cached_files(pushed.path), cached_files(work)
    assert [p for p in mine if mine[p] != theirs.get(p)] == []


@pytest.mark.parametrize("fault", ["wrong secret", "unreachable endpoint"])
def test_bad_remote_gives_a_clear_error_and_leaves_no_partial_state(pushed, s3, tmp_path, fault):
    work = clone(pushed, s3, tmp_path / fault.replace(" ", "-"))
    if fault == "wrong secret":
        pushed.sh("dvc", "remote", "modify", "--local", "team", "secret_access_key", "not-the-secret", cwd=work)
    else:
        pushed.sh(
            "dvc", "remote", "modify", "--local", "team", "endpointurl", f"http://127.0.0.1:{free_port()}", cwd=work
        )
    before = workspace(work)
    # botocore retries a refused connection for minutes; one attempt is enough to see the error
    env = {**pushed.env, "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    proc = subprocess.run(["dvc", "pull"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    message = proc.stdout + proc.stderr
    assert proc.returncode != 0
    expected = "Forbidden|403" if fault == "wrong secret" else "Could not connect to the endpoint URL"
    assert any(word in message for word in expected.split("|")), message[-2000:]
    assert workspace(work) == before  # no output, no half-written file


def lock_md5(root: Path, path: str) -> str:
    for lock in [root / "dvc.lock", *sorted(root.glob("pipelines/*/dvc.lock"))]:
        for stage in yaml.safe_load(lock.read_text())["stages"].values():
            for out in stage.get("outs", []):
                if out["path"] == path:
                    return out["md5"]
    raise KeyError(path)


def test_a_damaged_object_on_the_remote_is_refused_named_and_repaired(pushed, s3, tmp_path):
    """Two bytes flipped in the remote's copy of items.parquet and of a file inside a tracked folder (the
    export's text_feat.npy): a fresh clone's pull refuses it (`verify true`), `python -m mmpipe.remote verify` names the
    objects and the files they hold, `--repair` deletes them (and the folder's manifest), a push from the
    project sends them again, and the clone's pull then gives the project's bytes."""
    client = s3.client()

    def damage(md5: str) -> str:
        key = f"store/files/md5/{md5[:2]}/{md5[2:]}"
        body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0xFF
        body[-1] ^= 0xFF
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
        return key

    items = damage(lock_md5(pushed.path, "processed/demo/items.parquet"))
    folder = lock_md5(pushed.path, "processed/demo/export/default")
    entries = json.loads((pushed.path / f".dvc/cache/files/md5/{folder[:2]}/{folder[2:]}").read_text())
    features = damage(next(e["md5"] for e in entries if e["relpath"] == "text_feat.npy"))
    work = clone(pushed, s3, tmp_path / "colleague")
    assert "in sync" in pushed.sh("dvc", "status", "-c")  # DVC compares names only: it cannot see the damage
    proc = subprocess.run(["dvc", "pull"], cwd=work, env=pushed.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert not (work / "processed/demo/items.parquet").exists()  # refused, not written

    check = ["python", "-m", "mmpipe.remote", "verify"]
    proc = subprocess.run(check, cwd=work, env=pushed.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 of " in proc.stdout and items in proc.stdout and "holds processed/demo/items.parquet" in proc.stdout
    assert features in proc.stdout and "holds processed/demo/export/default/text_feat.npy" in proc.stdout
    proc = subprocess.run([*check, "--repair"], cwd=work, env=pushed.env, capture_output=True, text=True)
    assert proc.returncode == 1 and "deleted 3 object(s)" in proc.stdout, proc.stdout + proc.stderr  # + the manifest
    missing = pushed.sh("dvc", "status", "-c")  # the project now sees them missing on the remote
    assert "processed/demo/items.parquet" in missing and "processed/demo/export/default" in missing
    pushed.sh("dvc", "push")
    proc = subprocess.run(check, cwd=work, env=pushed.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "objects of the remote match their names" in proc.stdout, proc.stdout
    pushed.sh("dvc", "pull", cwd=work)
    mine, theirs = cached_files(pushed.path), cached_files(work)
    assert [p for p in mine if mine[p] != theirs.get(p)] == []
