"""The names a person reads: every class of Yoga-82 has one, kept with the labels (yoga82/labels.py) and carried in
a checkpoint's config.json, while pipelines keep returning the official class names."""

from __future__ import annotations

from conftest import save_tiny_checkpoint
from PIL import Image

from yoga82.labels import LABEL_6_NAMES, LABEL_20_NAMES, LABEL_82_NAMES, POSE_DISPLAY_NAMES, display_name, display_names

EVERY_NAME = LABEL_6_NAMES + LABEL_20_NAMES + LABEL_82_NAMES


def test_every_yoga82_class_has_a_display_name_a_person_reads():
    assert list(POSE_DISPLAY_NAMES) == LABEL_82_NAMES  # one per pose, in the release's order
    names = display_names(EVERY_NAME)
    for level in (LABEL_6_NAMES, LABEL_20_NAMES, LABEL_82_NAMES):
        shown = [names[name] for name in level]
        assert len(set(shown)) == len(level)  # no two classes of a level read the same
        assert all(text and "_" not in text and text == text.strip() and "  " not in text for text in shown)
    assert names["Tree_Pose_or_Vrksasana_"] == "Tree Pose (Vrksasana)"
    assert names["Standing: forward bend"] == "Standing: forward bend"
    assert all(text[0].isupper() for text in names.values())


def test_names_of_ones_own_folders_are_made_readable_the_same_way():
    assert display_name("Warrior_II_Pose_or_Virabhadrasana_II_") == "Warrior II Pose (Virabhadrasana II)"
    assert display_name("side_plank") == "side plank"
    assert display_name("Tree_Pose_or_Vrksasana_") == POSE_DISPLAY_NAMES["Tree_Pose_or_Vrksasana_"]


def test_pipelines_return_the_official_names_and_the_config_carries_the_display_names(tmp_path):
    from transformers import AutoConfig, pipeline

    from vit_yoga.torch_runtime import load_checkpoint_classifier

    folder = save_tiny_checkpoint(tmp_path / "joint")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.display_names == display_names(EVERY_NAME)
    photo = str(tmp_path / "photo.png")
    Image.new("RGB", (40, 30), "white").save(photo)
    answer = pipeline("hierarchical-image-classification", model=str(folder), trust_remote_code=True)(photo)
    assert all(node["label"] in LABEL_82_NAMES + LABEL_20_NAMES + LABEL_6_NAMES for node in answer["path"])
    flat = pipeline("image-classification", model=str(folder), trust_remote_code=True)(photo, top_k=3)
    assert all(c["label"] in LABEL_82_NAMES for c in flat)
    tree = load_checkpoint_classifier(str(folder), device="cpu").tree
    assert tree.display(answer["path"][-1]["label"]) == POSE_DISPLAY_NAMES[answer["path"][-1]["label"]]
