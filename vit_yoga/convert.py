"""Porting transformers' or timm's ViT weights into ViTYoga (the library behind convert_vit_checkpoint.py).

Conversion is exact: q/k/v are fused into qkv, names are mapped, and ``max_abs_difference`` checks the converted
model against its source. A timm model that is not the standard class-token ViT is refused.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, ViTConfig, ViTForImageClassification, ViTModel

from configuration_vit_yoga import ViTYogaConfig
from modeling_vit_yoga import ViTYogaForImageClassification, ViTYogaModel, vit_yoga_image_processor
from yoga_common.files import staged_folder

# The fields ViTYogaConfig shares with transformers' ViTConfig, same name and meaning: the one mapping between the two.
SHARED_VIT_FIELDS = (
    "image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "layer_norm_eps", "qkv_bias", "initializer_range",
)


def vit_config_from(config: ViTYogaConfig, **kwargs: Any) -> ViTConfig:
    """transformers' ViTConfig of the same architecture (e.g. to compare the two implementations); kwargs add to it."""
    return ViTConfig(**{name: getattr(config, name) for name in SHARED_VIT_FIELDS}, **kwargs)


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state_dict.items()}


def _build_target(config: ViTYogaConfig, has_head: bool) -> ViTYogaModel | ViTYogaForImageClassification:
    return ViTYogaForImageClassification(config) if has_head else ViTYogaModel(config)


def _load_into(target: nn.Module, backbone: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> None:
    """Load a backbone state dict (ViTYogaModel names) and an optional classifier into ``target`` strictly."""
    if isinstance(target, ViTYogaForImageClassification):
        state = {f"vit.{k}": v for k, v in backbone.items()} | {f"classifier.{k}": v for k, v in head.items()}
    else:
        state = backbone
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Weight mismatch after conversion: missing {missing}, unexpected {unexpected}.")


def convert_transformers_vit(
    source: ViTModel | ViTForImageClassification,
) -> ViTYogaModel | ViTYogaForImageClassification:
    """A ViTYoga model with the weights of a transformers ViT (q/k/v fused into qkv; the pooler is dropped)."""
    src = source.config
    image_size, patch_size = src.image_size, src.patch_size
    if not isinstance(image_size, int) or not isinstance(patch_size, int):
        raise ValueError(f"Only square images and patches convert; the source has {image_size} and {patch_size}.")
    state = source.state_dict()
    head = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith("classifier.")}
    kwargs = _label_maps(src, head["weight"].shape[0]) if head else {}  # num_labels=0 (an Identity head): none
    config = ViTYogaConfig(**{name: getattr(src, name) for name in SHARED_VIT_FIELDS}, **kwargs)
    state = _strip_prefix({k: v for k, v in state.items() if not k.startswith("classifier.")}, "vit.")
    backbone: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("pooler."):
            continue  # ViTForImageClassification never uses it; ViTYoga classifies the normalised class token
        if ".attention.q_proj." in key:
            kind = key.rsplit(".", 1)[1]
            layer = key.split(".attention.")[0]
            parts = [state[f"{layer}.attention.{p}_proj.{kind}"] for p in "qkv"]
            backbone[f"{layer}.attention.qkv.{kind}"] = torch.cat(parts, dim=0)
        elif ".attention.k_proj." in key or ".attention.v_proj." in key:
            continue
        else:
            backbone[key.replace(".attention.o_proj.", ".attention.proj.")] = value
    target = _build_target(config, bool(head))
    _load_into(target, backbone, head)
    return target


def _label_maps(config, num_labels: int) -> dict[str, dict]:
    """id2label and label2id for a head of ``num_labels``, from whichever of the two the config has.

    transformers 5 writes ``"label2id": null`` for a config made with ``id2label`` alone, and may keep only one.
    """
    id2label = {int(i): name for i, name in (getattr(config, "id2label", None) or {}).items()}
    if not id2label and getattr(config, "label2id", None):
        id2label = {int(i): name for name, i in config.label2id.items()}
    if sorted(id2label) != list(range(num_labels)):
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}  # names that do not fit the head are not its names
    return {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}


# timm name -> ViTYogaModel name; a key matching none of these is a part the standard ViT does not have.
_TIMM_KEY_RULES = [
    (re.compile(r"^cls_token$"), "embeddings.cls_token"),
    (re.compile(r"^pos_embed$"), "embeddings.position_embeddings"),
    (re.compile(r"^patch_embed\.proj\."), "embeddings.patch_embeddings.projection."),
    (re.compile(r"^blocks\.(\d+)\.norm1\."), r"layers.\1.layernorm_before."),
    (re.compile(r"^blocks\.(\d+)\.norm2\."), r"layers.\1.layernorm_after."),
    (re.compile(r"^blocks\.(\d+)\.attn\.(qkv|proj)\."), r"layers.\1.attention.\2."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\."), r"layers.\1.mlp.\2."),
    (re.compile(r"^norm\."), "layernorm."),
]


def _timm_state_to_vit_yoga(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    backbone, unsupported = {}, []
    for key, value in state.items():
        if key.startswith("head."):
            continue
        for pattern, replacement in _TIMM_KEY_RULES:
            new_key, matched = pattern.subn(replacement, key)
            if matched:
                backbone[new_key] = value
                break
        else:
            unsupported.append(key)
    if unsupported or "cls_token" not in state:
        raise ValueError(
            f"This timm model is not a standard class-token ViT (it has {unsupported[:4] or 'no cls_token'}); only "
            "ViTs with a class token, token pooling, no register tokens, no layer scale and no qk-norm convert "
            "(e.g. vit_tiny_patch16_224, vit_base_patch16_224)."
        )
    return backbone, head


def _timm_config_from_state(
    state: dict[str, torch.Tensor], num_attention_heads: int | None, layer_norm_eps: float
) -> ViTYogaConfig:
    """Sizes read off the tensors' shapes; the head count cannot be, so it defaults to the ViT convention of 64."""
    hidden_size = state["cls_token"].shape[-1]
    patch_size = state["patch_embed.proj.weight"].shape[-1]
    num_positions = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions:
        raise ValueError(f"pos_embed holds {num_positions} patch positions, not a square grid; cannot convert.")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    return ViTYogaConfig(
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=state["patch_embed.proj.weight"].shape[1],
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        num_attention_heads=num_attention_heads or max(1, hidden_size // 64),
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        layer_norm_eps=layer_norm_eps,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        **({"num_labels": num_classes} if num_classes else {}),
    )


def convert_timm_vit(source: nn.Module) -> ViTYogaModel | ViTYogaForImageClassification:
    """A ViTYoga model with the weights of a timm ``VisionTransformer`` (checked to be the standard ViT)."""
    if getattr(source, "global_pool", "token") != "token" or not getattr(source, "has_class_token", True):
        raise ValueError("Only timm ViTs that classify the class token (global_pool='token') convert.")
    act = getattr(source.blocks[0].mlp, "act", None)
    if act is not None and not (isinstance(act, nn.GELU) and act.approximate == "none"):
        raise ValueError(f"Only timm ViTs with exact GELU convert; this one uses {act}.")
    state = source.state_dict()
    backbone, head = _timm_state_to_vit_yoga(state)
    config = _timm_config_from_state(state, source.blocks[0].attn.num_heads, source.norm.eps)
    target = _build_target(config, bool(head))
    _load_into(target, backbone, head)
    return target


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only=True: a checkpoint from the internet must never run code while it loads.
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_ema"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_source(
    source: str, num_attention_heads: int | None = None
) -> tuple[nn.Module, ViTYogaModel | ViTYogaForImageClassification, tuple[list[float], list[float]]]:
    """Load ``source`` and convert it; returns (reference model, converted model, (image_mean, image_std))."""
    mean_std = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    path = Path(source)
    if source.startswith("timm:"):
        import timm

        reference = timm.create_model(source.removeprefix("timm:"), pretrained=True)
        converted = convert_timm_vit(reference)
        cfg = reference.pretrained_cfg
        mean_std = (list(cfg.get("mean", mean_std[0])), list(cfg.get("std", mean_std[1])))
    elif path.is_file():
        state = _read_state_dict(path)
        if "cls_token" not in state:
            raise ValueError(f"{path} does not look like a timm ViT checkpoint (no 'cls_token' tensor).")
        backbone, head = _timm_state_to_vit_yoga(state)
        config = _timm_config_from_state(state, num_attention_heads, layer_norm_eps=1e-6)
        converted = _build_target(config, bool(head))
        _load_into(converted, backbone, head)
        reference = _timm_reference_from_state(state, config)
    else:
        from transformers import AutoConfig, AutoImageProcessor

        source_config = AutoConfig.from_pretrained(source)
        if source_config.model_type != "vit":
            raise ValueError(
                f"{source} is a {source_config.model_type!r} model; only transformers ViT checkpoints (model_type "
                "'vit'), timm:<name> or a timm checkpoint file convert."
            )
        has_head = any("ForImageClassification" in a for a in (source_config.architectures or []))
        reference = (ViTForImageClassification if has_head else ViTModel).from_pretrained(source)
        converted = convert_transformers_vit(reference)
        try:
            processor = AutoImageProcessor.from_pretrained(source)
            mean_std = (list(processor.image_mean), list(processor.image_std))
        except OSError:
            pass  # no preprocessor_config.json: keep ViT's usual 0.5 normalisation
    return reference, converted, mean_std


def timm_vit_from_config(config: ViTYogaConfig, num_classes: int | None = None) -> nn.Module:
    """timm's ``VisionTransformer`` with the sizes of ``config`` (randomly initialised)."""
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        in_chans=config.num_channels,
        num_classes=config.num_labels if num_classes is None else num_classes,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        qkv_bias=config.qkv_bias,
        norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
    )


def _timm_reference_from_state(state: dict[str, torch.Tensor], config: ViTYogaConfig) -> nn.Module | None:
    """The timm model the file belongs to, to check the conversion against; None when timm is not installed."""
    try:
        model = timm_vit_from_config(config, state["head.weight"].shape[0] if "head.weight" in state else 0)
    except ImportError:
        return None
    model.load_state_dict(state)
    return model


@torch.no_grad()
def max_abs_difference(reference: nn.Module, converted: nn.Module, batch_size: int = 2, seed: int = 0) -> float:
    """Largest absolute difference between the two models' outputs (logits, or final hidden states) in fp32."""
    config = converted.config
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, config.num_channels, config.image_size, config.image_size, generator=generator)
    reference.eval()
    converted.eval()
    ours = converted(pixels)
    if isinstance(converted, ViTYogaForImageClassification):
        out = reference(pixels)
        theirs = out.logits if hasattr(out, "logits") else out
        return (ours.logits - theirs).abs().max().item()
    if isinstance(reference, PreTrainedModel):
        # A ViTForImageClassification with num_labels=0 converts to a backbone: compare with its own backbone.
        theirs = getattr(reference, "vit", reference)(pixels).last_hidden_state
    else:
        theirs = reference.forward_features(pixels)
    return (ours.last_hidden_state - theirs).abs().max().item()


def save_atomically(
    model: PreTrainedModel,
    image_mean: list[float],
    image_std: list[float],
    output_dir: Path,
    *,
    overwrite: bool = False,
) -> None:
    """Write the checkpoint (weights, config, code, image processor) so that ``output_dir`` appears complete or not at
    all; a non-empty ``output_dir`` is replaced in one step if ``overwrite``, else refused."""
    with staged_folder(output_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        vit_yoga_image_processor(model.config, image_mean, image_std).save_pretrained(staging)
