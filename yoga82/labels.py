"""The Yoga-82 label hierarchy (Verma et al., CVPRW 2020): 6 body positions -> 20 variations -> 82 poses.

This is the one home of Yoga-82's labels. The data set owns them: the builder, the release parser and the synthetic
poses read them here, and a data set written by this package carries them as ``ClassLabel`` names, each fine level's
parents in its ``ClassLabel``'s ``id`` (``parent_link``; see ``label_tree``). A model learns them from the data
(train.py reads the names and parents off the data set's features) and stores them in its own ``config.json``, so
neither the model code nor a checkpoint depends on this file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# Ids are those of the release's yoga_train.txt / yoga_test.txt; the 82 names are the release's pose folder
# names, the 6 and 20 names are the paper's.
LABEL_6_NAMES = [
    'Standing', 'Sitting', 'Balancing', 'Inverted', 'Reclining', 'Wheel',
]
LABEL_20_NAMES = [
    'Standing: straight', 'Standing: forward bend', 'Standing: side bend', 'Standing: others',
    'Sitting: normal 1', 'Sitting: normal 2', 'Sitting: split', 'Sitting: forward bend',
    'Sitting: twist', 'Balancing: front', 'Balancing: side', 'Inverted: legs straight up',
    'Inverted: legs bend', 'Reclining: up facing', 'Reclining: down facing', 'Reclining: side facing',
    'Reclining: plank balance', 'Wheel: up facing', 'Wheel: down facing', 'Wheel: others',
]
LABEL_82_NAMES = [
    'Akarna_Dhanurasana',
    "Bharadvaja's_Twist_pose_or_Bharadvajasana_I_",
    'Boat_Pose_or_Paripurna_Navasana_',
    'Bound_Angle_Pose_or_Baddha_Konasana_',
    'Bow_Pose_or_Dhanurasana_',
    'Bridge_Pose_or_Setu_Bandha_Sarvangasana_',
    'Camel_Pose_or_Ustrasana_',
    'Cat_Cow_Pose_or_Marjaryasana_',
    'Chair_Pose_or_Utkatasana_',
    'Child_Pose_or_Balasana_',
    'Cobra_Pose_or_Bhujangasana_',
    'Cockerel_Pose',
    'Corpse_Pose_or_Savasana_',
    'Cow_Face_Pose_or_Gomukhasana_',
    'Crane_(Crow)_Pose_or_Bakasana_',
    'Dolphin_Plank_Pose_or_Makara_Adho_Mukha_Svanasana_',
    'Dolphin_Pose_or_Ardha_Pincha_Mayurasana_',
    'Downward-Facing_Dog_pose_or_Adho_Mukha_Svanasana_',
    'Eagle_Pose_or_Garudasana_',
    'Eight-Angle_Pose_or_Astavakrasana_',
    'Extended_Puppy_Pose_or_Uttana_Shishosana_',
    'Extended_Revolved_Side_Angle_Pose_or_Utthita_Parsvakonasana_',
    'Extended_Revolved_Triangle_Pose_or_Utthita_Trikonasana_',
    'Feathered_Peacock_Pose_or_Pincha_Mayurasana_',
    'Firefly_Pose_or_Tittibhasana_',
    'Fish_Pose_or_Matsyasana_',
    'Four-Limbed_Staff_Pose_or_Chaturanga_Dandasana_',
    'Frog_Pose_or_Bhekasana',
    'Garland_Pose_or_Malasana_',
    'Gate_Pose_or_Parighasana_',
    'Half_Lord_of_the_Fishes_Pose_or_Ardha_Matsyendrasana_',
    'Half_Moon_Pose_or_Ardha_Chandrasana_',
    'Handstand_pose_or_Adho_Mukha_Vrksasana_',
    'Happy_Baby_Pose_or_Ananda_Balasana_',
    'Head-to-Knee_Forward_Bend_pose_or_Janu_Sirsasana_',
    'Heron_Pose_or_Krounchasana_',
    'Intense_Side_Stretch_Pose_or_Parsvottanasana_',
    'Legs-Up-the-Wall_Pose_or_Viparita_Karani_',
    'Locust_Pose_or_Salabhasana_',
    'Lord_of_the_Dance_Pose_or_Natarajasana_',
    'Low_Lunge_pose_or_Anjaneyasana_',
    'Noose_Pose_or_Pasasana_',
    'Peacock_Pose_or_Mayurasana_',
    'Pigeon_Pose_or_Kapotasana_',
    'Plank_Pose_or_Kumbhakasana_',
    'Plow_Pose_or_Halasana_',
    'Pose_Dedicated_to_the_Sage_Koundinya_or_Eka_Pada_Koundinyanasana_I_and_II',
    'Rajakapotasana',
    'Reclining_Hand-to-Big-Toe_Pose_or_Supta_Padangusthasana_',
    'Revolved_Head-to-Knee_Pose_or_Parivrtta_Janu_Sirsasana_',
    'Scale_Pose_or_Tolasana_',
    'Scorpion_pose_or_vrischikasana',
    'Seated_Forward_Bend_pose_or_Paschimottanasana_',
    'Shoulder-Pressing_Pose_or_Bhujapidasana_',
    'Side-Reclining_Leg_Lift_pose_or_Anantasana_',
    'Side_Crane_(Crow)_Pose_or_Parsva_Bakasana_',
    'Side_Plank_Pose_or_Vasisthasana_',
    'Sitting pose 1 (normal)',
    'Split pose',
    'Staff_Pose_or_Dandasana_',
    'Standing_Forward_Bend_pose_or_Uttanasana_',
    'Standing_Split_pose_or_Urdhva_Prasarita_Eka_Padasana_',
    'Standing_big_toe_hold_pose_or_Utthita_Padangusthasana',
    'Supported_Headstand_pose_or_Salamba_Sirsasana_',
    'Supported_Shoulderstand_pose_or_Salamba_Sarvangasana_',
    'Supta_Baddha_Konasana_',
    'Supta_Virasana_Vajrasana',
    'Tortoise_Pose',
    'Tree_Pose_or_Vrksasana_',
    'Upward_Bow_(Wheel)_Pose_or_Urdhva_Dhanurasana_',
    'Upward_Facing_Two-Foot_Staff_Pose_or_Dwi_Pada_Viparita_Dandasana_',
    'Upward_Plank_Pose_or_Purvottanasana_',
    'Virasana_or_Vajrasana',
    'Warrior_III_Pose_or_Virabhadrasana_III_',
    'Warrior_II_Pose_or_Virabhadrasana_II_',
    'Warrior_I_Pose_or_Virabhadrasana_I_',
    'Wide-Angle_Seated_Forward_Bend_pose_or_Upavistha_Konasana_',
    'Wide-Legged_Forward_Bend_pose_or_Prasarita_Padottanasana_',
    'Wild_Thing_pose_or_Camatkarasana_',
    'Wind_Relieving_pose_or_Pawanmuktasana',
    'Yogic_sleep_pose',
    'viparita_virabhadrasana_or_reverse_warrior_pose',
]
# PARENT_OF_20[i] is the level-1 (6-class) id of level-2 class i.
PARENT_OF_20 = [
    0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5,
]
# PARENT_OF_82[i] is the level-2 (20-class) id of pose i.
PARENT_OF_82 = [
    8, 5, 19, 4, 19, 17, 17, 18, 0, 14, 14, 9, 13, 5, 9, 16, 1, 1, 0, 10,
    14, 2, 2, 11, 9, 13, 16, 14, 4, 2, 5, 2, 11, 13, 7, 8, 1, 11, 14, 3,
    2, 4, 16, 17, 16, 12, 10, 8, 13, 7, 9, 12, 7, 9, 15, 10, 15, 4, 6, 4,
    1, 3, 3, 11, 11, 13, 13, 7, 0, 17, 17, 17, 5, 3, 3, 2, 6, 1, 17, 13,
    13, 2,
]

# What a person reads for each pose (the demo, the model card, predict's display columns): its English name with the
# Sanskrit one in brackets. The release's names above stay the labels (what the data set stores and pipelines
# return); the body positions' and variations' names read well as they are.
POSE_DISPLAY_NAMES = {
    'Akarna_Dhanurasana': 'Archer Pose (Akarna Dhanurasana)',
    "Bharadvaja's_Twist_pose_or_Bharadvajasana_I_": "Bharadvaja's Twist Pose (Bharadvajasana I)",
    'Boat_Pose_or_Paripurna_Navasana_': 'Boat Pose (Paripurna Navasana)',
    'Bound_Angle_Pose_or_Baddha_Konasana_': 'Bound Angle Pose (Baddha Konasana)',
    'Bow_Pose_or_Dhanurasana_': 'Bow Pose (Dhanurasana)',
    'Bridge_Pose_or_Setu_Bandha_Sarvangasana_': 'Bridge Pose (Setu Bandha Sarvangasana)',
    'Camel_Pose_or_Ustrasana_': 'Camel Pose (Ustrasana)',
    'Cat_Cow_Pose_or_Marjaryasana_': 'Cat Cow Pose (Marjaryasana)',
    'Chair_Pose_or_Utkatasana_': 'Chair Pose (Utkatasana)',
    'Child_Pose_or_Balasana_': 'Child Pose (Balasana)',
    'Cobra_Pose_or_Bhujangasana_': 'Cobra Pose (Bhujangasana)',
    'Cockerel_Pose': 'Cockerel Pose (Kukkutasana)',
    'Corpse_Pose_or_Savasana_': 'Corpse Pose (Savasana)',
    'Cow_Face_Pose_or_Gomukhasana_': 'Cow Face Pose (Gomukhasana)',
    'Crane_(Crow)_Pose_or_Bakasana_': 'Crane or Crow Pose (Bakasana)',
    'Dolphin_Plank_Pose_or_Makara_Adho_Mukha_Svanasana_': 'Dolphin Plank Pose (Makara Adho Mukha Svanasana)',
    'Dolphin_Pose_or_Ardha_Pincha_Mayurasana_': 'Dolphin Pose (Ardha Pincha Mayurasana)',
    'Downward-Facing_Dog_pose_or_Adho_Mukha_Svanasana_': 'Downward-Facing Dog Pose (Adho Mukha Svanasana)',
    'Eagle_Pose_or_Garudasana_': 'Eagle Pose (Garudasana)',
    'Eight-Angle_Pose_or_Astavakrasana_': 'Eight-Angle Pose (Astavakrasana)',
    'Extended_Puppy_Pose_or_Uttana_Shishosana_': 'Extended Puppy Pose (Uttana Shishosana)',
    'Extended_Revolved_Side_Angle_Pose_or_Utthita_Parsvakonasana_':
        'Extended Revolved Side Angle Pose (Utthita Parsvakonasana)',
    'Extended_Revolved_Triangle_Pose_or_Utthita_Trikonasana_': 'Extended Revolved Triangle Pose (Utthita Trikonasana)',
    'Feathered_Peacock_Pose_or_Pincha_Mayurasana_': 'Feathered Peacock Pose (Pincha Mayurasana)',
    'Firefly_Pose_or_Tittibhasana_': 'Firefly Pose (Tittibhasana)',
    'Fish_Pose_or_Matsyasana_': 'Fish Pose (Matsyasana)',
    'Four-Limbed_Staff_Pose_or_Chaturanga_Dandasana_': 'Four-Limbed Staff Pose (Chaturanga Dandasana)',
    'Frog_Pose_or_Bhekasana': 'Frog Pose (Bhekasana)',
    'Garland_Pose_or_Malasana_': 'Garland Pose (Malasana)',
    'Gate_Pose_or_Parighasana_': 'Gate Pose (Parighasana)',
    'Half_Lord_of_the_Fishes_Pose_or_Ardha_Matsyendrasana_': 'Half Lord of the Fishes Pose (Ardha Matsyendrasana)',
    'Half_Moon_Pose_or_Ardha_Chandrasana_': 'Half Moon Pose (Ardha Chandrasana)',
    'Handstand_pose_or_Adho_Mukha_Vrksasana_': 'Handstand Pose (Adho Mukha Vrksasana)',
    'Happy_Baby_Pose_or_Ananda_Balasana_': 'Happy Baby Pose (Ananda Balasana)',
    'Head-to-Knee_Forward_Bend_pose_or_Janu_Sirsasana_': 'Head-to-Knee Forward Bend Pose (Janu Sirsasana)',
    'Heron_Pose_or_Krounchasana_': 'Heron Pose (Krounchasana)',
    'Intense_Side_Stretch_Pose_or_Parsvottanasana_': 'Intense Side Stretch Pose (Parsvottanasana)',
    'Legs-Up-the-Wall_Pose_or_Viparita_Karani_': 'Legs-Up-the-Wall Pose (Viparita Karani)',
    'Locust_Pose_or_Salabhasana_': 'Locust Pose (Salabhasana)',
    'Lord_of_the_Dance_Pose_or_Natarajasana_': 'Lord of the Dance Pose (Natarajasana)',
    'Low_Lunge_pose_or_Anjaneyasana_': 'Low Lunge Pose (Anjaneyasana)',
    'Noose_Pose_or_Pasasana_': 'Noose Pose (Pasasana)',
    'Peacock_Pose_or_Mayurasana_': 'Peacock Pose (Mayurasana)',
    'Pigeon_Pose_or_Kapotasana_': 'Pigeon Pose (Kapotasana)',
    'Plank_Pose_or_Kumbhakasana_': 'Plank Pose (Kumbhakasana)',
    'Plow_Pose_or_Halasana_': 'Plow Pose (Halasana)',
    'Pose_Dedicated_to_the_Sage_Koundinya_or_Eka_Pada_Koundinyanasana_I_and_II':
        'Pose Dedicated to the Sage Koundinya (Eka Pada Koundinyanasana I and II)',
    'Rajakapotasana': 'King Pigeon Pose (Rajakapotasana)',
    'Reclining_Hand-to-Big-Toe_Pose_or_Supta_Padangusthasana_':
        'Reclining Hand-to-Big-Toe Pose (Supta Padangusthasana)',
    'Revolved_Head-to-Knee_Pose_or_Parivrtta_Janu_Sirsasana_': 'Revolved Head-to-Knee Pose (Parivrtta Janu Sirsasana)',
    'Scale_Pose_or_Tolasana_': 'Scale Pose (Tolasana)',
    'Scorpion_pose_or_vrischikasana': 'Scorpion Pose (Vrischikasana)',
    'Seated_Forward_Bend_pose_or_Paschimottanasana_': 'Seated Forward Bend Pose (Paschimottanasana)',
    'Shoulder-Pressing_Pose_or_Bhujapidasana_': 'Shoulder-Pressing Pose (Bhujapidasana)',
    'Side-Reclining_Leg_Lift_pose_or_Anantasana_': 'Side-Reclining Leg Lift Pose (Anantasana)',
    'Side_Crane_(Crow)_Pose_or_Parsva_Bakasana_': 'Side Crane or Crow Pose (Parsva Bakasana)',
    'Side_Plank_Pose_or_Vasisthasana_': 'Side Plank Pose (Vasisthasana)',
    'Sitting pose 1 (normal)': 'Sitting Pose 1 (normal)',
    'Split pose': 'Split Pose',
    'Staff_Pose_or_Dandasana_': 'Staff Pose (Dandasana)',
    'Standing_Forward_Bend_pose_or_Uttanasana_': 'Standing Forward Bend Pose (Uttanasana)',
    'Standing_Split_pose_or_Urdhva_Prasarita_Eka_Padasana_': 'Standing Split Pose (Urdhva Prasarita Eka Padasana)',
    'Standing_big_toe_hold_pose_or_Utthita_Padangusthasana': 'Standing big toe hold Pose (Utthita Padangusthasana)',
    'Supported_Headstand_pose_or_Salamba_Sirsasana_': 'Supported Headstand Pose (Salamba Sirsasana)',
    'Supported_Shoulderstand_pose_or_Salamba_Sarvangasana_': 'Supported Shoulderstand Pose (Salamba Sarvangasana)',
    'Supta_Baddha_Konasana_': 'Reclining Bound Angle Pose (Supta Baddha Konasana)',
    'Supta_Virasana_Vajrasana': 'Reclining Hero Pose (Supta Virasana)',
    'Tortoise_Pose': 'Tortoise Pose (Kurmasana)',
    'Tree_Pose_or_Vrksasana_': 'Tree Pose (Vrksasana)',
    'Upward_Bow_(Wheel)_Pose_or_Urdhva_Dhanurasana_': 'Upward Bow or Wheel Pose (Urdhva Dhanurasana)',
    'Upward_Facing_Two-Foot_Staff_Pose_or_Dwi_Pada_Viparita_Dandasana_':
        'Upward Facing Two-Foot Staff Pose (Dwi Pada Viparita Dandasana)',
    'Upward_Plank_Pose_or_Purvottanasana_': 'Upward Plank Pose (Purvottanasana)',
    'Virasana_or_Vajrasana': 'Hero Pose (Virasana or Vajrasana)',
    'Warrior_III_Pose_or_Virabhadrasana_III_': 'Warrior III Pose (Virabhadrasana III)',
    'Warrior_II_Pose_or_Virabhadrasana_II_': 'Warrior II Pose (Virabhadrasana II)',
    'Warrior_I_Pose_or_Virabhadrasana_I_': 'Warrior I Pose (Virabhadrasana I)',
    'Wide-Angle_Seated_Forward_Bend_pose_or_Upavistha_Konasana_':
        'Wide-Angle Seated Forward Bend Pose (Upavistha Konasana)',
    'Wide-Legged_Forward_Bend_pose_or_Prasarita_Padottanasana_':
        'Wide-Legged Forward Bend Pose (Prasarita Padottanasana)',
    'Wild_Thing_pose_or_Camatkarasana_': 'Wild Thing Pose (Camatkarasana)',
    'Wind_Relieving_pose_or_Pawanmuktasana': 'Wind Relieving Pose (Pawanmuktasana)',
    'Yogic_sleep_pose': 'Yogic Sleep Pose',
    'viparita_virabhadrasana_or_reverse_warrior_pose': 'Reverse Warrior Pose (Viparita Virabhadrasana)',
}

LEVELS = ("label_6", "label_20", "label_82")  # the data set's label columns, coarsest first


def hierarchy() -> dict[str, Any]:
    """The hierarchy as ViTYogaConfig's fields (``hierarchy_levels``, ``hierarchy_class_names``,
    ``hierarchy_parents``): ``ViTYogaConfig(**yoga82.hierarchy(), label_level="label_82")``; the names people read
    are ``display_names(...)`` of its class names."""
    return {
        "hierarchy_levels": list(LEVELS),
        "hierarchy_class_names": [list(LABEL_6_NAMES), list(LABEL_20_NAMES), list(LABEL_82_NAMES)],
        "hierarchy_parents": [list(PARENT_OF_20), list(PARENT_OF_82)],
    }


def display_name(name: str) -> str:
    """The name a person reads for a class: Yoga-82's own (``POSE_DISPLAY_NAMES``), else the class name made
    readable as the release's names are (``Tree_Pose_or_Vrksasana_`` -> ``Tree Pose (Vrksasana)``), so that a data
    set of one's own photos, named by its folders, reads well too."""
    if name in POSE_DISPLAY_NAMES:
        return POSE_DISPLAY_NAMES[name]
    words = name.replace("_", " ").strip()
    english, _, other = words.partition(" or ")
    return f"{english.strip()} ({other.strip()})" if other.strip() else " ".join(words.split())


def display_names(names: Sequence[str]) -> dict[str, str]:
    """``display_name`` of each class name (ViTYogaConfig's ``display_names``)."""
    return {name: display_name(name) for name in names}



# The label tree travels in the data set's features: each finer level's ClassLabel carries, in its ``id`` string,
# the column of the level above and the parent id of each of its classes. ``id`` is the one free-form field of a
# datasets feature that datasets 5.x keeps everywhere the features go: the Parquet schema metadata and the card's
# ``dataset_info`` YAML (so ``load_dataset(folder)`` and the Hub's loader read it back), ``push_to_hub``,
# ``save_to_disk``, map/select/filter. A card-only YAML key or DatasetInfo.description is dropped by
# ``load_dataset(folder)`` (measured: tests/test_label_tree.py).
PARENT_LINK_KEY = "hierarchy_parent"


def parent_link(parent_column: str, parents: Sequence[int]) -> str:
    """The ``ClassLabel.id`` of a level whose class ``c`` has parent ``parents[c]`` in column ``parent_column``."""
    return json.dumps({PARENT_LINK_KEY: parent_column, "parents": [int(p) for p in parents]}, separators=(",", ":"))


class LabelTreeError(ValueError):
    """A data set's features state a label tree that does not hold together (what is wrong and where)."""


def label_tree(features: Mapping[str, Any]) -> dict[str, Any]:
    """The label tree a data set's features state, as ViTYogaConfig's fields (``hierarchy_levels``,
    ``hierarchy_class_names``, ``hierarchy_parents``), or ``{}`` when no ClassLabel carries a ``parent_link``.

    ``features`` is a ``datasets.Features`` (any mapping of column -> feature with ``names`` and ``id`` works, so this
    module need not import datasets). The levels form one chain, coarsest first; raises LabelTreeError when the
    links do not (an unknown parent column, a wrong number of parents, an id out of range, a branching or a cycle).
    """
    def names_of(column: str) -> list[str] | None:
        names = getattr(features.get(column), "names", None)
        return list(names) if names is not None else None

    links: dict[str, tuple[str, list[int]]] = {}
    for column, feature in features.items():
        text = getattr(feature, "id", None)
        if names_of(column) is None or not isinstance(text, str) or PARENT_LINK_KEY not in text:
            continue
        try:
            link = json.loads(text)
            parent_column, parents = str(link[PARENT_LINK_KEY]), [int(p) for p in link["parents"]]
        except (ValueError, KeyError, TypeError) as error:
            raise LabelTreeError(
                f"the ClassLabel id of column {column!r} is not a parent link ({error}): {text[:80]}"
            ) from None
        parent_names = names_of(parent_column)
        if parent_names is None:
            raise LabelTreeError(f"column {column!r} names {parent_column!r} as its parent level, which is not a "
                                 "ClassLabel column of the data set")
        if len(parents) != len(names_of(column)):
            raise LabelTreeError(f"column {column!r} has {len(names_of(column))} classes but its parent link gives "
                                 f"{len(parents)} parents")
        if any(not 0 <= p < len(parent_names) for p in parents):
            raise LabelTreeError(f"column {column!r}'s parent link holds an id outside 0..{len(parent_names) - 1}, "
                                 f"the classes of {parent_column!r}")
        links[column] = (parent_column, parents)
    if not links:
        return {}
    children: dict[str, str] = {}
    for column, (parent_column, _) in links.items():
        if parent_column in children:
            raise LabelTreeError(f"columns {children[parent_column]!r} and {column!r} both name {parent_column!r} as "
                                 "their parent level; the levels must form one chain")
        children[parent_column] = column
    roots = [column for column in children if column not in links]
    if len(roots) != 1:
        raise LabelTreeError(f"the parent links form {len(roots)} chains or a cycle, not one chain of levels")
    levels = [roots[0]]
    while levels[-1] in children:
        levels.append(children[levels[-1]])
    if len(levels) != len(links) + 1:
        raise LabelTreeError("the parent links form a cycle besides the chain from " + repr(roots[0]))
    return {
        "hierarchy_levels": levels,
        "hierarchy_class_names": [names_of(level) for level in levels],
        "hierarchy_parents": [links[level][1] for level in levels[1:]],
    }
