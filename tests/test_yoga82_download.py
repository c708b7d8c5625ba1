"""The image downloader against a real HTTP server on 127.0.0.1 that serves good images and every failure."""

from __future__ import annotations

import csv
import http.server
import io
import struct
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
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


class Server:
    """ThreadingHTTPServer on an ephemeral loopback port; counts hits per path."""

    def __init__(self, latency: float = 0.0) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def send(self, status: int, body: bytes, content_type: str = "image/jpeg", length: bool = True):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
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
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

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
    started = time.perf_counter()
    report = download_images(release, images, **kwargs)
    assert time.perf_counter() - started < 20

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
