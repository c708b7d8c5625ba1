"""``Yoga82``: the Hugging Face ``datasets`` builder over a release folder and a folder of downloaded images.

    builder = Yoga82(release_dir="yoga82_release", images_dir="yoga82_images")
    builder.download_and_prepare()
    dataset = builder.as_dataset()  # DatasetDict: train, validation, test
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from yoga_common.errors import UsageError

from .images import InvalidImage, normalized_jpeg
from .labels import LABEL_6_NAMES, LABEL_20_NAMES, LABEL_82_NAMES, LEVELS, PARENT_OF_20, PARENT_OF_82, parent_link
from .release import SplitRow, read_release, stratified_split

CITATION = """\
@inproceedings{verma2020yoga,
  title={Yoga-82: A New Dataset for Fine-grained Classification of Human Poses},
  author={Verma, Manisha and Kumawat, Sudhakar and Nakashima, Yuta and Raman, Shanmuganathan},
  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year={2020}
}"""
HOMEPAGE = "https://sites.google.com/view/yoga-82/home"
DESCRIPTION = (
    "Yoga-82: 28,450 web images of 82 yoga poses labelled on three levels of a hierarchy "
    "(6 body positions -> 20 variations -> 82 poses)."
)


def yoga82_features() -> datasets.Features:
    """The columns every Yoga-82 dataset of this project has (real, resized or synthetic). The finer levels'
    ClassLabels carry their parents (``labels.parent_link``), so the data set states its whole tree even when some
    classes have no example."""
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_path": datasets.Value("string"),
            "label_6": datasets.ClassLabel(names=list(LABEL_6_NAMES)),
            "label_20": datasets.ClassLabel(names=list(LABEL_20_NAMES), id=parent_link(LEVELS[0], PARENT_OF_20)),
            "label_82": datasets.ClassLabel(names=list(LABEL_82_NAMES), id=parent_link(LEVELS[1], PARENT_OF_82)),
        }
    )


@dataclass
class Yoga82Config(datasets.BuilderConfig):
    """Where the release and the images are, and how to cut the validation split and size the images."""

    release_dir: str | None = None
    images_dir: str | None = None
    validation_fraction: float = 0.2
    seed: int = 42
    resize: int | None = None
    num_workers: int | None = None  # threads decoding images; None: one per CPU


class Yoga82(datasets.GeneratorBasedBuilder):
    """Yoga-82 from its official release: train (minus a stratified validation share), validation and test.

    Images that are missing or cannot be decoded are skipped and counted in ``self.skipped`` (split -> reason ->
    count), never fatal: a quarter of the web images are gone. Every stored image is RGB; ``resize`` scales the
    shorter side to that many pixels and stores JPEG.
    """

    BUILDER_CONFIG_CLASS = Yoga82Config
    VERSION = datasets.Version("1.0.0")
    DEFAULT_WRITER_BATCH_SIZE = 256  # images, not text: keep Arrow record batches to tens of MB

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped: dict[str, Counter[str]] = {}
        self.listed: dict[str, list[int]] = {}

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=DESCRIPTION, features=yoga82_features(), homepage=HOMEPAGE, citation=CITATION
        )

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        if not self.config.release_dir or not self.config.images_dir:
            raise UsageError("Yoga82 needs release_dir and images_dir, e.g. Yoga82(release_dir=..., images_dir=...)")
        if self.config.resize is not None and self.config.resize < 1:
            raise UsageError(f"resize must be a positive number of pixels, got {self.config.resize}")
        images_dir = Path(self.config.images_dir)
        if not images_dir.is_dir():
            raise FileNotFoundError(f"No images folder at {images_dir}: run `python -m yoga82 download` first.")
        release = read_release(self.config.release_dir, with_links=False)
        train, validation = stratified_split(release.train, self.config.validation_fraction, self.config.seed)
        splits = {datasets.Split.TRAIN: train, datasets.Split.VALIDATION: validation, datasets.Split.TEST: release.test}
        self.listed = {str(name): release.listed_counts(rows) for name, rows in splits.items()}
        # datasets cannot read back a split that was never written, so an empty validation split is left out.
        return [
            datasets.SplitGenerator(name=name, gen_kwargs={"rows": rows, "split": str(name)})
            for name, rows in splits.items()
            if rows or name != datasets.Split.VALIDATION
        ]

    def _load(self, row: SplitRow) -> bytes | str:
        path = Path(self.config.images_dir) / row.path
        if not path.is_file():
            return "missing"
        try:
            return normalized_jpeg(path, self.config.resize)
        except InvalidImage as error:
            return error.reason
        except OSError:
            return "unreadable"

    def _generate_examples(self, rows: list[SplitRow], split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        skipped = self.skipped.setdefault(split, Counter())
        # Decoding and resizing dominate; PIL releases the GIL while it does them, so threads scale. Chunks keep
        # only a bounded number of encoded images in memory and the output order fixed.
        workers = self.config.num_workers or os.cpu_count() or 1
        chunk = 64 * workers
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="yoga82-decode") as executor:
            for start in range(0, len(rows), chunk):
                batch = rows[start : start + chunk]
                for row, result in zip(batch, executor.map(self._load, batch), strict=True):
                    if isinstance(result, str):
                        skipped[result] += 1
                        continue
                    yield row.path, {
                        # The stored path is the release's relative one: no local folder names leak into a shared
                        # dataset, and it matches image_path.
                        "image": {"path": row.path, "bytes": result},
                        "image_path": row.path,
                        "label_6": row.label_6,
                        "label_20": row.label_20,
                        "label_82": row.label_82,
                    }
