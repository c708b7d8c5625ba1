"""ViTYoga is the standard ViT: equal to transformers' and timm's after conversion, and a well-behaved HF model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import load_script
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel

import yoga82
from configuration_vit_yoga import ViTYogaConfig
from modeling_vit_yoga import (
    ViTYogaForHierarchicalClassification,
    ViTYogaForImageClassification,
    ViTYogaModel,
    vit_yoga_image_processor,
)
from vit_yoga.convert import convert_timm_vit, convert_transformers_vit, max_abs_difference
from yoga82.labels import LABEL_82_NAMES, PARENT_OF_20, PARENT_OF_82

convert_main = load_script("convert_vit_checkpoint.py")["main"]
TINY = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=96)


def tiny_config(**overrides) -> ViTYogaConfig:
    """A tiny ViT with Yoga-82's label hierarchy."""
    return ViTYogaConfig(**{**TINY, **yoga82.hierarchy(), **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every tensor, so that LayerNorm scales, biases and tokens cannot hide a mis-mapping."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


def pixels(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- config


def test_default_config_is_vit_ti16_and_takes_yoga82s_hierarchy():
    assert ViTYogaConfig().hierarchy_levels == []  # the hierarchy is the data's, not the model code's
    config = ViTYogaConfig(**yoga82.hierarchy())
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (12, 192, 768)
    assert (config.num_attention_heads, config.patch_size, config.image_size) == (3, 16, 224)
    assert config.hierarchy_sizes == [6, 20, 82]
    assert config.ancestors("label_82")[0] == [1, 8, 0]  # Akarna_Dhanurasana: Sitting -> Sitting: forward bend


def test_label_level_names_the_classes_and_survives_save(tmp_path):
    config = tiny_config(label_level="label_82")
    assert config.num_labels == 82 and config.id2label[81] == LABEL_82_NAMES[81]
    config.save_pretrained(tmp_path)
    again = ViTYogaConfig.from_pretrained(tmp_path)
    assert again.id2label == config.id2label and again.hierarchy_parents == config.hierarchy_parents


@pytest.mark.parametrize("name, expected", [("vit-ti16", 192), ("vit-s16", 384), ("vit-b16", 768), ("vit-l16", 1024)])
def test_presets(name, expected):
    assert ViTYogaConfig.from_preset(name).hidden_size == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=30), "not divisible by patch_size"),
        (dict(hidden_size=50), "not divisible by num_attention_heads"),
        (dict(hierarchy_parents=[PARENT_OF_20, PARENT_OF_82[:81]]), "gives 81 parents"),
        (dict(hierarchy_parents=[PARENT_OF_20[:19] + [6], PARENT_OF_82]), "has parent 6"),
        (dict(hierarchy_parents=[PARENT_OF_20, [0] * 82]), "have no child"),
        (dict(label_level="label_20", num_labels=82), "has 82 labels but level 'label_20' has 20"),
        (dict(label_level="pose"), "not a hierarchy level"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(num_hidden_layers=0), "positive integer"),
        (dict(patch_embedding_type="convolutional"), "patch_embedding_type 'convolutional' is unknown"),
        (dict(image_size=36, patch_size=6, patch_embedding_type="conv_stem"), "patch_size must be a power of two"),
        (dict(hierarchy_combination="geometric"),
         r"hierarchy_combination 'geometric' is unknown; choose one of \['finest', 'product', 'chain'\]"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown model preset 'vit-x'"):
        ViTYogaConfig.from_preset("vit-x")


# ---------------------------------------------------------------- equality with the references


def test_equal_to_transformers_vit_for_image_classification():
    reference = randomize_(ViTForImageClassification(ViTConfig(**TINY, num_labels=7, layer_norm_eps=1e-12)))
    ours = convert_transformers_vit(reference)
    assert isinstance(ours, ViTYogaForImageClassification)
    assert max_abs_difference(reference, ours) < 1e-5
    with torch.no_grad():  # and the hidden states all the way down, not just the logits
        theirs = reference(pixels(), output_hidden_states=True).hidden_states
        mine = ours(pixels(), output_hidden_states=True).hidden_states
    assert len(mine) == len(theirs) == TINY["num_hidden_layers"] + 1
    assert max((a - b).abs().max().item() for a, b in zip(mine, theirs, strict=True)) < 1e-5


def test_equal_to_transformers_vit_model_backbone():
    reference = randomize_(ViTModel(ViTConfig(**TINY)))
    ours = convert_transformers_vit(reference)
    assert isinstance(ours, ViTYogaModel)
    assert max_abs_difference(reference, ours) < 1e-5


def test_equal_to_timm_vit():
    reference = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, depth=2,
                                             img_size=32, patch_size=8, embed_dim=48, num_heads=3))
    ours = convert_timm_vit(reference)
    assert max_abs_difference(reference, ours) < 1e-5


def test_timm_models_that_are_not_the_standard_vit_are_refused():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, patch_size=8,
                              embed_dim=48, num_heads=3, reg_tokens=4)
    with pytest.raises(ValueError, match="not a standard class-token ViT"):
        convert_timm_vit(model)


def test_vit_ti16_parameter_count_equals_timm():
    ours = ViTYogaForImageClassification(ViTYogaConfig(**yoga82.hierarchy(), label_level="label_82"))
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=82)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 5_540_242


def test_convert_cli_from_transformers_folder_and_timm_file(tmp_path, capsys):
    reference = randomize_(ViTForImageClassification(ViTConfig(**TINY, num_labels=4)))
    reference.save_pretrained(tmp_path / "hf")
    assert convert_main(["--source", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "a")]) == 0
    loaded = ViTYogaForImageClassification.from_pretrained(tmp_path / "a")
    assert max_abs_difference(reference, loaded) < 1e-5
    assert (tmp_path / "a" / "model.safetensors").exists() and (tmp_path / "a" / "preprocessor_config.json").exists()

    timm_model = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, depth=2,
                                              img_size=32, patch_size=8, embed_dim=128, num_heads=2))
    save_file(timm_model.state_dict(), tmp_path / "timm.safetensors")
    args = ["--source", str(tmp_path / "timm.safetensors"), "--output_dir", str(tmp_path / "b")]
    assert convert_main(args) == 0  # heads default to width / 64 = 2, as in every ViT preset
    converted = ViTYogaForImageClassification.from_pretrained(tmp_path / "b")
    assert converted.config.num_attention_heads == 2
    assert max_abs_difference(timm_model, converted) < 1e-5
    # A file that is no ViT is refused with a clear message and nothing is written.
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert convert_main(["--source", str(tmp_path / "other.safetensors"), "--output_dir",
                                        str(tmp_path / "c")]) == 2
    assert "does not look like a timm ViT checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    # A non-empty output folder is never overwritten silently.
    assert convert_main(args) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_converter_takes_every_vit_transformers_5_and_timm_write(tmp_path):
    """With or without label2id (transformers 5 writes null for a config made with id2label alone), with or
    without a head (num_labels=0, a bare ViTModel, a timm model with num_classes=0)."""
    labelled = randomize_(ViTForImageClassification(ViTConfig(**TINY, id2label={0: "cat", 1: "dog", 2: "yak"})))
    labelled.save_pretrained(tmp_path / "labelled")
    assert json.loads((tmp_path / "labelled" / "config.json").read_text())["label2id"] is None
    headless = randomize_(ViTForImageClassification(ViTConfig(**TINY, num_labels=0)))
    headless.save_pretrained(tmp_path / "headless")
    timm_headless = randomize_(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2,
                                                 img_size=32, patch_size=8, embed_dim=48, num_heads=3))
    save_file(timm_headless.state_dict(), tmp_path / "timm_headless.safetensors")

    cases = [("labelled", labelled, ViTYogaForImageClassification), ("headless", headless, ViTYogaModel),
             ("timm_headless.safetensors", timm_headless, ViTYogaModel)]
    for source, reference, expected in cases:
        output = tmp_path / f"{source}-converted"
        args = ["--source", str(tmp_path / source), "--output_dir", str(output), "--num_attention_heads", "3"]
        assert convert_main(args) == 0, source
        converted = expected.from_pretrained(output)
        assert type(converted) is expected and max_abs_difference(reference, converted) < 1e-5, source
    converted = ViTYogaForImageClassification.from_pretrained(tmp_path / "labelled-converted")
    assert converted.config.id2label == {0: "cat", 1: "dog", 2: "yak"}
    assert converted.config.label2id == {"cat": 0, "dog": 1, "yak": 2}


def test_converter_replaces_its_output_in_one_step_with_ordinary_permissions(tmp_path):
    reference = randomize_(ViTModel(ViTConfig(**TINY)))
    reference.save_pretrained(tmp_path / "hf")
    output = tmp_path / "out"
    (tmp_path / ".out.old").mkdir()  # what a crash of the old code left: it blocked every later run
    (tmp_path / ".out.old" / "config.json").write_text("{}")
    args = ["--source", str(tmp_path / "hf"), "--output_dir", str(output), "--overwrite_output_dir"]
    assert convert_main(args) == 0
    assert convert_main(args) == 0  # and again, over the first
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    modes = {p.name: p.stat().st_mode & 0o777 for p in output.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o666 & ~umask}  # safetensors alone gives 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "hf", "out"]  # nothing else left, nor removed
    assert max_abs_difference(reference, ViTYogaModel.from_pretrained(output)) < 1e-5


# ---------------------------------------------------------------- attention, outputs, training features


def test_eager_equals_sdpa_and_attention_rows_sum_to_one():
    config = tiny_config(label_level="label_6")
    eager = randomize_(ViTYogaForImageClassification._from_config(config, attn_implementation="eager"))
    sdpa = ViTYogaForImageClassification._from_config(config, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        out_eager = eager(pixels(), output_attentions=True)
        out_sdpa = sdpa(pixels())
    assert (out_eager.logits - out_sdpa.logits).abs().max() < 1e-5
    attentions = out_eager.attentions
    assert len(attentions) == 2 and attentions[0].shape == (2, 3, 17, 17)  # (batch, heads, queries, keys)
    torch.testing.assert_close(attentions[0].sum(dim=-1), torch.ones(2, 3, 17))


def test_class_token_is_read_from_position_zero():
    model = randomize_(ViTYogaModel(tiny_config()))
    with torch.no_grad():
        out = model(pixels())
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomize_(ViTYogaForImageClassification(tiny_config(label_level="label_6"))).train()
    labels = torch.tensor([1, 4])
    model(pixels(), labels=labels).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()  # what Trainer's --gradient_checkpointing calls
    model(pixels(), labels=labels).loss.backward()
    for a, b in zip(plain, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_interpolate_pos_encoding_and_clear_input_errors():
    model = randomize_(ViTYogaModel(tiny_config()))
    with torch.no_grad():
        assert model(pixels(size=48), interpolate_pos_encoding=True).last_hidden_state.shape == (2, 37, 48)
        same = model(pixels(), interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(same, model(pixels()).last_hidden_state)
    with pytest.raises(ValueError, match="does not match the model's .32x32.*interpolate_pos_encoding=True"):
        model(pixels(size=48))
    with pytest.raises(ValueError, match=r"shape \(batch, 3, height, width\)"):
        model(torch.randn(1, 1, 32, 32))


def test_drop_path_is_random_in_training_and_off_in_eval():
    model = randomize_(ViTYogaModel(tiny_config(drop_path_rate=0.5)))
    with torch.no_grad():
        assert torch.equal(model(pixels()).last_hidden_state, model(pixels()).last_hidden_state)
        model.train()
        torch.manual_seed(0)
        first = model(pixels(batch=8)).last_hidden_state
        second = model(pixels(batch=8)).last_hidden_state
    assert not torch.equal(first, second)


def test_hierarchical_model_sums_the_levels_cross_entropies():
    model = randomize_(ViTYogaForHierarchicalClassification(tiny_config()))
    labels = torch.tensor([[1, 8, 0], [5, 17, 69]])
    out = model(pixels(), labels=labels)
    assert [tuple(logits.shape) for logits in out.level_logits] == [(2, 6), (2, 20), (2, 82)]
    expected = sum(F.cross_entropy(logits, labels[:, i]) for i, logits in enumerate(out.level_logits))
    torch.testing.assert_close(out.loss, expected)
    # logits (what the image-classification pipeline reads) are the heads' combined finest log-probabilities;
    # tests/test_hierarchy.py checks them against tree_probabilities.
    assert out.logits.shape == (2, 82)
    torch.testing.assert_close(out.logits.exp().sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match=r"labels must have shape \(batch, 3\)"):
        model(pixels(), labels=torch.tensor([1, 2]))


# ---------------------------------------------------------------- loading anywhere


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              pipeline)


    def fine_tune_from(folder):
        # How a transformers user starts a fine-tune from a backbone: a new head of num_labels.
        model, info = AutoModelForImageClassification.from_pretrained(
            folder, trust_remote_code=True, num_labels=5, output_loading_info=True
        )
        state, saved = model.state_dict(), load_file(f"{folder}/model.safetensors")
        return {
            "model": type(model).__name__,
            "num_labels": model.config.num_labels,
            "missing": sorted(info["missing_keys"]),
            "unexpected": sorted(info["unexpected_keys"]),
            "backbone_kept": all(torch.equal(state["vit." + key], value) for key, value in saved.items()),
            "head_shape": list(model.classifier.weight.shape),
            "head_std": model.classifier.weight.std().item(),
            "head_bias": model.classifier.bias.abs().max().item(),
        }


    folder, backbone_folder = sys.argv[1], (sys.argv[2:] or [None])[0]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    backbone = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    classify = pipeline("image-classification", model=folder, trust_remote_code=True)
    print(json.dumps({
        "model": type(model).__module__ + "." + type(model).__name__,
        "config": type(config).__name__,
        "backbone": type(backbone).__name__,
        "pixel_shape": list(processor(image, return_tensors="pt")["pixel_values"].shape),
        "predictions": classify(image, top_k=3),
        "logits": model(**processor(image, return_tensors="pt")).logits[0, :3].tolist(),
        "fine_tune": fine_tune_from(backbone_folder) if backbone_folder else None,
    }))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("model_class", [ViTYogaForImageClassification, ViTYogaForHierarchicalClassification])
def test_checkpoint_loads_in_a_fresh_process_with_trust_remote_code(tmp_path, model_class):
    """Also, with the flat classifier (sharing the process start): a converted ImageNet-21k-style backbone (no
    head) starts a fine-tune as transformers' ViT does, with AutoModelForImageClassification and num_labels: the
    backbone's weights kept, a new head reported as newly initialised."""
    # The hierarchical checkpoint also carries the small-data option, the convolutional stem.
    stem = "conv_stem" if model_class is ViTYogaForHierarchicalClassification else "standard"
    model = randomize_(model_class(tiny_config(label_level="label_82", patch_embedding_type=stem)))
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    vit_yoga_image_processor(model.config).save_pretrained(folder)
    assert not list(folder.glob("*.bin")) and (folder / "model.safetensors").exists()
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == f"modeling_vit_yoga.{model_class.__name__}"

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", FRESH_PROCESS, str(folder)]
    if model_class is ViTYogaForImageClassification:
        randomize_(ViTModel(ViTConfig(**TINY))).save_pretrained(tmp_path / "in21k")
        backbone = tmp_path / "backbone"
        assert convert_main(["--source", str(tmp_path / "in21k"), "--output_dir", str(backbone)]) == 0
        command.append(str(backbone))
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"].startswith("transformers_modules.") and report["model"].endswith(model_class.__name__)
    assert report["config"] == "ViTYogaConfig" and report["backbone"] == "ViTYogaModel"
    assert report["pixel_shape"] == [1, 3, 32, 32]
    labels = [p["label"] for p in report["predictions"]]
    assert len(labels) == 3 and all(label in LABEL_82_NAMES for label in labels)
    if model_class is ViTYogaForImageClassification:
        fine_tune = report["fine_tune"]
        assert fine_tune["model"] == "ViTYogaForImageClassification" and fine_tune["num_labels"] == 5
        assert fine_tune["missing"] == ["classifier.bias", "classifier.weight"] and fine_tune["unexpected"] == []
        assert fine_tune["backbone_kept"] and fine_tune["head_shape"] == [5, TINY["hidden_size"]]
        assert 0.01 < fine_tune["head_std"] < 0.03 and fine_tune["head_bias"] == 0.0  # initializer_range 0.02


def test_conv_stem_gives_the_same_token_grid_and_trains():
    """The convolutional stem replaces the patch projection only: same tokens, any power-of-two patch size; it
    learns (one SGD step lowers the loss on a fixed batch) and saves and loads like the rest."""
    for patch_size, image_size in ((2, 8), (4, 32), (8, 32), (16, 64)):
        config = tiny_config(image_size=image_size, patch_size=patch_size, patch_embedding_type="conv_stem",
                             label_level="label_6")
        embeddings = ViTYogaModel(config).embeddings(pixels(size=image_size))
        assert embeddings.shape == (2, (image_size // patch_size) ** 2 + 1, TINY["hidden_size"])
    model = ViTYogaForImageClassification(tiny_config(patch_embedding_type="conv_stem", label_level="label_6"))
    # Each image is normalised on its own: an example's output does not depend on its batch, even in training, so
    # gradients do not depend on how a batch is split across processes.
    torch.testing.assert_close(model.train()(pixels()).logits[:1], model(pixels()[:1]).logits)
    labels = torch.tensor([1, 4])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model(pixels(), labels=labels).loss
    before.backward()
    optimizer.step()
    assert model(pixels(), labels=labels).loss < before
