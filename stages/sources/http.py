"""Downloads for the `download` stage: large files resumed after failures, images fetched in parallel.

Raw Amazon files are several GB, so a dropped connection must not cost the bytes already on
disk: a file is streamed into `<dest>.part`, resumed with an HTTP Range request, and renamed to
`<dest>` only when complete (and verified, when a sha256 is known). Anything under the final
name is therefore complete, which makes re-runs cheap and lets a user place a file by hand when
the machine has no network. Only the standard library is used, so nothing else needs installing.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from mmpipe.io import atomic_path, sha256_file
from mmpipe.log import get_logger, progress_disabled

log = get_logger("download")

USER_AGENT = "mmpipe/0.1 (+https://dvc.org; research pipeline)"
MAX_DELAY = 60.0  # seconds; the cap of the exponential backoff and of a server's Retry-After
RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
EXAMPLES_PER_REASON = 5

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says what to place by hand, and where."""

    def __init__(self, url: str, dest: Path, reason: str, attempts: int) -> None:
        self.url, self.dest, self.reason, self.attempts = url, dest, reason, attempts
        # attempts == 0: the file on disk was rejected before any request was made
        tries = "" if attempts == 0 else f" (after {attempts} attempt{'s' if attempts > 1 else ''})"
        super().__init__(
            f"could not download {url}: {reason}{tries}. With no network, download it "
            f"elsewhere and place it at {dest}; a re-run then uses it."
        )


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix (timeout, dropped connection, 5xx)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Fatal(Exception):
    """One attempt failed in a way retrying cannot fix (404, 403, bad URL, checksum mismatch)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class FileResult:
    path: Path
    url: str
    bytes: int
    sha256: str
    status: str  # "downloaded" | "resumed" | "present"


def backoff_delay(backoff: float, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential, capped, or the server's wish."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_DELAY)
    return min(backoff * 2**attempt, MAX_DELAY)


def _retry_after(headers: Any) -> float | None:
    """Parse `Retry-After` (seconds or an HTTP date) so 429/503 waits as long as the server asks."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _classify(exc: BaseException) -> tuple[str, str, bool]:
    """Map a network exception to (short code, readable reason, retryable?).

    The code is what image reports count by; the reason goes into error messages.
    """
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}".strip()
        return f"http_{exc.code}", reason, exc.code >= 500 or exc.code in RETRY_STATUS
    if isinstance(exc, urllib.error.URLError):
        # urllib wraps socket errors raised while connecting; judge the wrapped one.
        if isinstance(exc.reason, BaseException):
            return _classify(exc.reason)
        return "connection", f"connection error: {exc.reason}", True
    if isinstance(exc, TimeoutError):  # socket.timeout is an alias of TimeoutError
        return "timeout", f"timeout ({exc or 'timed out'})", True
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "connection", f"TLS certificate rejected: {exc}", False
    if isinstance(exc, ConnectionRefusedError):
        return "connection", "connection refused", True
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return "connection", f"connection error: {type(exc).__name__}: {exc}".rstrip(": "), True
    if isinstance(exc, ValueError):  # unknown scheme, invalid characters: retrying will not help
        return "bad_url", f"invalid URL: {exc}", False
    raise exc


def _open(url: str, timeout: float, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """GET `url`; raise `_Retry`/`_Fatal` instead of urllib's many exception types."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            raise  # the caller decides whether the part is already complete
        _, reason, retry = _classify(exc)
        retry_after = _retry_after(exc.headers)
        exc.close()
        raise (_Retry(reason, retry_after) if retry else _Fatal(reason)) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        _, reason, retry = _classify(exc)
        raise (_Retry(reason) if retry else _Fatal(reason)) from exc


def _part_size(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


def _attempt(url: str, part: Path, timeout: float, chunk_size: int, show: bool) -> bool:
    """One request that extends `part` towards the full file; returns True if a Range request was honoured.

    Raises `_Retry` when the response stops early (what arrived stays in `part`, so the next attempt
    resumes from there) and `_Fatal` when retrying cannot help.
    """
    offset = _part_size(part)
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = _open(url, timeout, headers)
    except urllib.error.HTTPError as exc:  # only 416 gets here
        content_range = exc.headers.get("Content-Range", "") if exc.headers is not None else ""
        exc.close()
        match = _UNSATISFIED_RANGE.search(content_range)
        if offset and match and int(match.group(1)) == offset:
            return True  # the part already holds the whole file
        part.unlink(missing_ok=True)  # the part does not fit the file on the server: start again
        raise _Retry(
            f"HTTP 416 for a part of {offset} bytes ({content_range or 'no Content-Range'}), restarting"
        ) from None

    with resp:
        raw_length = resp.headers.get("Content-Length")
        length = int(raw_length) if raw_length and raw_length.isdigit() else None
        resumed = resp.status == 206
        if resumed:
            match = _CONTENT_RANGE.search(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"bad Content-Range {resp.headers.get('Content-Range')!r} for offset {offset}, restarting")
            total = int(match.group(3)) if match.group(3) != "*" else (offset + length if length is not None else None)
            start, mode = offset, "ab"
        else:  # 200: the server sent the whole file (it may have ignored our Range)
            total, start, mode = length, 0, "wb"

        written = start
        bar = tqdm(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[: -len(".part")],
            disable=not show,
            leave=False,
        )
        with bar, open(part, mode) as fh:
            while True:
                try:
                    block = resp.read(chunk_size)
                except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, IncompleteRead
                    _, reason, _ = _classify(exc)
                    raise _Retry(f"{reason} after {written} bytes") from exc
                if not block:
                    break
                fh.write(block)
                written += len(block)
                bar.update(len(block))
            fh.flush()
            os.fsync(fh.fileno())

    if total is not None and written < total:
        raise _Retry(f"truncated response: got {written} of {total} bytes")
    if total is not None and written > total:
        part.unlink(missing_ok=True)
        raise _Retry(f"response longer than announced: got {written} of {total} bytes, restarting")
    return resumed


def download_file(
    url: str,
    dest: Path,
    *,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    chunk_size: int = 1 << 20,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> FileResult:
    """Fetch `url` to `dest`, resuming `<dest>.part` from earlier runs or attempts.

    `dest` existing means complete, so it is returned as "present" without any network access.
    `retries` bounds the consecutive attempts that bring no new bytes (an attempt that extends the
    part beyond what was ever on disk does not use one up), so a flaky link on a multi-GB file
    still finishes while a dead server fails after `retries + 1` attempts.
    """
    dest = Path(dest)
    expected = expected_sha256.lower() if expected_sha256 else None
    start_time = time.perf_counter()
    if dest.exists():
        digest = sha256_file(dest)
        if expected and digest != expected:
            raise DownloadError(
                url,
                dest,
                f"the file on disk at {dest} does not match: sha256 {digest}, expected {expected}; "
                "delete it so a re-run downloads it again",
                0,
            )
        return _finish(FileResult(dest, url, dest.stat().st_size, digest, "present"), start_time)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    show = progress and not progress_disabled()
    attempts = stalls = 0
    high_water = _part_size(part)
    resumed = False
    while True:
        attempts += 1
        try:
            resumed = _attempt(url, part, timeout, chunk_size, show) or resumed
            break
        except _Fatal as exc:
            raise DownloadError(url, dest, exc.reason, attempts) from exc
        except _Retry as exc:
            size = _part_size(part)
            if size > high_water:
                high_water, stalls = size, 0
            else:
                stalls += 1
            if stalls > retries:
                raise DownloadError(url, dest, exc.reason, attempts) from exc
            delay = backoff_delay(backoff, max(stalls - 1, 0), exc.retry_after)
            log.warning("%s: %s; attempt %d failed, retrying in %.1f s", url, exc.reason, attempts, delay)
            time.sleep(delay)

    digest = sha256_file(part)
    if expected and digest != expected:
        part.unlink(missing_ok=True)  # a complete but wrong file: resuming it cannot help
        raise DownloadError(url, dest, f"sha256 mismatch: got {digest}, expected {expected}", attempts)
    size = part.stat().st_size
    os.replace(part, dest)
    return _finish(FileResult(dest, url, size, digest, "resumed" if resumed else "downloaded"), start_time)


def _finish(result: FileResult, start_time: float) -> FileResult:
    log.info(
        "%s: %d bytes, %s in %.1f s (%s)",
        result.url,
        result.bytes,
        result.status,
        time.perf_counter() - start_time,
        result.path,
    )
    return result


@dataclass
class ImageJob:
    key: str
    url: str
    dest: Path


@dataclass
class ImageReport:
    """Counts of one `fetch_images` run; `failed` counts by reason, `examples` shows a few per reason."""

    ok: int = 0
    present: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "present": self.present,
            "failed": dict(sorted(self.failed.items())),
            "failed_total": sum(self.failed.values()),
            "examples": {reason: list(self.examples[reason]) for reason in sorted(self.examples)},
        }


def _check_image(data: bytes) -> str | None:
    """None if `data` decodes as an image header, else the failure code."""
    if not data:
        return "empty"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception:  # Pillow raises many types (UnidentifiedImageError, SyntaxError, struct.error...)
        return "not_an_image"
    return None


def _fetch_image(job: ImageJob, timeout: float, retries: int, backoff: float) -> str | None:
    """Fetch one image into memory, check it, write it atomically; None on success, else the failure code."""
    code = "connection"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_delay(backoff, attempt - 1))
        try:
            with urllib.request.urlopen(
                urllib.request.Request(job.url, headers={"User-Agent": USER_AGENT}), timeout=timeout
            ) as resp:
                length = resp.headers.get("Content-Length")
                data = resp.read()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            code, _, retry = _classify(exc)
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
            if retry:
                continue
            return code
        if length and length.isdigit() and len(data) < int(length):
            code = "truncated"
            continue
        problem = _check_image(data)
        if problem:
            return problem
        with atomic_path(job.dest) as tmp:
            tmp.write_bytes(data)
        return None
    return code


def fetch_images(
    jobs: list[ImageJob],
    *,
    workers: int = 8,
    timeout: float = 20.0,
    retries: int = 2,
    backoff: float = 0.5,
    progress: bool = True,
) -> ImageReport:
    """Fetch many small images with `workers` threads; jobs whose `dest` exists count as present.

    A failure is counted by reason and never leaves a file at `dest`, so a re-run retries exactly
    the failed ones. The report does not depend on thread scheduling.
    """
    dupes = sorted(str(d) for d, n in Counter(Path(job.dest) for job in jobs).items() if n > 1)
    if dupes:
        raise ValueError(f"fetch_images: several jobs write the same file, e.g. {dupes[:3]}")
    report = ImageReport()
    todo = [job for job in jobs if not Path(job.dest).exists()]
    report.present = len(jobs) - len(todo)
    failures: dict[str, list[str]] = {}
    start = time.perf_counter()
    show = progress and not progress_disabled()
    bar = tqdm(total=len(jobs), initial=report.present, unit="img", desc="images", disable=not show)
    with bar, ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch-image") as pool:
        futures: dict[Future[str | None], ImageJob] = {
            pool.submit(_fetch_image, job, timeout, retries, backoff): job for job in todo
        }
        try:
            for future in as_completed(futures):
                problem, job = future.result(), futures[future]
                if problem is None:
                    report.ok += 1
                else:
                    failures.setdefault(problem, []).append(f"{job.key} {job.url}")
                bar.update(1)
        except BaseException:  # e.g. disk full while writing: stop at once instead of finishing the queue
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    for reason in sorted(failures):
        report.failed[reason] = len(failures[reason])
        report.examples[reason] = sorted(failures[reason])[:EXAMPLES_PER_REASON]
    log.info(
        "images: %d fetched, %d present, %d failed %s in %.1f s",
        report.ok,
        report.present,
        sum(report.failed.values()),
        report.failed,
        time.perf_counter() - start,
    )
    return report
