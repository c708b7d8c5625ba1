"""The data set states its label tree: written by prepare / synthetic into the features, read back by
datasets.load_dataset(folder), taken by train.py from there; a data set lacking some classes trains at every level."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest
from conftest import PROJECT_ROOT, load_script, tiny_args

import yoga82
from vit_yoga.arguments import DataArguments
from vit_yoga.data import find_labels, hierarchy_of_dataset
from yoga82.export import write_parquet_dataset
from yoga82.synthetic import build_synthetic
from yoga_common.errors import UsageError

REAL_PHOTOS = PROJECT_ROOT.parent / "shared" / "real-photos"
# The 7 poses of ../shared/real-photos: 5 of the 20 variations, 2 of the 6 body positions.
SUBSET_POSES = [3, 17, 22, 31, 39, 68, 74]


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """Synthetic Yoga-82 with only SUBSET_POSES: 3 images per pose at 32 px (7 train, 7 validation, 7 test)."""
    dataset = build_synthetic(images_per_class=3, image_size=32, seed=0, progress=False, labels=SUBSET_POSES)
    return write_parquet_dataset(dataset, tmp_path_factory.mktemp("data") / "subset")


def test_load_dataset_of_a_written_folder_gives_back_the_tree_of_every_class(subset):
    dataset = datasets.load_dataset(str(subset))
    features = dataset["train"].features
    assert yoga82.label_tree(features) == yoga82.hierarchy()  # 82 poses, although 7 have examples
    assert json.loads(features["label_82"].id)["parents"][22] == 2  # the triangle pose is 'Standing: side bend'
    # It travels with the features: through map/select and another Parquet round trip (what push_to_hub writes).
    mapped = dataset["train"].map(lambda row: row).select([0])
    assert yoga82.label_tree(mapped.features) == yoga82.hierarchy()
    # The card's YAML states it too (dataset_info), for a reader of the Hub page.
    assert '"hierarchy_parent":"label_20"' in (subset / "README.md").read_text()


def test_the_tree_is_taken_from_the_features_with_empty_classes_kept_and_counted(subset, caplog):
    dataset = datasets.load_dataset(str(subset))
    with caplog.at_level(logging.INFO, logger="vit_yoga"):
        hierarchy = hierarchy_of_dataset(dataset)
    assert hierarchy == yoga82.hierarchy()
    # 7 poses under 5 variations under 2 body positions have training examples.
    assert "label_6: 4 of 6, label_20: 15 of 20, label_82: 75 of 82" in caplog.text
    labels = find_labels(dataset, DataArguments(dataset_name=str(subset), label_level="all"))
    assert [len(names) for names in labels.class_names] == [6, 20, 82]


def test_a_folder_without_the_stated_tree_falls_back_to_yoga82s_names_or_the_rows(subset):
    dataset = datasets.load_dataset(str(subset))
    # A Yoga-82 folder prepared before the features stated the tree: Yoga-82's names give Yoga-82's tree.
    plain = {}
    for split, ds in dataset.items():
        features = ds.features.copy()
        for level in yoga82.LEVELS:
            features[level] = datasets.ClassLabel(names=features[level].names)
        plain[split] = ds.cast(features)
    assert yoga82.label_tree(plain["train"].features) == {}
    assert hierarchy_of_dataset(datasets.DatasetDict(plain)) == yoga82.hierarchy()

    # Another data set with three level columns and no stated tree: parents come off the rows, which need every class.
    renamed = {}
    for split, ds in plain.items():
        features = ds.features.copy()
        features["label_82"] = datasets.ClassLabel(names=[f"pose {i}" for i in range(82)])
        renamed[split] = ds.cast(features)
    with pytest.raises(UsageError, match="no example of label_20 class.*state the tree in the features"):
        hierarchy_of_dataset(datasets.DatasetDict(renamed))


def test_rows_that_contradict_the_stated_tree_are_refused(subset):
    dataset = datasets.load_dataset(str(subset))
    wrong = dataset["validation"].map(lambda row: {"label_20": 0 if row["label_82"] == 22 else row["label_20"]})
    with pytest.raises(UsageError, match="1 label_82 class.*Extended_Revolved_Triangle.*under 'Standing: straight'"):
        hierarchy_of_dataset(datasets.DatasetDict(train=dataset["train"], validation=wrong))


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ('{"hierarchy_parent":"label_7","parents":[0]}', "names 'label_7' as its parent level"),
        ('{"hierarchy_parent":"coarse","parents":[0]}', "has 2 classes but its parent link gives 1"),
        ('{"hierarchy_parent":"coarse","parents":[0,2]}', "outside 0..1"),
        ('{"hierarchy_parent":"coarse"', "is not a parent link"),
    ],
)
def test_a_broken_stated_tree_is_a_clear_error(link, message):
    features = datasets.Features({"coarse": datasets.ClassLabel(names=["a", "b"]),
                                  "fine": datasets.ClassLabel(names=["c", "d"], id=link)})
    with pytest.raises(yoga82.labels.LabelTreeError, match=message):
        yoga82.label_tree(features)


def test_string_labels_in_validation_that_train_lacks_are_refused_before_any_work():
    dataset = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"label": ["cat", "dog", "cat"]}),
        validation=datasets.Dataset.from_dict({"label": ["dog", "cow"]}),
        test=datasets.Dataset.from_dict({"label": ["cat", "eel", "cow"]}),
    )
    with pytest.raises(UsageError, match=r"the validation split has label value\(s\) that train lacks: 'cow'"):
        find_labels(dataset, DataArguments(dataset_name="x", label_column="label"))
    dataset["validation"] = datasets.Dataset.from_dict({"label": ["dog"]})
    with pytest.raises(UsageError, match=r"the test split has label value\(s\) that train lacks: 'cow', 'eel'"):
        find_labels(dataset, DataArguments(dataset_name="x", label_column="label"))
    integers = datasets.DatasetDict(train=datasets.Dataset.from_dict({"y": [1, 2]}),
                                    validation=datasets.Dataset.from_dict({"y": [3]}))
    with pytest.raises(UsageError, match=r"validation split has y value\(s\) that train lacks: 3"):
        find_labels(integers, DataArguments(dataset_name="x", label_column="y"))


@pytest.mark.slow
def test_a_subset_trains_at_every_level_with_every_class(subset, tmp_path):
    train_main = load_script("train.py")["main"]
    for level, sizes in (("1", [6]), ("2", [6, 20]), ("3", [6, 20, 82]), ("all", [6, 20, 82])):
        output = tmp_path / f"level-{level}"
        train_main(tiny_args(subset, output, "--label_level", level))
        config = json.loads((output / "config.json").read_text())
        assert config["hierarchy_class_names"] == yoga82.hierarchy()["hierarchy_class_names"]
        assert config["hierarchy_parents"] == yoga82.hierarchy()["hierarchy_parents"]
        assert len(config["id2label"]) == sizes[-1]
        results = json.loads((output / "test_results.json").read_text())
        assert results["test_samples"] == 7
        tree = results["test_hierarchy"]
        assert tree["levels"] == list(yoga82.LEVELS[: len(sizes) if level != "all" else 3])
        assert sorted(tree["decodings"]) == ["heads", "path"]  # what a user reads; bench_hierarchy.py the rest
        if len(tree["levels"]) > 1:  # the decided paths are paths of the tree, by construction
            assert tree["decodings"]["path"]["path_consistency"] == 1.0
            card = (output / "README.md").read_text()
            assert "### Along the label tree" in card and "| heads | " in card and "| path | " in card


@pytest.mark.slow
@pytest.mark.skipif(not REAL_PHOTOS.is_dir(), reason="../shared/real-photos is absent")
def test_the_real_photos_prepare_and_train(tmp_path):
    folder = yoga82.prepare(REAL_PHOTOS, REAL_PHOTOS / "images", tmp_path / "real-photos", resize=40)
    dataset = datasets.load_dataset(str(folder))
    assert yoga82.label_tree(dataset["train"].features) == yoga82.hierarchy()
    assert sum(len(split) for split in dataset.values()) == 415
    output = tmp_path / "run"
    load_script("train.py")["main"](tiny_args(folder, output, "--label_level", "all", "--max_steps", "1"))
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["ViTYogaForHierarchicalClassification"]
    assert config["hierarchy_parents"] == yoga82.hierarchy()["hierarchy_parents"]
