"""The image downloader against a real HTTP server on 127.0.0.1 that serves good images and every failure."""

from __future__ import annotations

import csv
import functools
import http.server
import io
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT
from PIL import Image

from yoga82.__main__ import main
from yoga82.download import FAILURES_FILE, download_images, resolve_inside

POSE = "Sitting pose 1 (normal)"  # a real folder name with spaces and parentheses
OTHER = "Crane_(Crow)_Pose_or_Bakasana_"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    return image.convert(mode) if mode != "RGB" else image


def png_bomb() -> bytes:
    """A valid 1x1 PNG whose header claims 100,000 x 100,000 pixels: tiny file, 10^10 declared pixels."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", 100_000, 100_000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


JPEG = encode(photo(), "JPEG", quality=90)
GOOD = {
    "jpeg": JPEG,
    "png": encode(photo(), "PNG"),
    "gif": encode(photo("P"), "GIF"),
    "gray": encode(photo("L"), "JPEG"),
    "cmyk": encode(photo("CMYK"), "JPEG"),
    "rgba": encode(photo("RGBA"), "PNG"),
}
BAD = {
    "html": (b"<!DOCTYPE html><html><body>Not found</body></html>", "image/jpeg"),
    "text": (b"this is not an image\n", "text/plain"),
    "empty": (b"", "image/jpeg"),
    "truncated": (JPEG[: len(JPEG) // 2], "image/jpeg"),
    "bomb": (png_bomb(), "image/png"),
}
MAX_BYTES = 50_000


DRIP_INTERVAL = 0.5  # seconds between bytes of a slow-loris server: shorter than any per-read timeout below
SERVER_HANDLER_LIMIT = 10.0  # no handler of the test server runs longer than this, whatever the client does


@functools.cache
def noise_image(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG of its own per seed, the same bytes every call; noise, so that its size follows its pixel count."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


class Server:
    """ThreadingHTTPServer on an ephemeral loopback port; counts hits per path.

    Besides good images and every kind of failure it plays the servers that break naive downloaders: a slow loris
    dripping a byte every DRIP_INTERVAL in the body (/drip/...) or the headers (/drip-headers), and a body that never
    ends (/endless); ``drip = False`` makes /drip/... serve a good image at once. /img/<n> serves ``noise_image(n)``
    (``image_size`` pixels), its body in two halves ``split_delay`` seconds apart.
    """

    def __init__(self, latency: float = 0.0, split_delay: float = 0.0, image_size: tuple[int, int] = (64, 48)) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.drip = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real hosts: connections are pooled and reused

            def log_message(self, *args):  # keep pytest output clean
                pass

            def send(self, status: int, body: bytes, content_type: str = "image/jpeg", length: bool = True):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def drip(self, data: bytes) -> None:
                """Send ``data`` a byte at a time, never for longer than SERVER_HANDLER_LIMIT."""
                stop_at = time.monotonic() + SERVER_HANDLER_LIMIT
                for byte in data:
                    if time.monotonic() > stop_at:
                        break
                    self.wfile.write(bytes([byte]))
                    time.sleep(DRIP_INTERVAL)
                self.close_connection = True

            def do_GET(self):
                try:
                    self.answer()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client hung up: the downloader cut us off

            def answer(self):
                with server.lock:
                    server.hits[self.path] += 1
                    hits = server.hits[self.path]
                if latency:
                    time.sleep(latency)
                kind, _, name = self.path.strip("/").partition("/")
                if kind == "good" and name in GOOD:
                    self.send(200, GOOD[name])
                elif kind == "bad" and name in BAD:
                    self.send(200, *BAD[name])
                elif kind == "img":
                    body = noise_image(int(name), image_size)
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    time.sleep(split_delay)
                    self.wfile.write(body[len(body) // 2 :])
                elif kind == "drip" and not server.drip:
                    self.send(200, JPEG)
                elif kind == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(JPEG)))
                    self.end_headers()
                    self.drip(JPEG)
                elif self.path == "/drip-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self.drip(b"X-Padding: " + b"a" * 1000 + b"\r\n")
                elif self.path == "/endless":  # 20 kB/s for ever (well, SERVER_HANDLER_LIMIT), no Content-Length
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(JPEG)
                    stop_at = time.monotonic() + SERVER_HANDLER_LIMIT
                    while time.monotonic() < stop_at:
                        self.wfile.write(b"\0" * 1000)
                        time.sleep(0.05)
                    self.close_connection = True
                elif self.path == "/flaky":
                    self.send(500, b"busy", "text/plain") if hits == 1 else self.send(200, JPEG)
                elif self.path == "/always500":
                    self.send(503, b"down", "text/plain")
                elif self.path == "/slow":
                    time.sleep(1.5)
                    self.send(200, JPEG)
                elif self.path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/huge":  # no Content-Length: the cap must act while streaming
                    self.send(200, JPEG + b"\0" * (2 * MAX_BYTES), length=False)
                elif self.path == "/huge-declared":
                    self.send(200, JPEG + b"\0" * (2 * MAX_BYTES))
                else:
                    self.send(404, b"gone", "text/html")

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients hanging up early is part of the test
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def total_hits(self, prefix: str = "/") -> int:
        with self.lock:
            return sum(count for path, count in self.hits.items() if path.startswith(prefix))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = Server()
    yield server
    server.close()


def write_release(root: Path, rows: list[tuple[str, str]]) -> Path:
    links = root / "yoga_dataset_links"
    links.mkdir(parents=True)
    half = len(rows) // 2
    # one tab-separated file with CRLF, one comma-separated one, and the stray desktop.ini of real copies
    (links / f"{POSE}.txt").write_bytes("".join(f"{p}\t{u}\r\n" for p, u in rows[:half]).encode())
    (links / f"{OTHER}.txt").write_text("".join(f"{p},{u}\n\n" for p, u in rows[half:]))
    (links / "desktop.ini").write_text("[.ShellClassInfo]\n")
    return root


def test_downloader_saves_good_images_refuses_bad_ones_and_stays_inside(server, tmp_path):
    sandbox = tmp_path / "sandbox"
    images = sandbox / "images"
    outside_absolute = tmp_path / "absolute.jpg"
    good_rows = [(f"{POSE}/{name}.jpg", f"{server.url}/good/{name}") for name in GOOD]
    good_rows.append((f"{OTHER}/flaky.jpg", f"{server.url}/flaky"))  # 500, then OK: saved thanks to a retry
    failing = {
        f"{OTHER}/html.jpg": ("/bad/html", "not_an_image"),
        f"{OTHER}/text.jpg": ("/bad/text", "not_an_image"),
        f"{OTHER}/empty.jpg": ("/bad/empty", "empty_body"),
        f"{OTHER}/truncated.jpg": ("/bad/truncated", "corrupt_image"),
        f"{OTHER}/bomb.jpg": ("/bad/bomb", "decompression_bomb"),
        f"{OTHER}/404.jpg": ("/missing", "http_404"),
        f"{OTHER}/503.jpg": ("/always500", "http_503"),
        f"{OTHER}/slow.jpg": ("/slow", "timeout"),
        f"{OTHER}/loop.jpg": ("/loop", "too_many_redirects"),
        f"{OTHER}/huge.jpg": ("/huge", "too_large"),
        f"{OTHER}/huge-declared.jpg": ("/huge-declared", "too_large"),
        "../escape.jpg": ("/good/jpeg", "unsafe_path"),
        f"{POSE}/../../escape2.jpg": ("/good/jpeg", "unsafe_path"),
        str(outside_absolute): ("/good/jpeg", "unsafe_path"),
        "C:/windows/drive.jpg": ("/good/jpeg", "unsafe_path"),
        "nofolder.jpg": ("/good/jpeg", "unsafe_path"),
        f"{OTHER}/ftp.jpg": ("ftp://127.0.0.1/x.jpg", "invalid_url"),
    }
    rows = good_rows + [(path, url if "://" in url else server.url + url) for path, (url, _) in failing.items()]
    release = write_release(tmp_path / "release", rows)
    # a corrupt leftover at a listed name is replaced; a stale temporary of a killed run is removed
    (images / POSE).mkdir(parents=True)
    (images / POSE / "jpeg.jpg").write_bytes(JPEG[:100])
    (images / POSE / ".png.jpg.0badc0de.part").write_bytes(b"partial")

    kwargs = dict(workers=8, timeout=0.5, retries=1, max_bytes=MAX_BYTES, backoff=0.01, progress=False)
    report = download_images(release, images, **kwargs)

    assert report.fetched == len(good_rows) and report.already_there == 0, report.failures
    for path, _ in good_rows:
        with Image.open(images / path) as image:
            image.load()  # decodable
    assert server.hits["/flaky"] == 2
    assert server.hits["/slow"] == 2  # one retry after a timeout
    assert server.hits["/always500"] == 2

    saved = {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file()}
    assert saved == {path for path, _ in good_rows} | {FAILURES_FILE}
    assert {p for p in sandbox.rglob("*") if p.is_file() and images not in p.parents} == set()
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "escape2.jpg").exists()
    assert not outside_absolute.exists()

    with (images / FAILURES_FILE).open(newline="") as handle:
        recorded = {row["path"]: (row["url"], row["reason"]) for row in csv.DictReader(handle)}
    assert {path: reason for path, (_, reason) in recorded.items()} == {p: r for p, (_, r) in failing.items()}
    assert all(url for url, _ in recorded.values())
    assert report.failed_by_reason["unsafe_path"] == 5

    # A rerun fetches nothing that is there or that failed for good; only transient failures are retried.
    server.hits.clear()
    again = download_images(release, images, **kwargs)
    assert again.fetched == 0 and again.already_there == len(good_rows)
    assert set(server.hits) == {"/slow", "/always500"}
    assert {f.path: f.reason for f in again.failures} == {p: r for p, (_, r) in failing.items()}

    # retry_failed asks again for the permanent failures too
    server.hits.clear()
    download_images(release, images, **{**kwargs, "retries": 0}, retry_failed=True)
    assert server.hits["/missing"] == 1 and server.hits["/bad/html"] == 1
    assert not any(path.startswith("/good") for path in server.hits)


def test_cli_exits_zero_with_dead_links_and_non_zero_without_a_release(server, tmp_path, capsys):
    release = write_release(
        tmp_path / "release",
        [(f"{POSE}/ok.jpg", f"{server.url}/good/jpeg"), (f"{POSE}/dead.jpg", f"{server.url}/missing")],
    )
    images = tmp_path / "images"
    assert main(["download", "--release_dir", str(release), "--images_dir", str(images), "--quiet"]) == 0
    summary = capsys.readouterr().out
    assert "1 fetched" in summary and "1 failed" in summary and "http_404: 1" in summary
    assert (images / POSE / "ok.jpg").is_file()

    assert main(["download", "--release_dir", str(tmp_path / "nowhere"), "--images_dir", str(images)]) != 0
    assert "No Yoga-82 release" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["download", "--release_dir", str(tmp_path / "empty"), "--images_dir", str(images)]) != 0


def test_resolve_inside_refuses_every_way_out(tmp_path):
    root = tmp_path.resolve()
    (root / "link").symlink_to(tmp_path.parent, target_is_directory=True)
    assert resolve_inside(root, "Pose/a.jpg") == root / "Pose" / "a.jpg"
    for path in ["../a.jpg", "Pose/../../a.jpg", "/etc/passwd", "C:/a.jpg", "Pose\\..\\..\\a.jpg", "a.jpg",
                 "link/x/a.jpg", "", "Pose/a\x00.jpg"]:
        assert resolve_inside(root, path) is None, path


# ---------------------------------------------------------------------------------------------------- what the network
# and other runs cannot do: hang a worker past its deadline, hold more bytes than the budget, leave a partial file.


def hidden_files(folder: Path) -> list[str]:
    """Temporaries, locks and anything else hidden: none may remain after a run, completed or interrupted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*"))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def download_command(release: Path, images: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "yoga82", "download", "--release_dir", str(release), "--images_dir", str(images),
            "--quiet", *extra]


# ``python -m yoga82 ...`` as a terminal starts it: Ctrl-C (SIGINT) raises KeyboardInterrupt. A process started from
# a background job of a non-interactive shell (``pytest &`` in a CI script) inherits SIGINT *ignored*, and Python then
# leaves it ignored: the download never saw the test's Ctrl-C and the test hung for its 30 s (issue 14). The child
# restores the terminal's disposition itself (preexec_fn is unsafe here: this process runs server threads).
AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'yoga82'; runpy.run_module('yoga82', run_name='__main__', alter_sys=True)"
)


def start_download(release: Path, images: Path, *extra: str) -> subprocess.Popen:
    """``python -m yoga82 download`` in a process of its own, as a user runs it from a terminal (and as a kill finds
    it), whatever the signal dispositions pytest itself was started with."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = download_command(release, images, *extra)
    assert command[1:3] == ["-m", "yoga82"]
    return subprocess.Popen([command[0], "-c", AS_FROM_A_TERMINAL, *command[3:]], env=env, cwd=images.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    stop_at = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < stop_at, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/drip/0", "/drip-headers", "/endless"])
def test_deadline_cuts_slow_loris_and_endless_bodies(server, tmp_path, path):
    """A byte every 0.5 s never trips a 1.5 s read timeout; the 2 s deadline must still hold, headers or body (the
    server would hold the request SERVER_HANDLER_LIMIT = 10 s)."""
    release = write_release(
        tmp_path / "release", [(f"{POSE}/slow.jpg", server.url + path), (f"{OTHER}/ok.jpg", f"{server.url}/good/png")]
    )
    images = tmp_path / "images"
    deadline = 2.0
    started = time.perf_counter()
    report = download_images(release, images, workers=2, timeout=1.5, deadline=deadline, retries=0,
                             max_bytes=10 * 2**20, progress=False)
    elapsed = time.perf_counter() - started
    assert report.fetched == 1 and report.failed_by_reason == {"timeout": 1}
    assert elapsed < deadline + 3.0, f"{path} held the download {elapsed:.2f} s against a {deadline} s deadline"
    assert not (images / POSE / "slow.jpg").exists() and hidden_files(images) == []


def test_bytes_in_flight_stay_within_the_budget(tmp_path):
    server = Server(split_delay=0.1, image_size=(96, 72))  # ~7 kB bodies, each taking 0.1 s to arrive
    try:
        rows = [(f"{POSE}/{i}.jpg", f"{server.url}/img/{i}") for i in range(12)]
        release = write_release(tmp_path / "release", rows)
        sizes = [len(noise_image(i, (96, 72))) for i in range(12)]
        budget = 2 * max(sizes)  # two images at a time
        kwargs = dict(workers=8, timeout=5, retries=0, max_bytes=budget, progress=False)
        with pytest.raises(ValueError, match="must hold at least one image"):
            download_images(release, tmp_path / "never", max_bytes_in_flight=budget - 1, **kwargs)

        bounded = download_images(release, tmp_path / "bounded", max_bytes_in_flight=budget, **kwargs)
        assert bounded.fetched == 12
        assert max(sizes) <= bounded.peak_bytes_in_flight <= budget
        unbounded = download_images(release, tmp_path / "unbounded", max_bytes_in_flight=100 * budget, **kwargs)
        assert unbounded.fetched == 12 and unbounded.peak_bytes_in_flight > budget  # the budget is what held it
        assert folder_bytes(tmp_path / "bounded") == folder_bytes(tmp_path / "unbounded")
    finally:
        server.close()


@pytest.mark.slow
def test_second_download_is_refused_and_ctrl_c_stops_one_at_once(server, tmp_path, capsys):
    rows = [(f"{POSE}/drip{i}.jpg", f"{server.url}/drip/{i}") for i in range(3)]
    rows += [(f"{OTHER}/{name}.jpg", f"{server.url}/good/{name}") for name in GOOD]
    release = write_release(tmp_path / "release", rows)
    images = tmp_path / "images"
    running = start_download(release, images, "--workers", "4", "--timeout", "5", "--deadline", "60")
    try:
        wait_until(lambda: server.total_hits("/drip/") == 3 and len(list(images.glob(f"{OTHER}/*.jpg"))) == len(GOOD),
                   what="the download to reach the slow server")

        # A second download into the same folder stops at once, naming the running one: it asks the server nothing.
        requests = server.total_hits()
        assert main(download_command(release, images)[3:]) == 2
        assert server.total_hits() == requests
        error = capsys.readouterr().err
        assert f"A download into {images.resolve()} is already running: pid {running.pid} on host" in error
        assert f"kill {running.pid}" in error and "releases the lock by itself" in error

        # Ctrl-C while every worker is blocked on a slow server: out within 0.5 s, no partial file, no lock.
        started = time.perf_counter()
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=30)
        elapsed = time.perf_counter() - started
    finally:
        running.kill()
    assert running.returncode == 130 and "rerun the same command to resume" in stderr
    assert elapsed < 0.5, f"Ctrl-C took {elapsed:.2f} s"  # the README's bound (benchmarks/bench_ctrl_c.py: ~30 ms)
    assert hidden_files(images) == []
    assert len(list(images.rglob("*.jpg"))) == len(GOOD)

    # The rerun resumes: only the three interrupted images are fetched.
    server.drip = False
    report = download_images(release, images, workers=4, progress=False)
    assert (report.fetched, report.already_there, report.failures) == (3, len(GOOD), [])


@pytest.mark.slow
def test_download_killed_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL lands mid-request and mid-body (bodies arrive in two halves; a kill inside a write is test_files'
    job); whatever it interrupts, every file under its final name is a complete image, the lock dies with the
    process, and a rerun ends with exactly the files of an uninterrupted run: same names, same bytes, same
    failures.csv, no partial file, no lock file."""
    server = Server(split_delay=0.03)
    try:
        rows = [(f"{(POSE, OTHER)[i % 2]}/img{i:02d}.jpg", f"{server.url}/img/{i}") for i in range(30)]
        rows += [(f"{OTHER}/dead{i}.jpg", f"{server.url}/missing/{i}") for i in range(3)]
        release = write_release(tmp_path / "release", rows)
        options = ["--workers", "4", "--timeout", "5", "--retries", "0"]
        assert main(download_command(release, tmp_path / "reference", *options)[3:]) == 0
        reference = folder_bytes(tmp_path / "reference")
        assert len(reference) == 31  # 30 images + failures.csv

        images = tmp_path / "images"
        rng = random.Random(1234)
        kills = 0
        for _ in range(4):
            hits_before = server.total_hits()
            process = start_download(release, images, *options)
            threshold = hits_before + rng.randint(1, 5)
            wait_until(lambda p=process, t=threshold: server.total_hits() >= t or p.poll() is not None, what="requests")
            time.sleep(rng.uniform(0.0, 0.05))
            if process.poll() is None:
                process.kill()  # SIGKILL: no handler, no finally
                kills += 1
            process.communicate(timeout=30)
            for name, data in folder_bytes(images).items():
                if not Path(name).name.startswith("."):
                    assert data == reference[name], f"{name} is not the complete image after a kill"
        assert kills >= 3

        assert main(download_command(release, images, *options)[3:]) == 0
        assert folder_bytes(images) == reference
        assert hidden_files(images) == []
    finally:
        server.close()
