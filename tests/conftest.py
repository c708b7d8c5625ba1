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


TINY_MODEL = "hidden_size=48,num_hidden_layers=2,num_attention_heads=3,intermediate_size=96"


def tiny_args(dataset: Path, output_dir: Path, *extra: str, epochs: int = 1) -> list[str]:
    """train.py's command line for a tiny run on ``dataset``: vit-pico narrowed to 2 layers, 48 wide, at 32 px, one
    epoch, no DataLoader workers, seed 7; ``extra`` flags last."""
    return [
        "--dataset_name", str(dataset), "--output_dir", str(output_dir), "--model_preset", "vit-pico",
        "--config_overrides", TINY_MODEL, "--image_size", "32", "--rand_augment_ops", "1",
        "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--learning_rate", "1e-3",
        "--num_train_epochs", str(epochs), "--seed", "7", "--dataloader_num_workers", "0", *extra,
    ]


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


def save_checkpoint_as_train_py(folder: Path, config, seed: int = 0) -> Path:
    """An untrained ViTYoga of ``config``, saved as train.py saves its output folder (weights, config with auto_map,
    the model code, the image processor, the hierarchical pipeline): a head per level when the config has a
    hierarchy and no ``label_level`` (the joint model), else one head."""
    import torch

    from modeling_vit_yoga import (
        ViTYogaForHierarchicalClassification,
        ViTYogaForImageClassification,
        vit_yoga_image_processor,
    )
    from vit_yoga.models import save_hierarchical_pipeline

    joint = bool(config.hierarchy_levels) and config.label_level is None
    torch.manual_seed(seed)
    model = (ViTYogaForHierarchicalClassification if joint else ViTYogaForImageClassification)(config)
    model.save_pretrained(folder)
    vit_yoga_image_processor(config).save_pretrained(folder)
    save_hierarchical_pipeline(folder)
    return folder


def save_tiny_checkpoint(folder: Path, label_level: str | None = None, seed: int = 0) -> Path:
    """An untrained tiny ViTYoga with Yoga-82's real hierarchy (conv stem, 32 px, 2 layers, 48 wide), saved as train.py
    saves it: ``label_level`` None -> the joint model (a head per level), else a one-head model of that level."""
    import yoga82
    from configuration_vit_yoga import ViTYogaConfig
    from yoga82.labels import display_names

    hierarchy = yoga82.hierarchy()
    every_name = [name for level in hierarchy["hierarchy_class_names"] for name in level]
    names = hierarchy["hierarchy_class_names"][hierarchy["hierarchy_levels"].index(label_level) if label_level else -1]
    config = ViTYogaConfig.from_preset(
        "vit-pico", **hierarchy, label_level=label_level, image_size=32, hidden_size=48, num_hidden_layers=2,
        intermediate_size=96, patch_embedding_type="conv_stem", id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, display_names=display_names(every_name),
    )
    return save_checkpoint_as_train_py(folder, config, seed)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The joint tiny checkpoint (every level), untrained: enough for the user-side tools' tests."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "joint")
