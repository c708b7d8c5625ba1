"""Configuration of ViTYoga: a standard Vision Transformer (Dosovitskiy et al., 2021) with a label hierarchy.

This file ships with every checkpoint (``trust_remote_code``), so it imports only transformers.
Field names follow transformers' ``ViTConfig`` wherever the meaning is the same.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# The Yoga-82 hierarchy (Verma et al., CVPRW 2020). Ids are those of the release's yoga_train.txt /
# yoga_test.txt; the 82 names are the release's pose folder names, the 6 and 20 names are the paper's.
YOGA82_LABEL_6_NAMES = [
    'Standing', 'Sitting', 'Balancing', 'Inverted', 'Reclining', 'Wheel',
]
YOGA82_LABEL_20_NAMES = [
    'Standing: straight', 'Standing: forward bend', 'Standing: side bend', 'Standing: others',
    'Sitting: normal 1', 'Sitting: normal 2', 'Sitting: split', 'Sitting: forward bend',
    'Sitting: twist', 'Balancing: front', 'Balancing: side', 'Inverted: legs straight up',
    'Inverted: legs bend', 'Reclining: up facing', 'Reclining: down facing', 'Reclining: side facing',
    'Reclining: plank balance', 'Wheel: up facing', 'Wheel: down facing', 'Wheel: others',
]
YOGA82_LABEL_82_NAMES = [
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
# YOGA82_PARENT_OF_20[i] is the level-1 (6-class) id of level-2 class i.
YOGA82_PARENT_OF_20 = [
    0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4, 5, 5, 5,
]
# YOGA82_PARENT_OF_82[i] is the level-2 (20-class) id of pose i.
YOGA82_PARENT_OF_82 = [
    8, 5, 19, 4, 19, 17, 17, 18, 0, 14, 14, 9, 13, 5, 9, 16, 1, 1, 0, 10,
    14, 2, 2, 11, 9, 13, 16, 14, 4, 2, 5, 2, 11, 13, 7, 8, 1, 11, 14, 3,
    2, 4, 16, 17, 16, 12, 10, 8, 13, 7, 9, 12, 7, 9, 15, 10, 15, 4, 6, 4,
    1, 3, 3, 11, 11, 13, 13, 7, 0, 17, 17, 17, 5, 3, 3, 2, 6, 1, 17, 13,
    13, 2,
]

YOGA82_HIERARCHY_LEVELS = ["label_6", "label_20", "label_82"]

# Named sizes from the ViT paper and DeiT (Ti), all with 16-pixel patches at 224 px. ``vit-pico`` is ours:
# a model small enough to train on a laptop CPU in minutes (the out-of-the-box synthetic run uses it).
VIT_YOGA_PRESETS: dict[str, dict[str, int]] = {
    "vit-pico": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
                     image_size=64, patch_size=8),
    "vit-ti16": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-s16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-b16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "vit-l16": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


class ViTYogaConfig(PretrainedConfig):
    r"""Configuration of a [`ViTYogaModel`]; the defaults are ViT-Ti/16 at 224 px on Yoga-82's hierarchy.

    Args:
        image_size, patch_size, num_channels, hidden_size, num_hidden_layers, num_attention_heads,
        intermediate_size, hidden_act, hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps,
        qkv_bias, initializer_range: as in transformers' ``ViTConfig``.
        drop_path_rate: the stochastic-depth rate of the last block (it grows linearly from 0 at the first).
        hierarchy_levels: the data set column of each level of the label hierarchy, coarsest first.
        hierarchy_class_names: the class names of each level, in label-id order.
        hierarchy_parents: for each level after the first, the id in the level above of each class's parent.
            Pass ``hierarchy_levels=[]`` for a data set without a hierarchy.
        label_level: the column (one of ``hierarchy_levels``) that the single-head classifier predicts; its
            class names become ``id2label`` unless ``id2label`` is given. ``None`` for other data sets.
        init_lineage: the checkpoints this model was initialised from, oldest first (written by train.py).
    """

    model_type = "vit_yoga"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 192,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 3,
        intermediate_size: int = 768,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        initializer_range: float = 0.02,
        hierarchy_levels: list[str] | None = None,
        hierarchy_class_names: list[list[str]] | None = None,
        hierarchy_parents: list[list[int]] | None = None,
        label_level: str | None = None,
        init_lineage: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        if hierarchy_levels is None:  # Yoga-82's, unless the caller describes its own hierarchy
            hierarchy_levels = list(YOGA82_HIERARCHY_LEVELS)
            hierarchy_class_names = hierarchy_class_names or [
                list(YOGA82_LABEL_6_NAMES), list(YOGA82_LABEL_20_NAMES), list(YOGA82_LABEL_82_NAMES)
            ]
            hierarchy_parents = hierarchy_parents or [list(YOGA82_PARENT_OF_20), list(YOGA82_PARENT_OF_82)]
        self.hierarchy_levels = list(hierarchy_levels)
        self.hierarchy_class_names = [list(names) for names in (hierarchy_class_names or [])]
        self.hierarchy_parents = [[int(p) for p in parents] for parents in (hierarchy_parents or [])]
        self.label_level = label_level
        self.init_lineage = list(init_lineage or [])
        if label_level is not None and "id2label" not in kwargs and "num_labels" not in kwargs:
            if label_level in self.hierarchy_levels:
                names = self.hierarchy_class_names[self.hierarchy_levels.index(label_level)]
                kwargs["id2label"] = dict(enumerate(names))
                kwargs["label2id"] = {name: i for i, name in enumerate(names)}
        super().__init__(**kwargs)
        self.validate_vit_yoga()

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> ViTYogaConfig:
        """A config of one of ``VIT_YOGA_PRESETS`` (``vit-ti16``, ``vit-s16``, ...); kwargs override it."""
        if name not in VIT_YOGA_PRESETS:
            raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(VIT_YOGA_PRESETS)}.")
        return cls(**{**VIT_YOGA_PRESETS[name], **kwargs})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def hierarchy_sizes(self) -> list[int]:
        return [len(names) for names in self.hierarchy_class_names]

    def validate_vit_yoga(self) -> None:
        """Raise a ``ValueError`` naming the field and the fix for a config no model can be built from."""
        for name in ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ViTYogaConfig.{name} must be a positive integer, got {value!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTYogaConfig.image_size ({self.image_size}) is not divisible by patch_size "
                f"({self.patch_size}); choose an image size that is a multiple of the patch size."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ViTYogaConfig.hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); each head gets hidden_size / num_attention_heads channels."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"ViTYogaConfig.{name} must be in [0, 1), got {value!r}.")
        levels, names, parents = self.hierarchy_levels, self.hierarchy_class_names, self.hierarchy_parents
        if len(names) != len(levels) or len(set(levels)) != len(levels):
            raise ValueError(
                f"ViTYogaConfig.hierarchy_class_names has {len(names)} levels but hierarchy_levels names "
                f"{len(levels)} ({levels}); give one list of class names per distinct level."
            )
        if levels and len(parents) != len(levels) - 1:
            raise ValueError(
                f"ViTYogaConfig.hierarchy_parents needs one list per level after the first "
                f"({len(levels) - 1}), got {len(parents)}."
            )
        for level, level_names in zip(levels, names, strict=True):
            if not level_names:
                raise ValueError(f"Hierarchy level {level!r} has no classes; give its class names.")
        for depth, level_parents in enumerate(parents, start=1):
            n_coarse, n_fine = len(names[depth - 1]), len(names[depth])
            if len(level_parents) != n_fine:
                raise ValueError(
                    f"ViTYogaConfig.hierarchy_parents[{depth - 1}] gives {len(level_parents)} parents for level "
                    f"{levels[depth]!r}, which has {n_fine} classes; give one parent id per class."
                )
            bad = [(i, p) for i, p in enumerate(level_parents) if not 0 <= p < n_coarse]
            if bad:
                child, parent = bad[0]
                raise ValueError(
                    f"Hierarchy level {levels[depth]!r}: class {child} has parent {parent}, but level "
                    f"{levels[depth - 1]!r} has only {n_coarse} classes (ids 0..{n_coarse - 1})."
                )
            orphans = sorted(set(range(n_coarse)) - set(level_parents))
            if orphans:
                raise ValueError(
                    f"Hierarchy level {levels[depth - 1]!r}: classes {orphans} have no child in level "
                    f"{levels[depth]!r}; every coarse class needs at least one fine class."
                )
        if self.label_level is not None:
            if self.label_level not in levels:
                raise ValueError(
                    f"ViTYogaConfig.label_level {self.label_level!r} is not a hierarchy level; "
                    f"choose one of {levels} or None."
                )
            expected = len(names[levels.index(self.label_level)])
            if self.num_labels != expected:
                raise ValueError(
                    f"ViTYogaConfig has {self.num_labels} labels but level {self.label_level!r} has {expected} "
                    f"classes; drop num_labels/id2label or make them match the level."
                )

    def ancestors(self, level: str) -> list[list[int]]:
        """For each class of ``level``, its ids in every level from the first down to ``level`` itself."""
        depth = self.hierarchy_levels.index(level)
        chains = [[i] for i in range(len(self.hierarchy_class_names[depth]))]
        for parents in reversed(self.hierarchy_parents[:depth]):
            chains = [[parents[chain[0]], *chain] for chain in chains]
        return chains


__all__ = ["ViTYogaConfig", "VIT_YOGA_PRESETS"]
