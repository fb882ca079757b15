"""Downloads against a real local HTTP server: resume, retries, fail-fast, nothing half-written."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from stages.sources.http import (
    MAX_DELAY,
    DownloadError,
    ImageJob,
    backoff_delay,
    download_file,
    fetch_images,
)

GOOD = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(9375))  # 300,000 bytes
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()
SLOW_S = 3.0  # how long slow paths stall; far beyond the clients' timeouts below
FAST = {"timeout": 0.5, "backoff": 0.01, "progress": False}


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 10)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


JPEG = _jpeg()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) in arrival order
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def hits(self, path: str) -> list[str | None]:
        """The Range headers of every request for `path` (None: no Range)."""
        with self.lock:
            return [rng for p, rng in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, body: bytes, status: int = 200, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_ranged(self, body: bytes) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if not match:
            self._send(body)
            return
        start = int(match.group(1))
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def do_GET(self) -> None:
        srv, path = self.server, self.path
        with srv.lock:
            srv.requests.append((path, self.headers.get("Range")))
            count = sum(1 for p, _ in srv.requests if p == path)
        try:
            if path == "/good.bin":
                self._send_ranged(GOOD)
            elif path in ("/truncated.bin", "/always-truncated.bin"):
                if self.headers.get("Range") and path == "/truncated.bin":
                    self._send_ranged(GOOD)
                else:  # announce everything, send half, hang up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(GOOD)))
                    self.end_headers()
                    self.wfile.write(GOOD[: len(GOOD) // 2])
                    self.close_connection = True
            elif path in ("/slow", "/img/slow.jpg"):
                srv.stop.wait(SLOW_S)
                self._send(JPEG if path.endswith(".jpg") else GOOD)
            elif path == "/flaky":
                if count <= 2:
                    self.send_error(500)
                else:
                    self._send(GOOD)
            elif path == "/noranges.bin":
                self._send(GOOD)
            elif path.startswith("/img/ok"):
                self._send(JPEG, content_type="image/jpeg")
            elif path == "/img/notimage.jpg":
                self._send(b"<html><body>Sorry, this page moved.</body></html>", content_type="text/html")
            elif path == "/img/empty.jpg":
                self._send(b"", content_type="image/jpeg")
            else:  # /missing, /img/missing.jpg
                self.send_error(404)
        except OSError:  # the client gave up (timeout test): nothing to do
            pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_download_then_present_without_network(server, tmp_path):
    dest = tmp_path / "sub" / "good.bin"
    result = download_file(server.url("/good.bin"), dest, **FAST)
    assert (result.status, result.bytes, result.sha256) == ("downloaded", len(GOOD), GOOD_SHA)
    assert dest.read_bytes() == GOOD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["good.bin"]  # no .part left
    assert server.hits("/good.bin") == [None]

    again = download_file(server.url("/good.bin"), dest, expected_sha256=GOOD_SHA.upper(), **FAST)
    assert (again.status, again.sha256, again.bytes) == ("present", GOOD_SHA, len(GOOD))
    assert len(server.requests) == 1


def test_expected_sha256_mismatch_leaves_nothing(server, tmp_path):
    dest = tmp_path / "good.bin"
    with pytest.raises(DownloadError, match="sha256 mismatch") as err:
        download_file(server.url("/good.bin"), dest, expected_sha256="0" * 64, **FAST)
    assert str(dest) in str(err.value)
    assert not dest.exists() and not _part(dest).exists()


def test_present_file_that_does_not_match_is_reported_without_request(server, tmp_path):
    dest = tmp_path / "good.bin"
    dest.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="does not match") as err:
        download_file(server.url("/good.bin"), dest, expected_sha256=GOOD_SHA, **FAST)
    assert "delete it" in str(err.value) and "attempt" not in str(err.value)
    assert server.requests == []
    assert dest.read_bytes() == b"something else"


def test_existing_part_is_resumed_with_range(server, tmp_path):
    dest = tmp_path / "good.bin"
    _part(dest).write_bytes(GOOD[:100_000])
    result = download_file(server.url("/good.bin"), dest, expected_sha256=GOOD_SHA, **FAST)
    assert (result.status, result.sha256) == ("resumed", GOOD_SHA)
    assert dest.read_bytes() == GOOD and not _part(dest).exists()
    assert server.hits("/good.bin") == ["bytes=100000-"]


def test_complete_part_answered_416_is_done(server, tmp_path):
    dest = tmp_path / "good.bin"
    _part(dest).write_bytes(GOOD)
    result = download_file(server.url("/good.bin"), dest, **FAST)
    assert (result.status, result.sha256) == ("resumed", GOOD_SHA)
    assert server.hits("/good.bin") == [f"bytes={len(GOOD)}-"]


def test_truncated_response_resumes_where_it_stopped(server, tmp_path):
    dest = tmp_path / "t.bin"
    result = download_file(server.url("/truncated.bin"), dest, retries=2, **FAST)
    assert (result.status, result.sha256) == ("resumed", GOOD_SHA)
    assert dest.read_bytes() == GOOD
    assert server.hits("/truncated.bin") == [None, f"bytes={len(GOOD) // 2}-"]


def test_response_always_cut_at_the_same_point_gives_up(server, tmp_path):
    # Every attempt restarts from zero and stops at half: no progress beyond what was on disk.
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match=r"truncated response: got 150000 of 300000 bytes \(after 3 attempts\)"):
        download_file(server.url("/always-truncated.bin"), dest, retries=1, **FAST)
    assert len(server.hits("/always-truncated.bin")) == 3  # one that made progress + retries + 1 that did not
    assert not dest.exists() and _part(dest).stat().st_size == len(GOOD) // 2  # a later run may resume


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "n.bin"
    _part(dest).write_bytes(b"stale bytes from another version" * 30)
    result = download_file(server.url("/noranges.bin"), dest, **FAST)
    assert (result.status, result.sha256) == ("downloaded", GOOD_SHA)
    assert dest.read_bytes() == GOOD
    assert server.hits("/noranges.bin") == ["bytes=960-"]


def test_404_fails_at_once(server, tmp_path):
    dest = tmp_path / "m.bin"
    url = server.url("/missing")
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, retries=5, **FAST)
    message = str(err.value)
    assert url in message and "404" in message and "after 1 attempt)" in message and str(dest) in message
    assert server.hits("/missing") == [None]
    assert list(tmp_path.iterdir()) == []


def test_timeout_is_retried_then_reported(server, tmp_path):
    dest = tmp_path / "s.bin"
    url = server.url("/slow")
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, retries=1, timeout=0.3, backoff=0.01, progress=False)
    message = str(err.value)
    assert url in message and "timeout" in message and "after 2 attempts" in message
    assert err.value.attempts == 2 and err.value.reason.startswith("timeout")
    assert len(server.hits("/slow")) == 2
    assert not dest.exists()


def test_5xx_is_retried_until_success(server, tmp_path):
    dest = tmp_path / "f.bin"
    result = download_file(server.url("/flaky"), dest, retries=3, **FAST)
    assert (result.status, result.sha256) == ("downloaded", GOOD_SHA)
    assert len(server.hits("/flaky")) == 3


def test_5xx_gives_up_after_retries(server, tmp_path):
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"HTTP 500 .*after 2 attempts"):
        download_file(server.url("/flaky"), dest, retries=1, **FAST)
    assert len(server.hits("/flaky")) == 2
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_names_url_and_where_to_place_the_file(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url, dest = f"http://127.0.0.1:{port}/x", tmp_path / "raw" / "x.json.gz"
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, retries=1, **FAST)
    message = str(err.value)
    assert url in message and str(dest) in message and "place it at" in message
    assert "after 2 attempts" in message
    assert not dest.exists()


def test_backoff_is_exponential_and_capped():
    assert [backoff_delay(1.0, a) for a in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(1.0, 20) == MAX_DELAY
    assert backoff_delay(1.0, 0, retry_after=7.0) == 7.0
    assert backoff_delay(1.0, 0, retry_after=1e6) == MAX_DELAY


def test_fetch_images_counts_writes_only_good_images_and_resumes(server, tmp_path):
    out = tmp_path / "images"
    out.mkdir()
    (out / "P0.jpg").write_bytes(b"kept from an earlier run")
    names = {
        "A1": "/img/ok.jpg",
        "A2": "/img/ok2.jpg",
        "B": "/img/notimage.jpg",
        "C": "/img/missing.jpg",
        "D": "/img/empty.jpg",
        "E": "/img/slow.jpg",
        "P0": "/img/missing.jpg",  # present: never requested
    }
    jobs = [ImageJob(key, server.url(path), out / f"{key}.jpg") for key, path in names.items()]
    kwargs = {"workers": 4, "timeout": 0.3, "retries": 1, "backoff": 0.01, "progress": False}

    report = fetch_images(jobs, **kwargs)
    expected_failed = {"empty": 1, "http_404": 1, "not_an_image": 1, "timeout": 1}
    assert (report.ok, report.present, report.failed) == (2, 1, expected_failed)
    assert report.examples["http_404"] == [f"C {server.url('/img/missing.jpg')}"]
    assert sorted(p.name for p in out.iterdir()) == ["A1.jpg", "A2.jpg", "P0.jpg"]  # no temp files either
    assert (out / "A1.jpg").read_bytes() == JPEG and (out / "A2.jpg").read_bytes() == JPEG
    assert len(server.hits("/img/slow.jpg")) == 2  # retried once
    assert len(server.hits("/img/missing.jpg")) == 1  # 404: not retried, P0 not fetched
    assert len(server.hits("/img/notimage.jpg")) == 1

    before = len(server.requests)
    again = fetch_images(jobs, **kwargs)
    assert (again.ok, again.present, again.failed) == (0, 3, expected_failed)
    assert again.as_dict() == {**report.as_dict(), "ok": 0, "present": 3}
    assert {p for p, _ in server.requests[before:]} == {
        "/img/notimage.jpg",
        "/img/missing.jpg",
        "/img/empty.jpg",
        "/img/slow.jpg",
    }
    assert report.as_dict()["failed_total"] == 4


def test_fetch_images_rejects_two_jobs_with_one_dest(tmp_path):
    jobs = [ImageJob(key, f"http://127.0.0.1:1/{key}", tmp_path / "x.jpg") for key in ("a", "b")]
    with pytest.raises(ValueError, match="same file"):
        fetch_images(jobs, progress=False)
