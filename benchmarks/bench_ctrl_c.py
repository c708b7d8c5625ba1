"""How long ``python -m yoga82 download`` takes to exit after Ctrl-C, every worker stuck on a slow server.

    python benchmarks/bench_ctrl_c.py [--runs 10] [--workers 4] [--json runs/bench_ctrl_c.json]

Each run starts the command in a process of its own with a terminal's SIGINT handler (a process started from a
background job inherits SIGINT ignored), waits until every worker is reading a body that drips a byte every 0.5 s,
sends SIGINT and times the exit. docs/data.md states the bound the test asserts (0.5 s); this prints what it takes.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "benchmarks"))
from common import finish  # noqa: E402

POSE = "Tree_Pose_or_Vrksasana_"
AS_FROM_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'yoga82'; runpy.run_module('yoga82', run_name='__main__', alter_sys=True)"
)


class DripServer(http.server.ThreadingHTTPServer):
    """Every GET gets a 10 kB image's headers, then one body byte every 0.5 s (for at most 20 s); counts requests."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "10000")
                self.end_headers()
                try:
                    for _ in range(40):
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                        time.sleep(0.5)
                except OSError:
                    pass  # the downloader cut the connection
                self.close_connection = True

        super().__init__(("127.0.0.1", 0), Handler)


def one_run(server: DripServer, work: Path, workers: int) -> float:
    release, images = work / "release", work / "images"
    (release / "yoga_dataset_links").mkdir(parents=True)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (release / "yoga_dataset_links" / f"{POSE}.txt").write_text(
        "".join(f"{POSE}/{i}.jpg\t{url}/{i}\n" for i in range(workers)))
    before = server.requests
    process = subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL, "download", "--release_dir", str(release), "--images_dir",
         str(images), "--workers", str(workers), "--timeout", "5", "--deadline", "60", "--quiet"],
        env=dict(os.environ, PYTHONPATH=str(PROJECT)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop_at = time.monotonic() + 60
    while server.requests < before + workers:
        if time.monotonic() > stop_at or process.poll() is not None:
            process.kill()
            raise SystemExit(f"error: the download never reached the server: {process.communicate()[1][-2000:]}")
        time.sleep(0.01)
    time.sleep(0.2)  # every worker is now reading its dripping body
    started = time.perf_counter()
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    elapsed = time.perf_counter() - started
    if process.returncode != 130:
        raise SystemExit(f"error: the download exited {process.returncode}, not 130")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="also write the times here")
    args = parser.parse_args(argv)
    server = DripServer()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    times = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(args.runs):
                times.append(one_run(server, Path(tmp) / str(run), args.workers))
    finally:
        server.shutdown()
        server.server_close()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report = {"runs": args.runs, "workers": args.workers, "seconds": times, "min_s": min(times),
              "median_s": statistics.median(times), "max_s": max(times), "load_average": load,
              "cpus": os.cpu_count()}
    return finish(report, args.json,
                  f"Ctrl-C to exit, {args.runs} runs, {args.workers} workers stuck: min {min(times) * 1000:.0f} ms, "
                  f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms (load average "
                  f"{load:.1f}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    sys.exit(main())
