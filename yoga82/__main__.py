"""``python -m yoga82 {download,prepare,synthetic}``: the command line of the Yoga-82 dataset script."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from yoga_common.errors import UsageError
from yoga_common.files import LockHeldError

from .release import ReleaseNotFoundError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m yoga82",
        description="Yoga-82 as a Hugging Face dataset: download the images, build Parquet, or draw synthetic poses.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    download = commands.add_parser(
        "download", help="fetch the images listed in a release's link files (resumable; dead links are normal)"
    )
    download.add_argument("--release_dir", "--release-dir", required=True, help="the unpacked Yoga-82 release")
    download.add_argument("--images_dir", "--images-dir", required=True, help="where the images go")
    download.add_argument("--workers", type=int, default=32, help="concurrent downloads (default: 32)")
    download.add_argument("--timeout", type=float, default=20.0, help="seconds per connect/read (default: 20)")
    download.add_argument("--deadline", type=float, default=60.0,
                          help="seconds for one attempt at one image, headers and body together (default: 60)")
    download.add_argument("--retries", type=int, default=3, help="retries on 5xx and timeouts (default: 3)")
    download.add_argument("--max_mb", "--max-mb", type=float, default=30.0, help="largest accepted image (default: 30)")
    download.add_argument("--max_in_flight_mb", "--max-in-flight-mb", type=float, default=256.0,
                          help="image bytes held in memory by all workers together (default: 256)")
    download.add_argument("--retry_failed", "--retry-failed", action="store_true",
                          help="also retry links that failed for good in an earlier run (404, not an image...)")

    prepare = commands.add_parser("prepare", help="build the Parquet dataset + card from the downloaded images")
    prepare.add_argument("--release_dir", "--release-dir", required=True)
    prepare.add_argument("--images_dir", "--images-dir", required=True)
    prepare.add_argument("--output_dir", "--output-dir", required=True)
    prepare.add_argument("--resize", type=int, default=256,
                         help="shorter side in pixels, JPEG (default: 256); 0 keeps the original size")
    prepare.add_argument("--validation_fraction", "--validation-fraction", type=float, default=0.2)
    prepare.add_argument("--seed", type=int, default=42)
    prepare.add_argument("--num_workers", "--num-workers", type=int, default=None, help="decoding threads")
    prepare.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO", default=None,
                         help="also upload to this Hub dataset repository (uses your `hf auth login` token)")
    prepare.add_argument("--private", action="store_true", help="create the Hub repository as private")
    prepare.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")

    synthetic = commands.add_parser("synthetic", help="draw stick-figure poses with Yoga-82's hierarchy (offline)")
    synthetic.add_argument("--output_dir", "--output-dir", required=True)
    synthetic.add_argument("--images_per_class", "--images-per-class", type=int, default=40)
    synthetic.add_argument("--image_size", "--image-size", type=int, default=64)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--validation_fraction", "--validation-fraction", type=float, default=0.2)
    synthetic.add_argument("--test_fraction", "--test-fraction", type=float, default=0.2)
    synthetic.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO", default=None)
    synthetic.add_argument("--private", action="store_true")
    synthetic.add_argument("--overwrite", action="store_true")
    for sub in (download, prepare, synthetic):
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    try:
        if args.command == "download":
            from .download import download_images

            report = download_images(
                args.release_dir, args.images_dir, workers=args.workers, timeout=args.timeout, deadline=args.deadline,
                retries=args.retries, max_bytes=int(args.max_mb * 2**20),
                max_bytes_in_flight=int(args.max_in_flight_mb * 2**20), retry_failed=args.retry_failed,
                progress=not args.quiet,
            )
            print(report.summary())
            print(f"Failures are listed in {args.images_dir}/failures.csv ({time.perf_counter() - started:.0f} s)")
        elif args.command == "prepare":
            from .prepare import prepare

            output = prepare(
                args.release_dir, args.images_dir, args.output_dir, resize=args.resize or None,
                validation_fraction=args.validation_fraction, seed=args.seed, num_workers=args.num_workers,
                overwrite=args.overwrite,
            )
            elapsed = time.perf_counter() - started
            print(f"Wrote {output} in {elapsed:.0f} s; load it with datasets.load_dataset({str(output)!r})")
            return push(output, args.push_to_hub, args.private or None) if args.push_to_hub else 0
        else:
            from .synthetic import generate_synthetic

            output = generate_synthetic(
                args.output_dir, images_per_class=args.images_per_class, image_size=args.image_size, seed=args.seed,
                validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
                progress=not args.quiet, overwrite=args.overwrite,
            )
            print(f"Wrote {output} in {time.perf_counter() - started:.1f} s")
            return push(output, args.push_to_hub, args.private or None) if args.push_to_hub else 0
    except (UsageError, ReleaseNotFoundError, FileNotFoundError, FileExistsError, LockHeldError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def push(folder: Path, repo_id: str, private: bool | None) -> int:
    """Push a finished data set folder; a failure leaves it complete, prints the retry command and returns 1."""
    from yoga_common.hub import HubTarget, retry_command

    from .export import push_dataset_folder

    try:
        url = push_dataset_folder(folder, repo_id, private=private)
    except Exception as error:  # any network or auth failure: the folder is complete; say how to retry
        retry = retry_command(folder, HubTarget(repo_id), repo_type="dataset")
        print(f"error: the upload to the Hub dataset repo {repo_id!r} failed ({type(error).__name__}: {error}). "
              f"{folder} is complete; retry with `{retry}`.", file=sys.stderr)
        return 1
    print(f"Pushed {folder} to {url}")
    return 0


def _exit_now_if_interrupted(code: int) -> None:
    """After Ctrl-C, exit at once rather than through the interpreter's shutdown.

    By then every file is complete or absent (download.py writes nothing once stopped) and the lock dies with the
    process. The shutdown would join download threads still blocked in connect() or a DNS lookup (up to --timeout
    seconds) and, even with none left, takes 0.2-0.7 s tearing down the imported libraries (measured on 2 busy
    cores); the user asked to stop now.
    """
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    exit_code = main()
    _exit_now_if_interrupted(exit_code)
    sys.exit(exit_code)
