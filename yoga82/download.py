"""Fetch the Yoga-82 images listed in a release's link files: concurrent, resumable, and safe.

Every file that ends up under ``images_dir`` is a fully decodable image saved under the name the release gives it:
bodies are checked in memory (HTML error pages served as image/jpeg, empty or truncated bodies, decompression
bombs are refused whatever the headers say), written to a hidden temporary name and renamed into place, so an
interrupted run never leaves a file that a later run or the builder could take for a valid image.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm

from .images import InvalidImage, open_checked
from .release import LinkRow, read_links

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.csv"
DEFAULT_MAX_BYTES = 30 * 1024 * 1024  # the largest real Yoga-82 images are a few MB
DEFAULT_MAX_REDIRECTS = 5
USER_AGENT = "vit-yoga-yoga82-downloader/0.1 (research dataset download; one request per image)"

# Failures worth trying again on the next run: the server or the network may be fine tomorrow. The others (404,
# an HTML page, a truncated file...) are remembered in failures.csv and skipped on reruns unless retry_failed.
TRANSIENT_REASONS = frozenset({"timeout", "connection_error", "http_408", "http_429", "write_error"})


def is_transient(reason: str) -> bool:
    return reason in TRANSIENT_REASONS or re.fullmatch(r"http_5\d\d", reason) is not None


@dataclass(frozen=True)
class Failure:
    path: str
    url: str
    reason: str


@dataclass
class DownloadReport:
    """What a run did; ``failures`` is also written to ``images_dir/failures.csv``."""

    listed: int = 0
    fetched: int = 0
    already_there: int = 0
    known_failures_skipped: int = 0
    duplicates_ignored: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def failed_by_reason(self) -> Counter[str]:
        return Counter(failure.reason for failure in self.failures)

    def summary(self) -> str:
        lines = [
            f"{self.listed} images listed: {self.fetched} fetched, {self.already_there} already there, "
            f"{len(self.failures)} failed"
        ]
        lines += [f"  {reason}: {count}" for reason, count in sorted(self.failed_by_reason.items())]
        if self.known_failures_skipped:
            lines.append(
                f"({self.known_failures_skipped} failures of earlier runs were not retried; "
                "pass --retry_failed to retry them)"
            )
        if self.duplicates_ignored:
            lines.append(f"({self.duplicates_ignored} rows repeating an earlier path were ignored)")
        return "\n".join(lines)


class _FetchError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} {detail}".strip())
        self.reason = reason


def resolve_inside(images_dir: Path, relative_path: str) -> Path | None:
    """The file ``relative_path`` names under ``images_dir``, or None if it would land anywhere else.

    ``images_dir`` must already be resolved. Absolute paths, drive letters, ``..`` and symlinked folders that lead
    out are all refused, as are names without a pose folder (which could overwrite failures.csv).
    """
    pure = PurePosixPath(relative_path)
    if (
        not relative_path
        or pure.is_absolute()
        or re.match(r"^[A-Za-z]:", relative_path)
        or "\\" in relative_path
        or "\x00" in relative_path
        or len(pure.parts) < 2
        or any(part in ("..", ".") for part in pure.parts)
    ):
        return None
    target = (images_dir / pure).resolve()
    return target if target.is_relative_to(images_dir) and target != images_dir else None


def make_session(pool_size: int, max_redirects: int = DEFAULT_MAX_REDIRECTS) -> requests.Session:
    """One session for all threads: urllib3's connection pool is thread-safe and keeps connections alive."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = max_redirects
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    return session


def _get_body(session: requests.Session, url: str, timeout: float, max_bytes: int) -> bytes:
    # A server that drips bytes never trips the per-read timeout; the deadline bounds the whole body.
    deadline = time.monotonic() + 4 * timeout
    try:
        with session.get(url, timeout=timeout, stream=True) as response:
            status = response.status_code
            if status != 200:
                raise _FetchError(f"http_{status}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _FetchError("too_large", f"Content-Length {declared}")
            chunks, total = [], 0
            for chunk in response.iter_content(chunk_size=64 * 1024):
                total += len(chunk)
                if total > max_bytes:
                    raise _FetchError("too_large", f"over {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _FetchError("timeout", "body took too long")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.exceptions.Timeout as error:
        raise _FetchError("timeout", str(error)) from None
    except requests.exceptions.TooManyRedirects as error:
        raise _FetchError("too_many_redirects", str(error)) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as e:
        raise _FetchError("invalid_url", str(e)) from None
    except requests.exceptions.RequestException as error:
        # requests reports a read timeout while streaming the body as a ConnectionError.
        reason = "timeout" if "timed out" in str(error).lower() else "connection_error"
        raise _FetchError(reason, str(error)) from None


def _save_atomically(target: Path, body: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        temporary.write_bytes(body)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def fetch_one(
    session: requests.Session,
    link: LinkRow,
    target: Path,
    *,
    timeout: float,
    retries: int,
    max_bytes: int,
    backoff: float = 0.5,
    stop: threading.Event | None = None,
) -> str:
    """Make ``target`` a valid image from ``link.url``. Returns "fetched" or "already_there"; raises _FetchError."""
    if target.is_file():
        try:
            open_checked(target).close()
            return "already_there"
        except (InvalidImage, OSError):
            pass  # a broken file from another tool: replace it
    if urlsplit(link.url).scheme.lower() not in ("http", "https"):
        raise _FetchError("invalid_url", link.url)
    reason = "connection_error"
    for attempt in range(retries + 1):
        if stop is not None and stop.is_set():
            raise _FetchError("interrupted")
        if attempt:
            # Exponential backoff with jitter so that many threads hitting one flaky host do not retry in lockstep.
            time.sleep(backoff * 2 ** (attempt - 1) * (1 + random.random() / 2))
        try:
            body = _get_body(session, link.url, timeout, max_bytes)
        except _FetchError as error:
            if not is_transient(error.reason):
                raise
            reason = error.reason
            continue
        try:
            open_checked(body).close()
        except InvalidImage as error:
            raise _FetchError(error.reason, str(error)) from None
        try:
            _save_atomically(target, body)
        except OSError as error:
            raise _FetchError("write_error", str(error)) from None
        return "fetched"
    raise _FetchError(reason, f"after {retries + 1} attempts")


def read_failures(images_dir: Path) -> dict[str, Failure]:
    """The failures an earlier run recorded, by path (empty if there is no readable failures.csv)."""
    path = images_dir / FAILURES_FILE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["path"]: Failure(row["path"], row["url"], row["reason"]) for row in csv.DictReader(handle)}


def write_failures(images_dir: Path, failures: Iterable[Failure]) -> Path:
    path = images_dir / FAILURES_FILE
    temporary = path.with_name(f".{FAILURES_FILE}.{uuid.uuid4().hex[:8]}.part")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "url", "reason"])
        for failure in sorted(failures, key=lambda failure: failure.path):
            writer.writerow([failure.path, failure.url, failure.reason])
    os.replace(temporary, path)
    return path


def _remove_stale_partials(images_dir: Path) -> None:
    # Only our own temporary names (".<name>.<8 hex>.part") left by a killed run; nothing else is touched.
    pattern = re.compile(r"^\..+\.[0-9a-f]{8}\.part$")
    for path in images_dir.rglob(".*.part"):
        if path.is_file() and pattern.match(path.name):
            path.unlink(missing_ok=True)


def download_images(
    release_dir: str | Path,
    images_dir: str | Path,
    *,
    workers: int = 32,
    timeout: float = 20.0,
    retries: int = 3,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    retry_failed: bool = False,
    backoff: float = 0.5,
    progress: bool = True,
) -> DownloadReport:
    """Download every image the release's link files list into ``images_dir``.

    Dead links are expected (about a quarter of the web images are gone): they are listed in
    ``images_dir/failures.csv`` and the call still succeeds. Raises ReleaseNotFoundError / ReleaseError for an
    unusable release, before any network traffic.
    """
    if workers < 1 or retries < 0 or timeout <= 0 or max_bytes <= 0:
        raise ValueError("workers must be >= 1, retries >= 0, timeout > 0 and max_bytes > 0")
    links = read_links(release_dir)
    images_root = Path(images_dir)
    images_root.mkdir(parents=True, exist_ok=True)
    images_root = images_root.resolve()
    _remove_stale_partials(images_root)

    report = DownloadReport(listed=len(links))
    previous = read_failures(images_root)
    jobs: list[tuple[LinkRow, Path]] = []
    seen: set[str] = set()
    for link in links:
        if link.path in seen:
            report.duplicates_ignored += 1
            continue
        seen.add(link.path)
        target = resolve_inside(images_root, link.path)
        if target is None:
            report.failures.append(Failure(link.path, link.url, "unsafe_path"))
            continue
        known = previous.get(link.path)
        permanent = known is not None and known.url == link.url and not is_transient(known.reason)
        if permanent and not retry_failed and not target.exists():
            report.failures.append(known)
            report.known_failures_skipped += 1
            continue
        jobs.append((link, target))
    report.listed = len(seen)

    session = make_session(workers, max_redirects)
    stop = threading.Event()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="yoga82-download")
    bar = tqdm(total=len(jobs), unit="img", desc="Downloading Yoga-82", disable=not progress, dynamic_ncols=True)
    try:
        futures = {
            executor.submit(
                fetch_one, session, link, target,
                timeout=timeout, retries=retries, max_bytes=max_bytes, backoff=backoff, stop=stop,
            ): link
            for link, target in jobs
        }
        for future in as_completed(futures):
            link = futures[future]
            try:
                outcome = future.result()
            except _FetchError as error:
                report.failures.append(Failure(link.path, link.url, error.reason))
                logger.debug("%s <- %s failed: %s", link.path, link.url, error)
            else:
                if outcome == "fetched":
                    report.fetched += 1
                else:
                    report.already_there += 1
            bar.update()
            bar.set_postfix(
                fetched=report.fetched, there=report.already_there, failed=len(report.failures), refresh=False
            )
    except BaseException:
        # Without this, Ctrl-C would wait for every queued download; the previous failures.csv is left as it was.
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
        session.close()
    executor.shutdown(wait=True)
    write_failures(images_root, report.failures)
    return report
