"""Yoga-82 as a Hugging Face dataset: its labels, release parsing, a safe downloader, Parquet export and synthetic
poses. It imports nothing from the model: the model learns the labels from the data.

Run ``python -m yoga82 --help`` for the commands (download, prepare, synthetic).
"""

from .builder import Yoga82, Yoga82Config, yoga82_features
from .download import DownloadReport, download_images
from .export import push_dataset_folder, write_parquet_dataset
from .labels import LEVELS, hierarchy
from .prepare import prepare
from .release import ReleaseError, ReleaseNotFoundError, read_release
from .synthetic import build_synthetic, generate_synthetic

__all__ = [
    "LEVELS",
    "DownloadReport",
    "ReleaseError",
    "ReleaseNotFoundError",
    "Yoga82",
    "Yoga82Config",
    "build_synthetic",
    "download_images",
    "generate_synthetic",
    "hierarchy",
    "prepare",
    "push_dataset_folder",
    "read_release",
    "write_parquet_dataset",
    "yoga82_features",
]
