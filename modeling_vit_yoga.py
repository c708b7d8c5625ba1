"""ViTYoga: the standard Vision Transformer (Dosovitskiy et al., 2021) as a Hugging Face model.

This file ships with every checkpoint (``trust_remote_code``), so it imports only torch and transformers. It is the
textbook ViT, numerically equal to transformers' ``ViTModel`` and timm's ``VisionTransformer`` once their weights are
ported (see ``convert_vit_checkpoint.py``): a strided-convolution patch embedding, a learned class token prepended
at position 0, learned position embeddings, pre-norm blocks with a fused qkv projection split into heads of width
``hidden_size / num_attention_heads``, softmax over the keys scaled by ``1 / sqrt(head width)``, a GELU MLP,
stochastic depth, and a final LayerNorm whose class-token output feeds the classifier. Attention runs through
transformers' attention interface, so ``attn_implementation`` may be "eager", "sdpa" (the default),
"flash_attention_2", "flex_attention" or any kernel registered there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.image_utils import PILImageResampling
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput, ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import logging

if TYPE_CHECKING:
    from transformers import ViTImageProcessor

try:  # as a package (a Hub checkpoint loaded with trust_remote_code)
    from .configuration_vit_yoga import HIERARCHY_COMBINATIONS, ViTYogaConfig
except ImportError:  # as a plain module (this repository)
    from configuration_vit_yoga import HIERARCHY_COMBINATIONS, ViTYogaConfig

logger = logging.get_logger(__name__)


class ViTYogaPatchEmbeddings(nn.Module):
    """Cuts the image into non-overlapping patches and projects each: one strided convolution, no Python loops."""

    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__()
        self.num_channels = config.num_channels
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_channels(pixel_values, self.num_channels)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


def check_channels(pixel_values: torch.Tensor, num_channels: int) -> None:
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"ViTYoga expects pixel_values of shape (batch, {num_channels}, height, width), got "
            f"{tuple(pixel_values.shape)}; convert images to {num_channels}-channel (e.g. RGB) tensors with the "
            "checkpoint's image processor."
        )


class ViTYogaConvStem(nn.Module):
    """A convolutional stem in place of the patch projection (Xiao et al., NeurIPS 2021, "Early convolutions help
    transformers see better"): log2(patch_size) 3x3 stride-2 convolutions, each normalised and followed by a ReLU,
    widening to ``hidden_size``, then a 1x1 projection; the same token grid as the patch embedding.

    Each convolution is instance-normalised where Xiao et al. use BatchNorm. Why a stem, why that normalisation,
    and what each choice measured: vit-yoga's docs/training.md ("Recipes"), the one place that reasoning is kept.
    """

    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__()
        self.num_channels = config.num_channels
        depth = config.patch_size.bit_length() - 1
        widths = [max(config.hidden_size // 2 ** (depth - 1 - i), 8) for i in range(depth)]
        layers: list[nn.Module] = []
        channels = config.num_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(width, width),  # one group per channel: instance normalisation, per image
                nn.ReLU(),
            ]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.projection = nn.Conv2d(channels, config.hidden_size, kernel_size=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_channels(pixel_values, self.num_channels)
        return self.projection(self.stem(pixel_values)).flatten(2).transpose(1, 2)


class ViTYogaEmbeddings(nn.Module):
    """Patch embeddings, the class token prepended at position 0, and learned position embeddings."""

    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        stems = {"standard": ViTYogaPatchEmbeddings, "conv_stem": ViTYogaConvStem}
        self.patch_embeddings = stems[config.patch_embedding_type](config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.patch_size = config.patch_size
        self.image_size = config.image_size

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """The position embeddings resampled (bicubic) to a ``height`` x ``width`` image; the class token's kept."""
        grid = self.image_size // self.patch_size
        new_height, new_width = height // self.patch_size, width // self.patch_size
        if (new_height, new_width) == (grid, grid) and not torch.jit.is_tracing():
            return self.position_embeddings
        class_pos, patch_pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(), size=(new_height, new_width), mode="bicubic", align_corners=False
        ).to(class_pos.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, new_height * new_width, dim)
        return torch.cat((class_pos, patch_pos), dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        if not interpolate_pos_encoding and (height != self.image_size or width != self.image_size):
            raise ValueError(
                f"Input image size ({height}x{width}) does not match the model's ({self.image_size}x{self.image_size});"
                " resize the images (the checkpoint's image processor does) or pass interpolate_pos_encoding=True."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Input image size ({height}x{width}) is not a multiple of the patch size ({self.patch_size})."
            )
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(embeddings.shape[0], -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        if interpolate_pos_encoding:
            embeddings = embeddings + self.interpolate_pos_encoding(height, width)
        else:
            embeddings = embeddings + self.position_embeddings
        return self.dropout(embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention on (batch, heads, tokens, head_dim): softmax over the keys (the last axis)."""
    attn_weights = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class ViTYogaAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, as in timm."""

    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False  # read by transformers' attention kernels
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, num_queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``num_queries``: attend from the first tokens only (every token is still a key and a value)."""
        batch_size, num_tokens, width = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, num_tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, tokens, head_dim)
        if num_queries is not None:
            query = query[:, :, :num_queries]

        implementation = self.config._attn_implementation or "sdpa"
        if output_attentions and implementation != "eager":
            # Only the eager path materialises the attention matrix; fused kernels never do.
            logger.warning_once(
                f"attn_implementation={implementation!r} cannot return attention maps; using eager attention for "
                "calls with output_attentions=True (load with attn_implementation='eager' to silence this)."
            )
            implementation = "eager"
        attention = eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        attn_output, attn_weights = attention(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        attn_output = self.proj(attn_output.reshape(batch_size, query.shape[2], width))
        return attn_output, attn_weights if output_attentions else None


class ViTYogaMLP(nn.Module):
    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class ViTYogaDropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drops a sample's whole residual branch with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(mask_shape).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class ViTYogaLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ViTYogaConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTYogaAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTYogaMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = ViTYogaDropPath(drop_path_rate)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, num_queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``num_queries``: compute only the first tokens' outputs (the class token's, for the last block)."""
        attn_output, attn_weights = self.attention(self.layernorm_before(hidden_states), output_attentions, num_queries)
        if num_queries is not None:
            hidden_states = hidden_states[:, :num_queries]
        hidden_states = hidden_states + self.drop_path(self.dropout(attn_output))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.dropout(mlp_output))
        return hidden_states, attn_weights


def per_example_losses(
    level_logits: tuple[torch.Tensor, ...], labels: torch.Tensor, levels: list[str] | None = None
) -> list[torch.Tensor]:
    """Each level's cross-entropy per example, in fp32.

    ``labels`` holds either class ids, shape (batch,) for one head or (batch, num_levels), or class probabilities
    (soft targets: label smoothing, MixUp, CutMix), shape (batch, sum of the levels' class counts), the levels'
    distributions side by side, coarsest first.
    """
    sizes = [logits.shape[-1] for logits in level_logits]
    labels = labels.to(level_logits[0].device)
    if labels.is_floating_point():
        if labels.ndim != 2 or labels.shape[1] != sum(sizes):
            raise ValueError(
                f"Soft labels must have shape (batch, {sum(sizes)}): class probabilities for each level "
                f"{levels or ''} side by side; got {tuple(labels.shape)}."
            )
        targets = labels.split(sizes, dim=1)
    else:
        if len(sizes) == 1:
            targets = (labels.reshape(-1),)
        elif labels.ndim != 2 or labels.shape[1] != len(sizes):
            raise ValueError(
                f"labels must have shape (batch, {len(sizes)}): one class id per level {levels or ''}; got "
                f"{tuple(labels.shape)}."
            )
        else:
            targets = labels.unbind(dim=1)
    return [F.cross_entropy(logits.float(), target, reduction="none")
            for logits, target in zip(level_logits, targets, strict=True)]


def mean_over_examples(
    per_example: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of a batch: ``per_example`` (one loss per example) averaged over the examples.

    Trainer passes ``num_items_in_batch``: the number of label entries (class ids, or probabilities) in the whole
    optimizer step, over every batch of a gradient accumulation and, by default, every process; it then no longer
    divides the loss itself. Dividing this batch's sum by the number of examples that count stands for makes the
    gradient of each step the exact mean over its examples, whatever the batch sizes, the number of processes and
    the accumulation.
    """
    if num_items_in_batch is None:
        return per_example.mean()
    entries_per_example = labels[0].numel()
    return per_example.sum() / (num_items_in_batch / entries_per_example)


# ---------------------------------------------------------------- hierarchical decoding
# Written by hand: no library decodes a label tree from softmax heads. Every function below is tensor algebra with
# constant index tensors built from the config (no branching on tensor values, no .item()), so that it traces into
# ONNX and runs identically in the pipeline, the demo, predict and the exported model.


def predicted_levels(config: ViTYogaConfig) -> list[str]:
    """The hierarchy levels a checkpoint's probabilities cover, coarsest first: a one-head model of level L gives the
    levels from the first down to L, a joint model every level, a model without a hierarchy its one label set."""
    levels = list(config.hierarchy_levels)
    if not levels:
        return [config.label_level or "label"]
    if config.label_level is None:  # one head per level (train.py --label_level all)
        return levels
    return levels[: levels.index(config.label_level) + 1]


def _ancestor_table(config: ViTYogaConfig) -> torch.Tensor:
    """(n_finest, n_levels) LongTensor: each finest predicted class's id at every predicted level, coarsest first."""
    levels = predicted_levels(config)
    if not config.hierarchy_levels:
        return torch.arange(config.num_labels).unsqueeze(1)
    return torch.tensor(config.ancestors(levels[-1]), dtype=torch.long)


def _parent_matrix(config: ViTYogaConfig, depth: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_classes of level ``depth``, n_classes of level ``depth - 1``): 1 where the column is the row's parent. A
    matrix product with it sums children into parents (exact: each row has a single 1)."""
    parents = torch.tensor(config.hierarchy_parents[depth - 1], dtype=torch.long)
    return F.one_hot(parents, len(config.hierarchy_class_names[depth - 1])).to(dtype=dtype, device=device)


def _finest_log_probabilities(
    config: ViTYogaConfig, logits: torch.Tensor | Sequence[torch.Tensor], rule: str | None = None
) -> torch.Tensor:
    """Log-probabilities (batch, n_finest) over the finest predicted level: a one-head model's softmax, or a joint
    model's heads combined by ``rule`` (default ``config.hierarchy_combination``)."""
    levels = predicted_levels(config)
    heads = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    if len(heads) == 1:  # one head of the finest predicted level (or a joint model's combined ``logits``)
        (scores,) = heads
        n_finest = len(config.hierarchy_class_names[len(levels) - 1]) if config.hierarchy_levels else config.num_labels
        if scores.ndim != 2 or scores.shape[-1] != n_finest:
            raise ValueError(
                f"tree_probabilities expects logits of shape (batch, {n_finest}) for level {levels[-1]!r}, got "
                f"{tuple(scores.shape)}."
            )
        return F.log_softmax(scores.float(), dim=-1)
    if len(heads) != len(config.hierarchy_levels) or len(levels) != len(heads):
        raise ValueError(
            f"tree_probabilities got {len(heads)} heads' logits; a joint model has one per level "
            f"{config.hierarchy_levels}, and this config predicts {levels}."
        )
    sizes = config.hierarchy_sizes
    if any(h.ndim != 2 or h.shape[-1] != n for h, n in zip(heads, sizes, strict=True)):
        raise ValueError(
            f"tree_probabilities expects each level's logits of shape (batch, n_classes) with n_classes {sizes}, got "
            f"{[tuple(h.shape) for h in heads]}."
        )
    rule = rule or config.hierarchy_combination
    if rule not in HIERARCHY_COMBINATIONS:
        raise ValueError(f"Unknown hierarchy combination {rule!r}; choose one of {list(HIERARCHY_COMBINATIONS)}.")
    log_probabilities = [F.log_softmax(h.float(), dim=-1) for h in heads]
    if rule == "finest":
        return log_probabilities[-1]
    table = _ancestor_table(config).to(heads[0].device)
    if rule == "chain":
        # log p(a_1) + sum over finer levels of log p_l(a_l) - log(sum of p_l over a_l's siblings and itself)
        for depth in range(1, len(heads)):
            within_parent = torch.logsumexp(
                log_probabilities[depth].unsqueeze(-1)
                + _parent_matrix(config, depth, torch.float32, heads[0].device).log(), dim=1
            )  # (batch, n_parents): log of each parent's children's total
            parents = torch.tensor(config.hierarchy_parents[depth - 1], device=heads[0].device)
            log_probabilities[depth] = log_probabilities[depth] - within_parent.index_select(1, parents)
    path_scores = sum(lp.index_select(1, table[:, depth]) for depth, lp in enumerate(log_probabilities))
    return F.log_softmax(path_scores, dim=-1)  # the chain rule's already sums to 1; renormalising changes nothing


def tree_probabilities(
    config: ViTYogaConfig, logits: torch.Tensor | Sequence[torch.Tensor], rule: str | None = None
) -> tuple[torch.Tensor, ...]:
    """One (batch, n_classes) probability tensor per level of ``predicted_levels(config)``, coarsest first: each row
    sums to 1 and every coarse class's probability is the sum of its children's.

    ``logits``: a one-head model's ``logits`` (its finest level's softmax is marginalised up the tree), or a joint
    model's ``level_logits`` (its heads combined by ``rule``, default ``config.hierarchy_combination``). A joint
    model's ``logits`` (the combined finest scores) give the same as its ``level_logits``. Traceable by
    torch.onnx.export. The decided path (the most probable one, or the minimum-risk one) is
    ``answers_vit_yoga.LabelTree.decide``, in numpy, for every front end.
    """
    finest = _finest_log_probabilities(config, logits, rule).exp()
    probabilities = [finest]
    for depth in range(len(predicted_levels(config)) - 1, 0, -1):
        probabilities.insert(0, probabilities[0] @ _parent_matrix(config, depth, finest.dtype, finest.device))
    return tuple(probabilities)


class ViTYogaPreTrainedModel(PreTrainedModel):
    config_class = ViTYogaConfig
    config: ViTYogaConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTYogaEmbeddings", "ViTYogaLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def __init__(self, config: ViTYogaConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        # save_pretrained adds the class being saved to auto_map; list the others too, so that AutoConfig and
        # AutoModel load a classifier's checkpoint as well, and AutoModelForImageClassification a bare backbone's
        # (with a new head of num_labels, as for transformers' ViT: the way a fine-tune starts) (trust_remote_code).
        auto_map = dict(getattr(config, "auto_map", None) or {})
        auto_map.setdefault("AutoConfig", "configuration_vit_yoga.ViTYogaConfig")
        auto_map.setdefault("AutoModel", "modeling_vit_yoga.ViTYogaModel")
        auto_map.setdefault("AutoModelForImageClassification", "modeling_vit_yoga.ViTYogaForImageClassification")
        config.auto_map = auto_map

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel") -> None:
        """As ``PreTrainedModel``'s; and when transformers registers a loaded remote-code classifier with
        ``AutoModelForImageClassification`` (it does after each load), map the config class to both classifiers.

        transformers maps a config class to one model class, and both classifiers share ``ViTYogaConfig``: after a
        joint checkpoint loads, a one-head checkpoint with the same code (and folder name) in the same process would
        be built as a joint model, and the reverse. With both listed, transformers picks by ``config.architectures``.
        """
        super().register_for_auto_class(auto_class)
        if isinstance(auto_class, str) or auto_class.__name__ != "AutoModelForImageClassification":
            return
        classifiers = (ViTYogaForImageClassification, ViTYogaForHierarchicalClassification)
        if not issubclass(cls, classifiers):
            return
        # The config class transformers just registered comes from its own copy of configuration_vit_yoga.py (a
        # module path of its own, not this file's relative import): find it among the mapping's keys, by name and by
        # the checkpoint's module folder.
        folder = cls.__module__.split(".")[:2]
        for config_class in list(auto_class._model_mapping.keys()):
            if config_class.__name__ == cls.config_class.__name__ and config_class.__module__.split(".")[:2] == folder:
                auto_class.register(config_class, classifiers, exist_ok=True)

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' ViT init (``ViTPreTrainedModel._init_weights``): truncated normal (std
        ``initializer_range``) for linear and convolution weights, the position embeddings and the class token; zero
        biases; LayerNorm (and the stem's norms) at weight 1, bias 0. Not timm's, whose class token starts at std 1e-6
        and whose patch projection keeps PyTorch's default init; ported weights keep their source's values."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTYogaEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)


class ViTYogaModel(ViTYogaPreTrainedModel):
    """The ViT backbone: embeddings, ``num_hidden_layers`` blocks and the final LayerNorm.

    ``pooler_output`` is the normalised class token (position 0), the representation the classifiers read.
    """

    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__(config)
        self.embeddings = ViTYogaEmbeddings(config)
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList([ViTYogaLayer(config, rate) for rate in drop_path_rates])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        pooled_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """``pooled_only=True`` (what the classifiers pass): only ``pooler_output`` is needed, so the last block
        computes the class token's output alone; ``last_hidden_state`` then holds just that token. Exact: the other
        tokens' final states feed nothing the class token reads. It skips most of the last block (its keys and values
        still cover every token), forward and backward; benchmarks/README.md measures the gain. Ignored when hidden
        states or attention maps are requested."""
        if pixel_values is None:
            raise ValueError("ViTYoga needs pixel_values (batch, channels, height, width).")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        weight_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        hidden_states = self.embeddings(pixel_values.to(weight_dtype), bool(interpolate_pos_encoding))

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        last_layer_queries = 1 if pooled_only and not (output_hidden_states or output_attentions) else None
        for index, layer in enumerate(self.layers):
            num_queries = last_layer_queries if index == len(self.layers) - 1 else None
            hidden_states, attn_weights = layer(hidden_states, output_attentions, num_queries=num_queries)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        sequence_output = self.layernorm(hidden_states)
        pooled_output = sequence_output[:, 0]
        if not return_dict:
            return tuple(
                v for v in (sequence_output, pooled_output, all_hidden_states, all_attentions) if v is not None
            )
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )


class ViTYogaForImageClassification(ViTYogaPreTrainedModel):
    """ViTYoga with one linear head on the class token: ``num_labels`` logits (e.g. one level of Yoga-82)."""

    # Takes Trainer's num_items_in_batch (see mean_over_examples), as transformers' own classifiers do.
    accepts_loss_kwargs = True

    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTYogaModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            pooled_only=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            (per_example,) = per_example_losses((logits,), labels)
            loss = mean_over_examples(per_example, labels, kwargs.get("num_items_in_batch"))
        if not return_dict:
            rest = tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss, logits) if loss is not None else (logits,)) + rest
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    @torch.no_grad()
    def tree_probabilities(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Each level of ``predicted_levels(config)``'s class probabilities, coarsest first, tree-consistent: the
        head's softmax, marginalised up the label tree (see ``tree_probabilities``)."""
        logits = self(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True).logits
        return tree_probabilities(self.config, logits)


@dataclass
class HierarchicalClassifierOutput(ModelOutput):
    """Outputs of [`ViTYogaForHierarchicalClassification`].

    Args:
        loss: the sum over levels of each level's cross-entropy (of the raw heads, ``level_logits``), averaged over
            the examples (when ``labels`` are given).
        logits: the finest level's scores, so that the image-classification pipeline names the finest classes: the
            log-probabilities of the heads combined by ``config.hierarchy_combination`` (the finest head's raw
            logits for "finest"); their softmax is the finest level of ``tree_probabilities``.
        level_logits: each level's head's raw logits, coarsest first (``config.hierarchy_levels`` order).
        level_losses: each level's mean cross-entropy over the batch, shape (num_levels,), for monitoring.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    level_logits: tuple[torch.FloatTensor, ...] | None = None
    level_losses: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class ViTYogaForHierarchicalClassification(ViTYogaPreTrainedModel):
    """ViTYoga with one head per level of ``config.hierarchy_levels`` (6, 20 and 82 logits for Yoga-82).

    ``labels`` has shape (batch, num_levels): each example's class id at every level, coarsest first.
    """

    # Takes Trainer's num_items_in_batch (see mean_over_examples), as transformers' own classifiers do.
    accepts_loss_kwargs = True

    def __init__(self, config: ViTYogaConfig) -> None:
        super().__init__(config)
        if not config.hierarchy_levels:
            raise ValueError(
                "ViTYogaForHierarchicalClassification needs a label hierarchy; set hierarchy_levels, "
                "hierarchy_class_names and hierarchy_parents in the config (or use ViTYogaForImageClassification)."
            )
        self.vit = ViTYogaModel(config)
        self.classifiers = nn.ModuleList([nn.Linear(config.hidden_size, size) for size in config.hierarchy_sizes])
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> HierarchicalClassifierOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.vit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            pooled_only=True,
        )
        level_logits = tuple(head(outputs.pooler_output) for head in self.classifiers)
        loss = level_losses = None
        if labels is not None:
            losses = per_example_losses(level_logits, labels, self.config.hierarchy_levels)
            level_losses = torch.stack([level.detach().mean() for level in losses])
            loss = mean_over_examples(torch.stack(losses).sum(dim=0), labels, kwargs.get("num_items_in_batch"))
        # The combined scores measured better than the finest head alone (vit-yoga's docs/predictions.md); the
        # loss stays on the raw heads, so training is unchanged.
        if self.config.hierarchy_combination == "finest":
            logits = level_logits[-1]
        else:
            logits = _finest_log_probabilities(self.config, level_logits).to(level_logits[-1].dtype)
        output = HierarchicalClassifierOutput(
            loss=loss,
            logits=logits,
            level_logits=level_logits,
            level_losses=level_losses,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def tree_probabilities(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Every level's class probabilities, coarsest first, tree-consistent: the heads combined by
        ``config.hierarchy_combination`` (see ``tree_probabilities``)."""
        output = self(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True)
        return tree_probabilities(self.config, output.level_logits)


def vit_yoga_image_processor(
    config: ViTYogaConfig,
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> ViTImageProcessor:
    """The image processor a checkpoint ships with: resize to the model's size, rescale to [0, 1], normalise."""
    from transformers import ViTImageProcessor  # imported when needed: loading a model never needs it

    return ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        resample=PILImageResampling.BILINEAR,
        do_rescale=True,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
    )


ViTYogaConfig.register_for_auto_class()
ViTYogaModel.register_for_auto_class("AutoModel")
ViTYogaForImageClassification.register_for_auto_class("AutoModelForImageClassification")
ViTYogaForHierarchicalClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "HierarchicalClassifierOutput",
    "predicted_levels",
    "tree_probabilities",
    "ViTYogaForHierarchicalClassification",
    "ViTYogaForImageClassification",
    "ViTYogaModel",
    "ViTYogaPreTrainedModel",
    "vit_yoga_image_processor",
]
