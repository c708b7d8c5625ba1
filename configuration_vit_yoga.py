"""Configuration of ViTYoga: a standard Vision Transformer (Dosovitskiy et al., 2021) with a label hierarchy.

This file ships with every checkpoint (``trust_remote_code``), so it imports only transformers.
Field names follow transformers' ``ViTConfig`` wherever the meaning is the same.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

PATCH_EMBEDDING_TYPES = ("standard", "conv_stem")

# How a joint model (one head per level) turns its heads into one distribution over the finest classes (see
# ``modeling_vit_yoga.tree_probabilities``): "finest" (the finest head alone), "product" (the product of the levels'
# probabilities along each leaf's path, renormalised over the leaves), "chain" (top-down, the chain rule: the coarsest
# head's probability times each finer head's probability renormalised among its siblings; the coarsest marginal is
# then the coarsest head's exactly). "chain" is the default: on a joint model's validation split it kept the finest
# head's top-1, had the lowest log-loss of the rules and raised the decided path's coarse levels (vit-yoga's
# docs/predictions.md; benchmarks/bench_hierarchy.py).
HIERARCHY_COMBINATIONS = ("finest", "product", "chain")
DEFAULT_HIERARCHY_COMBINATION = "chain"

# Named sizes from the ViT paper and DeiT (Ti), all with 16-pixel patches at 224 px, and their initialisation
# (std 0.02). ``vit-pico`` is ours: a model small enough to train on a laptop CPU in minutes (the out-of-the-box
# synthetic run uses it); at its width of 96, std 0.02 leaves it nearly linear for thousands of steps, so it starts
# from std 0.1, about 1/sqrt(96) (vit-yoga's docs/training.md measures the difference).
VIT_YOGA_PRESETS: dict[str, dict[str, int | float]] = {
    "vit-pico": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
                     image_size=64, patch_size=8, initializer_range=0.1),
    "vit-ti16": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-s16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-b16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "vit-l16": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


class ViTYogaConfig(PretrainedConfig):
    r"""Configuration of a [`ViTYogaModel`]; the defaults are ViT-Ti/16 at 224 px.

    The label hierarchy is data, not code: a checkpoint's ``config.json`` carries its own, written from the data set
    it was trained on (``yoga82.hierarchy()`` gives Yoga-82's), so this file knows no data set.

    Args:
        image_size, patch_size, num_channels, hidden_size, num_hidden_layers, num_attention_heads,
        intermediate_size, hidden_act, hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps,
        qkv_bias, initializer_range: as in transformers' ``ViTConfig``.
        drop_path_rate: the stochastic-depth rate of the last block (it grows linearly from 0 at the first).
        hierarchy_levels: the data set column of each level of the label hierarchy, coarsest first.
        hierarchy_class_names: the class names of each level, in label-id order.
        hierarchy_parents: for each level after the first, the id in the level above of each class's parent.
            All three empty (the default): no hierarchy, one flat set of labels.
        label_level: the column (one of ``hierarchy_levels``) that the single-head classifier predicts; its
            class names become ``id2label`` unless ``id2label`` is given. ``None`` for other data sets.
        init_lineage: the checkpoints this model was initialised from, oldest first (written by train.py).
        patch_embedding_type: "standard" (the ViT's patch projection, one strided convolution: weights port to
            and from transformers' and timm's ViT) or "conv_stem" (a stack of 3x3 stride-2 convolutions, Xiao et
            al. 2021: a small-data option, see vit-yoga's docs/training.md).
        hierarchy_combination: how a joint model (one head per level) combines its heads into tree-consistent
            probabilities, one of ``HIERARCHY_COMBINATIONS``; the default is the rule that measured best (vit-yoga's
            docs/predictions.md).
        display_names: the name a person reads for each class name (``{"Tree_Pose_or_Vrksasana_": "Tree Pose
            (Vrksasana)"}``), shown by the demo, the model card and predict; the class names stay the labels.
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
        patch_embedding_type: str = "standard",
        hierarchy_combination: str = DEFAULT_HIERARCHY_COMBINATION,
        display_names: dict[str, str] | None = None,
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
        self.hierarchy_levels = list(hierarchy_levels or [])
        self.hierarchy_class_names = [list(names) for names in (hierarchy_class_names or [])]
        self.hierarchy_parents = [[int(p) for p in parents] for parents in (hierarchy_parents or [])]
        self.label_level = label_level
        self.init_lineage = list(init_lineage or [])
        self.patch_embedding_type = patch_embedding_type
        self.hierarchy_combination = hierarchy_combination
        self.display_names = dict(display_names or {})
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
        if self.patch_embedding_type not in PATCH_EMBEDDING_TYPES:
            raise ValueError(
                f"ViTYogaConfig.patch_embedding_type {self.patch_embedding_type!r} is unknown; choose one of "
                f"{list(PATCH_EMBEDDING_TYPES)}."
            )
        power_of_two = self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0
        if self.patch_embedding_type == "conv_stem" and not power_of_two:
            raise ValueError(
                f"patch_embedding_type='conv_stem' reaches the patch grid by halving the image, so patch_size must be "
                f"a power of two (2, 4, 8, 16...), got {self.patch_size}."
            )
        if self.hierarchy_combination not in HIERARCHY_COMBINATIONS:
            raise ValueError(
                f"ViTYogaConfig.hierarchy_combination {self.hierarchy_combination!r} is unknown; choose one of "
                f"{list(HIERARCHY_COMBINATIONS)} (the default: {DEFAULT_HIERARCHY_COMBINATION!r})."
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


__all__ = [
    "DEFAULT_HIERARCHY_COMBINATION", "HIERARCHY_COMBINATIONS", "PATCH_EMBEDDING_TYPES", "VIT_YOGA_PRESETS",
    "ViTYogaConfig",
]
