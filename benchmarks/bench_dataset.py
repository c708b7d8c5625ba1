"""Throughput of the Yoga-82 data tools: download vs workers (loopback server with latency), prepare, synthetic.

    python benchmarks/bench_dataset.py [--latency_ms 50] [--images 128] [--json results.json]

The download numbers measure the client (concurrency, validation, atomic writes), not the internet: every request
is delayed by --latency_ms on the server, as a distant web host would be.
"""

from __future__ import annotations

import argparse
import http.server
import io
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from PIL import Image

from yoga82.download import download_images
from yoga82.labels import LABEL_82_NAMES, PARENT_OF_20, PARENT_OF_82
from yoga82.prepare import prepare
from yoga82.synthetic import build_synthetic, generate_synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish  # noqa: E402


def sample_jpeg(size: tuple[int, int] = (640, 480), seed: int = 0) -> bytes:
    """A photo-like JPEG (noise over a gradient, so it compresses like a photo, ~60 kB at 640x480)."""
    noise = Image.effect_noise(size, 40 + seed % 7)
    image = Image.merge("RGB", (noise, Image.linear_gradient("L").resize(size), noise.transpose(Image.FLIP_LEFT_RIGHT)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def serve(body: bytes, latency: float) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts

        def log_message(self, *args):
            pass

        def do_GET(self):
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def release_rows(count: int) -> list[tuple[str, int]]:
    return [(f"{LABEL_82_NAMES[i % 82]}/{i}.jpg", i % 82) for i in range(count)]


def write_release(root: Path, rows: list[tuple[str, int]], url: str) -> None:
    links = root / "yoga_dataset_links"
    links.mkdir(parents=True)
    (links / "all.txt").write_text("".join(f"{path}\t{url}/{i}.jpg\n" for i, (path, _) in enumerate(rows)))
    lines = []
    for path, label_82 in rows:
        label_20 = PARENT_OF_82[label_82]
        lines.append(f"{path},{PARENT_OF_20[label_20]},{label_20},{label_82}\n")
    cut = len(lines) * 3 // 4
    (root / "yoga_train.txt").write_text("".join(lines[:cut]))
    (root / "yoga_test.txt").write_text("".join(lines[cut:]))


def bench_download(work: Path, images: int, latency: float, workers_list: list[int]) -> dict[str, float]:
    server = serve(sample_jpeg(), latency)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    release = work / "download-release"
    write_release(release, release_rows(images), url)
    results = {}
    try:
        for workers in workers_list:
            target = work / f"images-{workers}"
            started = time.perf_counter()
            report = download_images(release, target, workers=workers, timeout=10, progress=False)
            elapsed = time.perf_counter() - started
            assert report.fetched == images, report.summary()
            results[str(workers)] = images / elapsed
    finally:
        server.shutdown()
        server.server_close()
    return results


def bench_prepare(work: Path, images: int, resize: int) -> float:
    root = work / "prepare"
    rows = release_rows(images)
    write_release(root / "release", rows, "http://127.0.0.1:9")
    bodies = [sample_jpeg(seed=i) for i in range(8)]
    for i, (path, _) in enumerate(rows):
        (root / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / path).write_bytes(bodies[i % len(bodies)])
    started = time.perf_counter()
    prepare(root / "release", root / "images", root / "out", resize=resize)
    return images / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency_ms", type=float, default=50.0)
    parser.add_argument("--images", type=int, default=128, help="images per download run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--prepare_images", type=int, default=400)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--synthetic_per_class", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "latency_ms": args.latency_ms,
    }
    with tempfile.TemporaryDirectory(prefix="bench-yoga82-") as tmp:
        work = Path(tmp)
        results["download_images_per_s"] = bench_download(work, args.images, args.latency_ms / 1000, args.workers)
        results["prepare_images_per_s"] = bench_prepare(work, args.prepare_images, args.resize)
        count = 82 * args.synthetic_per_class
        started = time.perf_counter()
        build_synthetic(images_per_class=args.synthetic_per_class, image_size=64, progress=False)
        results["synthetic_draw_images_per_s"] = count / (time.perf_counter() - started)
        started = time.perf_counter()
        generate_synthetic(work / "synthetic", images_per_class=args.synthetic_per_class, image_size=64, progress=False)
        results["synthetic_end_to_end_images_per_s"] = count / (time.perf_counter() - started)

    return finish(results, args.json, format_table(results, args))


def format_table(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"\nYoga-82 data tools on {results['machine']}", f"{'measure':<52}{'images/s':>10}"]
    for workers, rate in results["download_images_per_s"].items():
        lines.append(f"{f'download, {args.latency_ms:.0f} ms latency, {workers} workers':<52}{rate:>10.1f}")
    lines.append(f"{f'prepare ({args.prepare_images} JPEGs 640x480 -> {args.resize} px, Parquet)':<52}"
                 f"{results['prepare_images_per_s']:>10.1f}")
    lines.append(f"{'synthetic, 64 px, drawing only':<52}{results['synthetic_draw_images_per_s']:>10.1f}")
    end_to_end = results["synthetic_end_to_end_images_per_s"]
    lines.append(f"{'synthetic, 64 px, end to end (Parquet, card, plot)':<52}{end_to_end:>10.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
