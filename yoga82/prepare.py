"""``prepare``: the downloaded Yoga-82 images -> a Parquet dataset folder with a dataset card."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from yoga_common.errors import UsageError
from yoga_common.files import how_folders_overlap, shared_lock, temporary_folder_beside

from .release import read_release

logger = logging.getLogger(__name__)


def prepare(
    release_dir: str | Path,
    images_dir: str | Path,
    output_dir: str | Path,
    *,
    resize: int | None = 256,
    validation_fraction: float = 0.2,
    seed: int = 42,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Build Yoga-82 from ``release_dir`` + ``images_dir`` and write it to ``output_dir`` (see export.py).

    With ``validation_fraction=0`` there is no validation split (datasets cannot load an empty Parquet split).
    ``resize`` scales each image's shorter side to that many pixels (JPEG); None keeps the originals (as RGB).
    Missing and undecodable images are skipped; their number per split is in the card and class_counts.json.

    Refused before any work: an ``output_dir`` that is, contains or lies inside ``images_dir`` or ``release_dir``
    (replacing it would remove inputs), a non-empty one without ``overwrite`` or holding files it did not write, and
    an ``images_dir`` that a download is still filling (LockHeldError naming it; see _hold_images_against_downloads).
    Temporary files (the Arrow cache) live in a hidden folder beside ``output_dir``, on its disk, and are removed.
    """
    # Imported here: they import `datasets` (seconds), and yoga82/__init__.py imports this module to export prepare.
    from .export import check_output_folder

    output_dir = Path(output_dir)
    # Fail on what the user can fix before decoding thousands of images.
    read_release(release_dir, with_links=False)
    if not Path(images_dir).is_dir():
        raise FileNotFoundError(f"No images folder at {images_dir}: run `python -m yoga82 download` first.")
    if resize is not None and resize < 1:
        raise UsageError(f"--resize must be a positive number of pixels, got {resize}")
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError(f"--validation_fraction must be in [0, 1), got {validation_fraction}")
    for flag, folder in (("--images_dir", images_dir), ("--release_dir", release_dir)):
        relation = how_folders_overlap(output_dir, folder)
        if relation is not None:
            outer = Path(folder if relation == "lies inside" else output_dir).resolve()
            raise UsageError(
                f"--output_dir {output_dir} {relation} {flag} {folder}: the output folder is written, and with "
                "--overwrite replaced, as a whole, so it must not share files with an input. Choose an --output_dir "
                f"outside both, e.g. {outer.parent / (outer.name + '-parquet')}."
            )
    check_output_folder(output_dir, overwrite=overwrite)
    with ExitStack() as stack:
        _hold_images_against_downloads(stack, Path(images_dir))
        return _build(release_dir, images_dir, output_dir, resize=resize, validation_fraction=validation_fraction,
                      seed=seed, num_workers=num_workers, overwrite=overwrite)


def _hold_images_against_downloads(stack: ExitStack, images_dir: Path) -> None:
    """Share the download's lock on ``images_dir`` for the whole build: a running download (which holds it alone)
    makes prepare stop at once naming it (LockHeldError), and a download started meanwhile refuses to start, so the
    data set is never built from a folder that is still being filled."""
    from .download import LOCK_FILE  # the one name both commands use

    what = f"`python -m yoga82 prepare` reading {images_dir.resolve()}"
    try:
        stack.enter_context(shared_lock(images_dir.resolve() / LOCK_FILE, what=what))
    except OSError as error:  # a read-only images folder: nobody downloads into it through us
        logger.warning("Cannot lock %s against downloads (%s); make sure no download into it is running.",
                       images_dir, error)


def _build(release_dir: str | Path, images_dir: str | Path, output_dir: Path, *, resize: int | None,
           validation_fraction: float, seed: int, num_workers: int | None, overwrite: bool) -> Path:
    from .builder import DESCRIPTION, Yoga82
    from .export import write_parquet_dataset

    # A private, throw-away Arrow cache: the folder written below is the product, and a stale cache keyed on
    # folder names could silently miss newly downloaded images. It sits beside the output, on its disk: $TMPDIR is
    # often RAM (tmpfs), and the cache is a full copy of the data set.
    with temporary_folder_beside(output_dir) as cache_dir:
        builder = Yoga82(
            cache_dir=str(cache_dir),
            release_dir=str(Path(release_dir).resolve()),
            images_dir=str(Path(images_dir).resolve()),
            validation_fraction=validation_fraction, seed=seed, resize=resize, num_workers=num_workers,
        )
        builder.download_and_prepare()
        dataset_dict = builder.as_dataset()
        skipped = {split: dict(counter) for split, counter in builder.skipped.items()}
        size_note = f"Images are resized so that their shorter side is {resize} px (JPEG)." if resize else (
            "Images are stored at their original size, as RGB."
        )
        write_parquet_dataset(
            dataset_dict,
            output_dir,
            pretty_name="Yoga-82",
            description=(
                f"{DESCRIPTION} Built from the official release with `python -m yoga82 prepare`: `test` is the "
                f"official test split; `validation` is {validation_fraction:.0%} of the official train split, "
                f"stratified by pose (seed {seed}). {size_note} Images that were no longer online, or not valid "
                "images, are left out; the table below compares what is here with what the release lists."
            ),
            listed_counts=builder.listed,
            extra_counts={
                "skipped": skipped, "resize": resize, "validation_fraction": validation_fraction, "seed": seed
            },
            overwrite=overwrite,
        )
        del dataset_dict, builder  # release the memory-mapped Arrow files before the cache folder goes
    return output_dir
