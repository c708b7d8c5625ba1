"""Writing a Yoga-82 ``DatasetDict`` as a shareable folder (Parquet shards + dataset card) and pushing it.

The folder is what ``push_to_hub`` would create on the Hub, so ``datasets.load_dataset(folder)`` reads it locally
with no script, and uploading the folder as is publishes the same dataset:

    O/README.md                                   dataset card; YAML: configs (split -> files), features, counts
    O/data/<split>-00000-of-0000N.parquet         images embedded as bytes
    O/class_counts.json                           examples per split and class (and listed counts, when known)
    O/class_counts.png                            available (and listed) images per pose
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.table import embed_table_storage
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from yoga_common.files import staged_folder
from yoga_common.hub import HubTarget, push_folder

from .builder import CITATION, HOMEPAGE
from .labels import LABEL_82_NAMES, LEVELS

SPLITS = ("train", "validation", "test")
DATA_DIR = "data"
COUNTS_FILE = "class_counts.json"
PLOT_FILE = "class_counts.png"
DEFAULT_MAX_SHARD_SIZE = 500 * 1024 * 1024
README_FILE = "README.md"
YOGA82_SOURCE = (
    f"Yoga-82, {HOMEPAGE}. The images are the property of their owners; the release lists their web addresses "
    "for non-commercial research use."
)


def _entries_not_written_here(folder: Path) -> list[str]:
    """What in ``folder`` write_parquet_dataset did not write (it writes the card, counts, plot, data/*.parquet)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or entry.name not in (README_FILE, COUNTS_FILE, PLOT_FILE, DATA_DIR):
            foreign.append(entry.name)
        elif entry.name == DATA_DIR:
            if not entry.is_dir():
                foreign.append(entry.name)
                continue
            foreign += [
                f"{DATA_DIR}/{shard.name}" for shard in sorted(entry.iterdir())
                if shard.suffix != ".parquet" or shard.is_symlink() or not shard.is_file()
            ]
        elif not entry.is_file():
            foreign.append(entry.name)
    return foreign


def check_output_folder(output_dir: str | Path, *, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that write_parquet_dataset may not replace.

    A missing or empty folder is fine. A non-empty one needs ``overwrite``, and even then only a folder this module
    wrote is replaced: one holding anything else (a clone's .git, notes, images...) is refused, since replacing a
    folder removes all it holds.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder; choose another output folder.")
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} already exists and is not empty; choose another output folder or pass --overwrite."
        )
    foreign = _entries_not_written_here(output_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{output_dir} holds files that python -m yoga82 did not write ({shown}); --overwrite replaces only a "
            "data set folder it wrote, since the whole folder is replaced. Move those files elsewhere, or choose "
            "another output folder."
        )


def _size_category(total: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if total < bound:
            return name
    return "n>1M"


def _class_counts(dataset: datasets.Dataset) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for level in LEVELS:
        names = dataset.features[level].names
        per_class = [0] * len(names)
        # Reading the label column straight from Arrow avoids decoding every image.
        for label in dataset.select_columns([level]).data.column(level).to_pylist():
            per_class[label] += 1
        counts[level] = dict(zip(names, per_class, strict=True))
    return counts


def _has_unembedded_images(dataset: datasets.Dataset) -> bool:
    column = dataset.data.column("image")
    return any(chunk.field("bytes").null_count for chunk in column.chunks)


def _write_plot(path: Path, available: Sequence[int], listed: Sequence[int] | None, title: str) -> None:
    # The object-oriented API with an explicit Agg canvas: no pyplot state, no change of the process's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(LABEL_82_NAMES)
    figure = Figure(figsize=(10, 16), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = range(len(names))
    if listed is not None:
        axes.barh(positions, listed, color="#c9d6e8", label="listed in the release")
    axes.barh(positions, available, color="#2f6db5", height=0.6 if listed is not None else 0.8, label="available")
    axes.set_yticks(list(positions), [name.replace("_", " ")[:48] for name in names], fontsize=6)
    axes.invert_yaxis()
    axes.set_xlabel("images (all splits)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=110)


def _card_text(
    card_data: DatasetCardData, pretty_name: str, description: str, split_counts: Mapping[str, int],
    listed_totals: Mapping[str, int] | None, source: str,
) -> str:
    rows = []
    for split, count in split_counts.items():
        listed = f" | {listed_totals[split]:,}" if listed_totals is not None else ""
        rows.append(f"| {split} | {count:,}{listed} |")
    header = "| split | images | listed |\n|---|---:|---:|" if listed_totals else "| split | images |\n|---|---:|"
    return f"""---
{card_data.to_yaml()}
---

# {pretty_name}

{description}

## Use

```python
from datasets import load_dataset

dataset = load_dataset("path/to/this/folder")  # or the Hub repository id
names = dataset["train"].features["label_82"].names
```

Columns: `image` (RGB), `image_path` (`<pose folder>/<file>` as in the Yoga-82 release), and the three levels of the
hierarchy as class labels: `label_6` (body position) -> `label_20` (variation) -> `label_82` (pose).
Per-class counts are in `{COUNTS_FILE}` and `{PLOT_FILE}`.

The label tree is part of the features, so it comes back with `load_dataset` (and survives `push_to_hub`) even
where some classes have no example: each finer level's class label carries, in its `id`, the level above and the
parent of each of its classes (`dataset_info` above shows it).

```python
import json

link = json.loads(dataset["train"].features["label_82"].id)  # {{"hierarchy_parent": "label_20", "parents": [...]}}
variation_of_pose = link["parents"]  # variation_of_pose[pose id] = its label_20 id
```

## Splits

{header}
{chr(10).join(rows)}

## Source and citation

{source}

```bibtex
{CITATION}
```
"""


def write_parquet_dataset(
    dataset_dict: datasets.DatasetDict,
    output_dir: str | Path,
    *,
    pretty_name: str = "Yoga-82",
    description: str = "",
    listed_counts: Mapping[str, Sequence[int]] | None = None,
    extra_counts: Mapping[str, Any] | None = None,
    license: str = "other",
    source: str = YOGA82_SOURCE,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> Path:
    """Write ``dataset_dict`` (Yoga-82 features) to ``output_dir`` as Parquet shards, dataset card, counts and plot.

    The folder is built under a temporary sibling name and swapped into place at the end (``yoga_common.files.
    staged_folder``): a killed run leaves the previous complete folder, or none, never a half one. An existing
    non-empty ``output_dir`` is refused unless ``overwrite``, and with it unless it holds only what this function
    writes (``check_output_folder``).
    ``listed_counts`` (split -> count per label_82) are the release's numbers, to report what is missing.
    """
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite=overwrite)
    with staged_folder(output_dir, overwrite=overwrite) as staging:
        (staging / DATA_DIR).mkdir()
        splits = [split for split in SPLITS if split in dataset_dict] + [s for s in dataset_dict if s not in SPLITS]
        features = dataset_dict[splits[0]].features
        split_infos, data_files, split_counts, parquet_bytes = SplitDict(), [], {}, 0
        counts: dict[str, Any] = {"splits": {}}
        for split in splits:
            dataset = dataset_dict[split]
            num_bytes = dataset._estimate_nbytes()
            num_shards = max(1, math.ceil(num_bytes / max_shard_size))
            if _has_unembedded_images(dataset):
                # Images given as local file paths would be written as paths; embed their bytes (the step
                # push_to_hub takes) so that the Parquet files are self-contained.
                dataset = dataset.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
            for index in range(num_shards):
                shard_path = staging / DATA_DIR / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
                dataset.shard(num_shards=num_shards, index=index, contiguous=True).to_parquet(str(shard_path))
                parquet_bytes += shard_path.stat().st_size
            split_infos.add(SplitInfo(name=split, num_bytes=num_bytes, num_examples=len(dataset)))
            data_files.append({"split": split, "path": f"{DATA_DIR}/{split}-*"})
            split_counts[split] = len(dataset)
            counts["splits"][split] = {"num_examples": len(dataset), **_class_counts(dataset)}
        if listed_counts is not None:
            counts["listed"] = {
                split: {
                    "num_examples": sum(per_class),
                    "label_82": dict(zip(LABEL_82_NAMES, per_class, strict=True)),
                }
                for split, per_class in listed_counts.items()
            }
        counts.update(extra_counts or {})
        (staging / COUNTS_FILE).write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")

        available = [
            sum(counts["splits"][split]["label_82"][name] for split in splits) for name in LABEL_82_NAMES
        ]
        listed = (
            [sum(per_class[i] for per_class in listed_counts.values()) for i in range(len(LABEL_82_NAMES))]
            if listed_counts is not None
            else None
        )
        _write_plot(staging / PLOT_FILE, available, listed, f"{pretty_name}: images per pose")

        info = DatasetInfo(
            features=features, splits=split_infos, download_size=parquet_bytes,
            dataset_size=sum(info.num_bytes for info in split_infos.values()), config_name="default",
        )
        card_data = DatasetCardData(
            pretty_name=pretty_name, license=license, task_categories=["image-classification"],
            size_categories=[_size_category(sum(split_counts.values()))], tags=["yoga", "pose", "hierarchical"],
        )
        DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
        MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
        listed_totals = {s: sum(v) for s, v in listed_counts.items()} if listed_counts is not None else None
        DatasetCard(_card_text(card_data, pretty_name, description, split_counts, listed_totals, source)).save(
            staging / README_FILE
        )
    return output_dir


def push_dataset_folder(
    output_dir: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None
) -> str:
    """Upload a folder written by write_parquet_dataset to the Hub dataset repository ``repo_id`` in one commit;
    returns its URL. The token comes from ``token``, ``HF_TOKEN`` or ``hf auth login``; it is never printed."""
    return push_folder(output_dir, HubTarget(repo_id, token=token, private=private), repo_type="dataset",
                       commit_message="Upload Yoga-82 (Parquet) with python -m yoga82")
