"""Yoga-82 as a Hugging Face dataset: its labels, release parsing, a safe downloader, Parquet export and synthetic
poses. It imports nothing from the model: the model learns the labels from the data.

Run ``python -m yoga82 --help`` for the commands (download, prepare, synthetic).

The names below are imported on first use (PEP 562), so that ``python -m yoga82 download`` and ``import
yoga82.labels`` do not pay for importing ``datasets`` (seconds), which only the builder and the export need.
``prepare`` alone is imported at once (cheaply): it is also the name of its module, and a later ``import
yoga82.prepare`` would otherwise bind the module where ``from yoga82 import prepare`` expects the function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .prepare import prepare

_HOMES = {
    "Yoga82": "builder",
    "Yoga82Config": "builder",
    "yoga82_features": "builder",
    "DownloadReport": "download",
    "download_images": "download",
    "push_dataset_folder": "export",
    "write_parquet_dataset": "export",
    "LEVELS": "labels",
    "hierarchy": "labels",
    "label_tree": "labels",
    "parent_link": "labels",
    "ReleaseError": "release",
    "ReleaseNotFoundError": "release",
    "read_release": "release",
    "build_synthetic": "synthetic",
    "generate_synthetic": "synthetic",
}

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
    "label_tree",
    "parent_link",
    "prepare",
    "push_dataset_folder",
    "read_release",
    "write_parquet_dataset",
    "yoga82_features",
]

if TYPE_CHECKING:
    from .builder import Yoga82, Yoga82Config, yoga82_features
    from .download import DownloadReport, download_images
    from .export import push_dataset_folder, write_parquet_dataset
    from .labels import LEVELS, hierarchy, label_tree, parent_link
    from .release import ReleaseError, ReleaseNotFoundError, read_release
    from .synthetic import build_synthetic, generate_synthetic


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'yoga82' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
