"""Fetch the Yoga-82 images listed in a release's link files: concurrent, resumable, and safe.

Every file that ends up under ``images_dir`` is a fully decodable image saved under the name the release gives it:
bodies are checked in memory (HTML error pages served as image/jpeg, empty or truncated bodies, decompression
bombs are refused whatever the headers say), written to a hidden temporary name and renamed into place, so an
interrupted run never leaves a file that a later run or the builder could take for a valid image.

What the network cannot do to a run: each attempt has a deadline for the whole request, headers and body, that holds
whatever the server does (a watchdog cuts the connection, see ``_Watchdog``); the bodies held in memory across all
workers never exceed a byte budget; Ctrl-C returns within 0.25 s. What another run cannot do: one download at a
time per ``images_dir`` (an OS lock that dies with its holder), so no run removes another's temporary files or
overwrites its failures.csv.
"""

from __future__ import annotations

import csv
import http.client
import io
import logging
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import wait as wait_for_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm

from yoga_common.errors import UsageError
from yoga_common.files import atomic_write, exclusive_lock, remove_partial_files

from .images import InvalidImage, open_checked
from .release import LinkRow, read_links

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.csv"
LOCK_FILE = ".yoga82-download.lock"
DEFAULT_MAX_BYTES = 30 * 1024 * 1024  # the largest real Yoga-82 images are a few MB
# Bodies held in memory by all workers together: 32 workers x typical images of a few hundred KB stay far below it.
DEFAULT_MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024
DEFAULT_DEADLINE = 60.0  # seconds for one attempt at one image, whole request; slow but honest hosts finish in it
DEFAULT_MAX_REDIRECTS = 5
# After Ctrl-C, how long to wait for workers to return once their connections are cut (they do in milliseconds).
# Only a worker blocked in connect() or a DNS lookup (which no socket shutdown reaches) takes longer; the command then
# exits without it (yoga82/__main__.py): it writes nothing once stopped, and a file it was renaming into place is
# complete or still under its temporary name. With the exit itself this keeps Ctrl-C under the 0.5 s that docs/data.md
# states.
INTERRUPT_GRACE = 0.25
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
    peak_bytes_in_flight: int = 0  # the most bytes of image bodies held in memory at once

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


class _Attempt:
    """One request under the watchdog: its deadline, its run's stop flag, and the connections it has used."""

    def __init__(self, deadline: float, stop: threading.Event | None) -> None:
        self.deadline = deadline
        self.stop = stop
        self.connections: set[urllib3.connection.HTTPConnection] = set()
        self.cut_sockets: set[socket.socket] = set()
        self.finished = False

    @property
    def cut(self) -> bool:
        return bool(self.cut_sockets)

    def expired(self, now: float) -> bool:
        return now >= self.deadline or (self.stop is not None and self.stop.is_set())


class _Watchdog:
    """Cuts the connections of requests that outlive their deadline, or whose run is stopping (Ctrl-C).

    Why a watchdog: requests' timeout bounds each socket read, not their sum, so a server that drips a byte a second
    (headers or body) holds a worker for ever; and a thread blocked in recv() cannot be interrupted from Python
    except by shutting its socket down, which wakes the read at once with an error. That works in every phase of a
    request (TLS handshake, headers, body), for http and https alike, and whatever chunk size the body is read in.
    A connection knows its attempt through ``_WatchedConnectionMixin``; a body cut short is never taken as complete
    (``finish`` says it was cut). One daemon thread serves the whole process, sleeping until the next deadline.
    """

    POLL = 0.1  # how often an expired attempt is re-checked for a socket it had not opened yet

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._attempts: set[_Attempt] = set()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._sleeping_until = float("inf")  # when the watchdog wakes next on its own

    def _wake_for(self, deadline: float) -> None:
        # Only when the watchdog would otherwise sleep past ``deadline``: with 32 workers starting requests all the
        # time, waking it for each one costs more (GIL, lock) than the downloads can spare.
        if deadline < self._sleeping_until:
            self._condition.notify()

    @contextmanager
    def attempt(self, seconds: float, stop: threading.Event | None) -> Iterator[_Attempt]:
        """Watch the requests this thread makes inside the block; ``finish`` (or the block's end) stops watching."""
        attempt = _Attempt(time.monotonic() + seconds, stop)
        with self._condition:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="yoga82-deadlines", daemon=True)
                self._thread.start()
            self._attempts.add(attempt)
            self._wake_for(attempt.deadline)
        self._local.attempt = attempt
        try:
            yield attempt
        finally:
            self._local.attempt = None
            self.finish(attempt)

    def finish(self, attempt: _Attempt) -> bool:
        """Stop watching ``attempt`` (no cut can follow); returns whether any of its connections was cut.

        Called before a response is released, so that a connection going back to the pool is never cut."""
        with self._condition:
            attempt.finished = True
            self._attempts.discard(attempt)
            return attempt.cut

    @contextmanager
    def paused(self, attempt: _Attempt) -> Iterator[None]:
        """Stop the clock inside the block: time spent waiting on this process (the memory budget) is not the
        server's. Stopping the run still cuts."""
        with self._condition:
            remaining = attempt.deadline - time.monotonic()
            attempt.deadline = float("inf")
        try:
            yield
        finally:
            with self._condition:
                attempt.deadline = time.monotonic() + remaining
                self._wake_for(attempt.deadline)

    def claim(self, connection: urllib3.connection.HTTPConnection) -> None:
        """The calling thread is about to use ``connection``: it belongs to the thread's current attempt."""
        attempt = getattr(self._local, "attempt", None)
        with self._condition:
            connection.yoga82_attempt = attempt
            if attempt is not None and not attempt.finished:
                attempt.connections.add(connection)
                if attempt.expired(time.monotonic()):
                    self._condition.notify()  # cut this one too, now

    def wake(self) -> None:
        """Re-check now (a run was stopped: its attempts count as expired)."""
        with self._condition:
            self._condition.notify()

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                wake_at = None
                for attempt in self._attempts:
                    if attempt.expired(now):
                        self._cut(attempt)
                        wake_at = now + self.POLL
                    elif wake_at is None or attempt.deadline < wake_at:
                        wake_at = attempt.deadline
                # A paused attempt (deadline inf) needs no wake-up: resuming notifies.
                self._sleeping_until = float("inf") if wake_at is None else wake_at
                self._condition.wait(None if wake_at is None else min(max(0.0, wake_at - now), 3600.0))
                self._sleeping_until = 0.0  # awake: nobody needs to notify

    @staticmethod
    def _cut(attempt: _Attempt) -> None:
        for connection in attempt.connections:
            sock = connection.sock or connection.yoga82_socket  # sock: set during connect(), e.g. a TLS handshake
            if connection.yoga82_attempt is not attempt or sock is None or sock in attempt.cut_sockets:
                continue  # handed on to another attempt, not connected yet, or done already
            try:
                # socket.socket's own shutdown, also for an SSLSocket: it acts on the file descriptor and wakes a
                # read blocked in another thread; closing would not.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its owner
            attempt.cut_sockets.add(sock)


_WATCHDOG = _Watchdog()


class _WatchedConnectionMixin:
    """Tells the watchdog which attempt uses this connection, before it connects (the TLS handshake is then
    watched too) and before each request on it (a pooled connection changes hands between requests)."""

    yoga82_attempt: _Attempt | None = None
    # The connected socket, kept because http.client drops ``sock`` when a response will close the connection (a
    # body read until EOF) and only the response's file object still reads from it.
    yoga82_socket: socket.socket | None = None

    def connect(self) -> None:
        _WATCHDOG.claim(self)
        try:
            super().connect()
        finally:
            self.yoga82_socket = self.sock

    def request(self, *args, **kwargs):
        _WATCHDOG.claim(self)
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_WatchedConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter with urllib3 pools whose connections report to the watchdog (also through an HTTP proxy;
    through a SOCKS proxy the deadline is checked between body chunks only)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


def make_session(pool_size: int, max_redirects: int = DEFAULT_MAX_REDIRECTS) -> requests.Session:
    """One session for all threads: urllib3's connection pool is thread-safe and keeps connections alive."""
    session = requests.Session()
    adapter = _WatchedAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = max_redirects
    # identity: images do not compress, and an uncompressed body's Content-Length is the memory it will take.
    session.headers.update(
        {"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "identity"}
    )
    return session


class _ByteBudget:
    """At most ``limit`` bytes of response bodies held in memory by all workers together, first come first served.

    A worker reserves its body's size before reading it (the Content-Length, or ``max_bytes`` when the size is not
    known in advance) and holds the reservation until the file is written. Each worker reserves once per attempt and
    never waits while holding bytes, so the workers cannot deadlock; the limit is at least ``max_bytes``, so every
    body fits.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._condition = threading.Condition()
        self._queue: deque[object] = deque()

    def acquire(self, amount: int, stop: threading.Event | None) -> float:
        """Reserve ``amount`` bytes, waiting for other workers to release theirs; returns the seconds waited."""
        started = time.monotonic()
        ticket = object()
        with self._condition:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self.in_use + amount > self.limit:
                    if stop is not None and stop.is_set():
                        raise _FetchError("interrupted")
                    self._condition.wait(0.25)
                self.in_use += amount
                self.peak = max(self.peak, self.in_use)
            finally:
                self._queue.remove(ticket)
                self._condition.notify_all()
        return time.monotonic() - started

    def release(self, amount: int) -> None:
        with self._condition:
            self.in_use -= amount
            self._condition.notify_all()

    @contextmanager
    def holding(self) -> Iterator[_Held]:
        held = _Held(self)
        try:
            yield held
        finally:
            held.shrink_to(0)


class _Held:
    """What one worker holds of the byte budget during one attempt."""

    def __init__(self, budget: _ByteBudget) -> None:
        self.budget = budget
        self.amount = 0

    def reserve(self, amount: int, stop: threading.Event | None) -> float:
        self.shrink_to(0)
        waited = self.budget.acquire(amount, stop)
        self.amount = amount
        return waited

    def shrink_to(self, amount: int) -> None:
        if amount < self.amount:
            self.budget.release(self.amount - amount)
            self.amount = amount


def _get_body(
    session: requests.Session,
    url: str,
    *,
    timeout: float,
    deadline: float,
    max_bytes: int,
    held: _Held,
    stop: threading.Event | None = None,
) -> bytes:
    """The body of a 200 response to ``url``, within ``deadline`` seconds for the whole request; raises _FetchError."""
    with _WATCHDOG.attempt(deadline, stop) as attempt:
        try:
            with session.get(url, timeout=timeout, stream=True) as response:
                try:
                    return _read_body(response, attempt, max_bytes, held, stop)
                finally:
                    _WATCHDOG.finish(attempt)  # before the connection goes back to the pool
        except requests.exceptions.Timeout as error:
            raise _FetchError("timeout", str(error)) from None
        except requests.exceptions.TooManyRedirects as error:
            raise _FetchError("too_many_redirects", str(error)) from None
        except (
            requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema
        ) as error:
            raise _FetchError("invalid_url", str(error)) from None
        except (requests.exceptions.RequestException, OSError, http.client.HTTPException) as error:
            if attempt.cut:  # the watchdog cut it: a deadline or Ctrl-C, not the server's doing
                raise _FetchError("interrupted" if stop is not None and stop.is_set() else "timeout") from None
            # requests reports a read timeout while streaming the body as a ConnectionError.
            reason = "timeout" if "timed out" in str(error).lower() else "connection_error"
            raise _FetchError(reason, str(error)) from None


def _read_body(
    response: requests.Response, attempt: _Attempt, max_bytes: int, held: _Held, stop: threading.Event | None
) -> bytes:
    if response.status_code != 200:
        raise _FetchError(f"http_{response.status_code}")
    declared = response.headers.get("Content-Length", "")
    encoded = response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _FetchError("too_large", f"Content-Length {declared}")
    # The Content-Length bounds an unencoded body (http.client reads no further); otherwise assume the worst.
    reserved = int(declared) if declared.isdigit() and not encoded else max_bytes
    with _WATCHDOG.paused(attempt):
        held.reserve(reserved, stop)
    chunks, total = [], 0
    for chunk in response.iter_content(chunk_size=64 * 1024):
        total += len(chunk)
        if total > reserved:
            raise _FetchError("too_large", f"over {reserved} bytes")
        if attempt.expired(time.monotonic()):
            break
        chunks.append(chunk)
    if _WATCHDOG.finish(attempt) or attempt.expired(time.monotonic()):
        # A cut connection ends like a complete body of unknown length: never take it for one.
        raise _FetchError("interrupted" if stop is not None and stop.is_set() else "timeout", "body took too long")
    body = b"".join(chunks)
    del chunks
    held.shrink_to(len(body))
    return body


def fetch_one(
    session: requests.Session,
    link: LinkRow,
    target: Path,
    *,
    timeout: float,
    retries: int,
    max_bytes: int,
    deadline: float = DEFAULT_DEADLINE,
    backoff: float = 0.5,
    stop: threading.Event | None = None,
    budget: _ByteBudget | None = None,
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
    budget = budget or _ByteBudget(max_bytes)
    stop = stop or threading.Event()
    reason = "connection_error"
    for attempt in range(retries + 1):
        if stop.is_set():
            raise _FetchError("interrupted")
        if attempt:
            # Exponential backoff with jitter so that many threads hitting one flaky host do not retry in lockstep;
            # an Event wait rather than a sleep, so that Ctrl-C does not wait for it.
            stop.wait(backoff * 2 ** (attempt - 1) * (1 + random.random() / 2))
        with budget.holding() as held:
            try:
                body = _get_body(
                    session, link.url, timeout=timeout, deadline=deadline, max_bytes=max_bytes, held=held, stop=stop
                )
            except _FetchError as error:
                if not is_transient(error.reason):
                    raise
                reason = error.reason
                continue
            try:
                open_checked(body).close()
            except InvalidImage as error:
                raise _FetchError(error.reason, str(error)) from None
            if stop.is_set():
                raise _FetchError("interrupted")  # stopping: write nothing more
            try:
                # Not durable (no fsync): every run re-checks the images it finds, so even a power cut's empty file
                # is fetched again.
                atomic_write(target, body, durable=False)
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
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["path", "url", "reason"])
    for failure in sorted(failures, key=lambda failure: failure.path):
        writer.writerow([failure.path, failure.url, failure.reason])
    return atomic_write(images_dir / FAILURES_FILE, buffer.getvalue())


def download_images(
    release_dir: str | Path,
    images_dir: str | Path,
    *,
    workers: int = 32,
    timeout: float = 20.0,
    deadline: float = DEFAULT_DEADLINE,
    retries: int = 3,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    retry_failed: bool = False,
    backoff: float = 0.5,
    progress: bool = True,
) -> DownloadReport:
    """Download every image the release's link files list into ``images_dir``.

    Dead links are expected (about a quarter of the web images are gone): they are listed in
    ``images_dir/failures.csv`` and the call still succeeds. ``timeout`` bounds each connect and each read,
    ``deadline`` one whole attempt at one image (headers and body), ``max_bytes_in_flight`` the bodies held in
    memory by all workers together. Raises ReleaseNotFoundError / ReleaseError for an unusable release, and
    LockHeldError while another download into ``images_dir`` runs, before any network traffic. Interrupted
    (Ctrl-C), it returns within 0.25 s having written only complete files; rerun it to resume.
    """
    if workers < 1 or retries < 0 or timeout <= 0 or deadline <= 0 or max_bytes <= 0:
        raise UsageError("workers must be >= 1, retries >= 0, timeout, deadline and max_bytes > 0")
    if max_bytes_in_flight < max_bytes:
        raise UsageError(
            f"The memory budget for images in flight ({max_bytes_in_flight / 2**20:g} MB) must hold at least one "
            f"image of the largest accepted size ({max_bytes / 2**20:g} MB); raise --max_in_flight_mb or lower "
            "--max_mb."
        )
    links = read_links(release_dir)
    images_root = Path(images_dir)
    images_root.mkdir(parents=True, exist_ok=True)
    images_root = images_root.resolve()
    with exclusive_lock(images_root / LOCK_FILE, what=f"A download into {images_root}"):
        # Under the lock no other run is writing here, so every temporary file is a dead run's.
        remove_partial_files(images_root)
        return _download_locked(
            links, images_root, workers=workers, timeout=timeout, deadline=deadline, retries=retries,
            max_bytes=max_bytes, max_bytes_in_flight=max_bytes_in_flight, max_redirects=max_redirects,
            retry_failed=retry_failed, backoff=backoff, progress=progress,
        )


def _download_locked(
    links: list[LinkRow], images_root: Path, *, workers: int, timeout: float, deadline: float, retries: int,
    max_bytes: int, max_bytes_in_flight: int, max_redirects: int, retry_failed: bool, backoff: float, progress: bool,
) -> DownloadReport:
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
    budget = _ByteBudget(max_bytes_in_flight)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="yoga82-download")
    bar = tqdm(total=len(jobs), unit="img", desc="Downloading Yoga-82", disable=not progress, dynamic_ncols=True)
    futures = {}
    try:
        for link, target in jobs:
            futures[executor.submit(
                fetch_one, session, link, target, timeout=timeout, retries=retries, max_bytes=max_bytes,
                deadline=deadline, backoff=backoff, stop=stop, budget=budget,
            )] = link
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
        # Ctrl-C: queued downloads are dropped, running ones cut from the network, and the workers given a moment
        # to return, so that none is left writing a file. The previous failures.csv is left as it was.
        stop.set()
        _WATCHDOG.wake()
        executor.shutdown(wait=False, cancel_futures=True)
        wait_for_futures(list(futures), timeout=INTERRUPT_GRACE)
        raise
    finally:
        bar.close()
    executor.shutdown(wait=True)
    session.close()
    report.peak_bytes_in_flight = budget.peak
    write_failures(images_root, report.failures)
    return report
