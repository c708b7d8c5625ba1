"""Shared test set-up: no test may reach the Hugging Face Hub (this machine and CI have no internet)."""

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_YOGA82 = PROJECT_ROOT.parent / "shared" / "yoga82"
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))


def load_script(name: str) -> dict:
    """The names a top-level script defines (train.py's ``main``...), loaded from its file as a user runs it: scripts
    are edges, not modules to import."""
    import runpy

    return runpy.run_path(str(PROJECT_ROOT / name))


@pytest.fixture(scope="session")
def poses(tmp_path_factory) -> Path:
    """Synthetic Yoga-82 (the real hierarchy), 4 images per pose at 32 px: 328 images in Parquet (164 train, 82
    validation, 82 test)."""
    from yoga82 import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("data") / "poses", images_per_class=4, image_size=32, seed=0,
                              progress=False)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Benchmarks called in-process set torch's thread count (as their command line asks); later tests must not
    inherit it."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
