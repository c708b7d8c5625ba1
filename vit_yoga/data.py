"""The data set of a run and its labels: loading (a prepared folder, the Hub, image folders or the built-in synthetic
poses), the splits, the label columns and the label hierarchy as the data states it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
from transformers import TrainingArguments

from yoga82.labels import LEVELS, LabelTreeError, label_tree
from yoga82.labels import hierarchy as yoga82_hierarchy
from yoga_common.errors import UsageError

from .arguments import SYNTHETIC, DataSourceArguments

logger = logging.getLogger(__name__)

# --label_level -> the Yoga-82 label columns a model predicts, coarsest first.
LEVEL_COLUMNS = {"1": [LEVELS[0]], "2": [LEVELS[1]], "3": [LEVELS[2]], "all": list(LEVELS)}


@dataclass
class Labels:
    """What the model predicts: its label columns (coarsest first), their class names, and the data set's label
    hierarchy as ViTYogaConfig fields (empty when the data set has no Yoga-82-style levels)."""

    columns: list[str]
    class_names: list[list[str]]
    hierarchy: dict[str, Any] = field(default_factory=dict)

    @property
    def hierarchical(self) -> bool:
        """One head per level (``--label_level all``)."""
        return len(self.columns) > 1

    @property
    def label_level(self) -> str | None:
        """The hierarchy level a one-head model predicts (ViTYogaConfig.label_level), if it is one."""
        levels = self.hierarchy.get("hierarchy_levels", [])
        return self.columns[0] if not self.hierarchical and self.columns[0] in levels else None


def synthetic_cache() -> Path:
    return Path(os.environ.get("VIT_YOGA_CACHE", Path.home() / ".cache" / "vit-yoga"))


def load_image_dataset(data_args: DataSourceArguments, training_args: TrainingArguments) -> datasets.DatasetDict:
    """The data set as a DatasetDict with train, validation and (if there is one) test splits."""
    if data_args.train_dir:
        data_files = {"train": os.path.join(data_args.train_dir, "**")}
        for split, folder in (("validation", data_args.validation_dir), ("test", data_args.test_dir)):
            if folder:
                data_files[split] = os.path.join(folder, "**")
        for split, pattern in data_files.items():
            if not Path(pattern).parent.is_dir():
                raise UsageError(f"--{split}_dir {Path(pattern).parent} is not a folder.")
        dataset = datasets.load_dataset("imagefolder", data_files=data_files)
    elif data_args.synthetic:
        from yoga82 import generate_synthetic

        folder = synthetic_cache() / (
            f"synthetic-{data_args.synthetic_images_per_class}x{data_args.synthetic_image_size}px-seed0"
        )
        with training_args.main_process_first(desc="generating the synthetic poses"):
            if not folder.exists():
                logger.info(f"Generating the synthetic poses once into {folder}")
            generate_synthetic(folder, data_args.synthetic_images_per_class, data_args.synthetic_image_size, seed=0)
        dataset = datasets.load_dataset(str(folder))
    else:
        dataset = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    if "train" not in dataset:
        raise UsageError(f"{data_args.dataset_name} has no 'train' split (it has {sorted(dataset)}).")
    if training_args.do_predict and "test" not in dataset:
        raise UsageError(
            f"--do_predict asks for a test evaluation, but {data_args.dataset_name} has no 'test' split (it has "
            f"{sorted(dataset)}); pass --test_dir or drop --do_predict."
        )
    if "validation" not in dataset:
        logger.info(f"No validation split: holding out {data_args.validation_fraction:.0%} of train.")
        split = dataset["train"].train_test_split(test_size=data_args.validation_fraction, seed=training_args.seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


# Where a run's images came from: train.py writes it under this key of train_results.json (and so all_results.json).
DATA_RECORD_KEY = "train_data"
RECORDED_FLAGS = ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "test_dir", "image_column",
                  "validation_fraction")


def data_record(data_args: DataSourceArguments, seed: int) -> dict[str, Any]:
    """What a run records about its data (``DATA_RECORD_KEY``): the flags that locate the data set and its splits,
    local paths made absolute (the record is read from other folders), and the seed its validation hold-out was drawn
    with, so that ``load_recorded_dataset`` gives the same splits (the ONNX export checks on the test split)."""
    record: dict[str, Any] = {name: getattr(data_args, name) for name in RECORDED_FLAGS}
    for name in ("dataset_name", "train_dir", "validation_dir", "test_dir"):
        if record[name] and record[name] != SYNTHETIC and Path(record[name]).exists():
            record[name] = str(Path(record[name]).resolve())
    return dict(record, seed=seed)


def read_data_record(folder: str | Path) -> dict[str, Any] | None:
    """The data record of the run that wrote ``folder`` (a train.py output folder), or None (a Hub id, a folder
    another program wrote)."""
    for name in ("all_results.json", "train_results.json"):
        path = Path(folder) / name
        try:
            record = json.loads(path.read_text()).get(DATA_RECORD_KEY) if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            record = None
        if isinstance(record, dict):
            return record
    return None


def recorded_source(record: dict[str, Any]) -> DataSourceArguments:
    """The data flags a record holds."""
    return DataSourceArguments(**{name: record[name] for name in RECORDED_FLAGS if name in record})


def load_recorded_dataset(record: dict[str, Any]) -> datasets.DatasetDict:
    """The splits of a recorded run's data set, as ``load_image_dataset`` made them for the run (the same held-out
    validation split where the data set has none). Not for the synthetic poses (``recorded_source(...).synthetic``),
    whose images are drawn, not loaded."""
    run = SimpleNamespace(seed=record.get("seed", 42), do_predict=False)  # what load_image_dataset reads of a run
    return load_image_dataset(recorded_source(record), run)


def load_data(
    data_args: DataSourceArguments, training_args: TrainingArguments
) -> tuple[datasets.DatasetDict, str, Labels]:
    """The splits, the image column and the labels; --max_*_samples truncate only after the labels and their
    hierarchy are read off the whole data set."""
    dataset = load_image_dataset(data_args, training_args)
    image_column = find_image_column(dataset["train"].features, data_args.image_column)
    labels = find_labels(dataset, data_args)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit and split in dataset:
            dataset[split] = dataset[split].select(range(min(limit, len(dataset[split]))))
    return dataset, image_column, labels


def find_image_column(features: datasets.Features, requested: str | None) -> str:
    if requested:
        if requested not in features:
            raise UsageError(f"--image_column {requested!r} is not in the data set (columns: {list(features)}).")
        return requested
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not image_columns:
        raise UsageError(
            f"the data set has no image column (columns: {list(features)}); pass --image_column or use a data "
            "set with an Image feature (e.g. one written by `python -m yoga82 prepare`)."
        )
    return image_columns[0]


def find_labels(dataset: datasets.DatasetDict, data_args: DataSourceArguments) -> Labels:
    """The label columns ``--label_level`` / ``--label_column`` name, as ClassLabels in every split, and the data set's
    hierarchy. String or integer columns become one ClassLabel named from train."""
    features = dataset["train"].features
    columns = [data_args.label_column] if data_args.label_column else LEVEL_COLUMNS[data_args.label_level]
    if not data_args.label_column and not all(c in features for c in columns) and "label" in features:
        raise UsageError(
            f"--label_level {data_args.label_level} needs the column(s) {columns}, which this data set lacks "
            f"(columns: {list(features)}); for a data set that is not Yoga-82 pass --label_column label."
        )
    for column in columns:
        if column not in features:
            flag = "--label_column" if data_args.label_column else f"--label_level {data_args.label_level}"
            raise UsageError(
                f"{flag} needs the column {column!r}, which this data set lacks (columns: {list(features)}); "
                "choose a label column the data set has with --label_column."
            )
        if not isinstance(features[column], datasets.ClassLabel):
            # Strings or ints: one ClassLabel, named from train, for every split (so that ids agree across splits).
            values = sorted(set(dataset["train"].unique(column)))
            _check_splits_within_train(dataset, column, set(values))
            class_label = datasets.ClassLabel(names=[str(v) for v in values])
            ids = {value: i for i, value in enumerate(values)}
            for split in dataset:
                split_features = dataset[split].features.copy()
                split_features[column] = class_label
                dataset[split] = dataset[split].map(
                    _encode_labels, batched=True, fn_kwargs={"column": column, "ids": ids}, features=split_features
                )
    names = [list(dataset["train"].features[c].names) for c in columns]
    hierarchy = {} if data_args.label_column else hierarchy_of_dataset(dataset)
    return Labels(columns, names, hierarchy)


def _check_splits_within_train(dataset: datasets.DatasetDict, column: str, train_values: set[Any]) -> None:
    """Refuse, before any work, an evaluation split with a label train lacks: the classes are named from train, so
    such an example has no class id (and a model could never predict it)."""
    for split in dataset:
        if split == "train":
            continue
        unseen = sorted(set(dataset[split].unique(column)) - train_values, key=str)
        if unseen:
            shown = ", ".join(repr(v) for v in unseen[:5]) + (f" and {len(unseen) - 5} more" if len(unseen) > 5 else "")
            raise UsageError(
                f"the {split} split has {column} value(s) that train lacks: {shown}. The classes are named from "
                f"train; add examples of them to train, drop them from {split}, or make {column} a ClassLabel that "
                "names every class."
            )


def _encode_labels(batch: dict[str, list], column: str, ids: dict[Any, int]) -> dict[str, list[int]]:
    return {column: [ids[value] for value in batch[column]]}


def hierarchy_of_dataset(dataset: datasets.DatasetDict) -> dict[str, Any]:
    """The label hierarchy as the data set states it, as ViTYogaConfig fields (names per level, parents).

    Where it comes from, first found: the tree the features state (``yoga82.label_tree``: each finer ClassLabel's
    parent link, written by ``python -m yoga82 prepare`` / ``synthetic``); Yoga-82's own tree when the three level
    columns carry exactly Yoga-82's class names (a folder prepared before the features stated the tree); else, for
    other data sets with Yoga-82-style level columns, parents read off the rows. Empty when the data set has none of
    these. Every class of the ClassLabels is kept, with or without examples; the log says how many have none. Rows
    that contradict the tree (a class under two parents) stop training with an error.
    """
    features = dataset["train"].features
    try:
        hierarchy = label_tree(features)
    except LabelTreeError as error:
        raise UsageError(f"the data set's label tree is broken: {error}; rewrite it with python -m yoga82 prepare, "
                         "or predict one column with --label_column.") from None
    source = "the data set's features"
    if not hierarchy:
        if not all(isinstance(features.get(level), datasets.ClassLabel) for level in LEVELS):
            return {}
        if [list(features[level].names) for level in LEVELS] == yoga82_hierarchy()["hierarchy_class_names"]:
            hierarchy, source = yoga82_hierarchy(), "Yoga-82's (the data set's class names are Yoga-82's)"
        else:
            hierarchy, source = _hierarchy_from_rows(dataset), "the data set's rows"
    _check_rows_follow(dataset, hierarchy)
    _log_empty_classes(dataset, hierarchy, source)
    return hierarchy


def _label_pairs(dataset: datasets.DatasetDict, coarse: str, fine: str) -> set[tuple[int, int]]:
    """Every (fine id, coarse id) pair the rows of any split hold."""
    pairs = set()
    for split in dataset.values():
        ids = split.select_columns([coarse, fine]).with_format("numpy")[:]  # label columns only, no images
        pairs.update(zip(ids[fine].tolist(), ids[coarse].tolist(), strict=True))
    return pairs


def _hierarchy_from_rows(dataset: datasets.DatasetDict) -> dict[str, Any]:
    levels = list(LEVELS)
    features = dataset["train"].features
    names = [list(features[level].names) for level in levels]
    parents = []
    for coarse, fine in zip(levels, levels[1:], strict=False):
        parent: dict[int, int] = {}
        for child, coarse_id in sorted(_label_pairs(dataset, coarse, fine)):
            if parent.setdefault(child, coarse_id) != coarse_id:
                raise UsageError(
                    f"the data set's rows put {fine} class {names[levels.index(fine)][child]!r} under two "
                    f"{coarse} classes ({parent[child]} and {coarse_id}); fix the labels (python -m yoga82 prepare "
                    "checks them)."
                )
        fine_names = names[levels.index(fine)]
        unknown = [fine_names[i] for i in range(len(fine_names)) if i not in parent]
        if unknown:
            raise UsageError(
                f"the data set has no example of {fine} class(es) {unknown[:3]}, and its features state no label "
                f"tree, so their {coarse} parent is unknown; state the tree in the features (the ClassLabel id, "
                "yoga82.parent_link, as python -m yoga82 prepare writes it), predict one level (--label_level), or "
                "use a data set with every class."
            )
        parents.append([parent[i] for i in range(len(fine_names))])
    return {"hierarchy_levels": levels, "hierarchy_class_names": names, "hierarchy_parents": parents}


def _check_rows_follow(dataset: datasets.DatasetDict, hierarchy: dict[str, Any]) -> None:
    """Stop on a row whose labels contradict the tree (its fine class under another parent): training on it would
    teach each head a different tree."""
    levels, names = hierarchy["hierarchy_levels"], hierarchy["hierarchy_class_names"]
    if not all(level in dataset["train"].features for level in levels):
        return
    for depth, parents in enumerate(hierarchy["hierarchy_parents"]):
        coarse, fine = levels[depth], levels[depth + 1]
        wrong = sorted((child, coarse_id) for child, coarse_id in _label_pairs(dataset, coarse, fine)
                       if parents[child] != coarse_id)
        if wrong:
            child, coarse_id = wrong[0]
            raise UsageError(
                f"{len(wrong)} {fine} class(es) appear in rows under another {coarse} class than the data set's "
                f"label tree says, e.g. {names[depth + 1][child]!r} under {names[depth][coarse_id]!r} (the tree: "
                f"{names[depth][parents[child]]!r}); fix the rows' labels or the tree."
            )


def _log_empty_classes(dataset: datasets.DatasetDict, hierarchy: dict[str, Any], source: str) -> None:
    """Say how many classes of each level have no training example: the model keeps them (their ids stay those of
    the data set), it just cannot learn them from this data."""
    counts = []
    for level, names in zip(hierarchy["hierarchy_levels"], hierarchy["hierarchy_class_names"], strict=True):
        if level not in dataset["train"].features:
            continue
        present = set(dataset["train"].unique(level))
        empty = len(names) - len(present)
        counts.append(f"{level}: {empty} of {len(names)}" if empty else f"{level}: 0 of {len(names)}")
    logger.info(f"Label tree from {source}: {' -> '.join(hierarchy['hierarchy_levels'])}; classes with no training "
                f"example (kept in the model): {', '.join(counts)}.")
