"""The ONNX export (python -m vit_yoga.export): what a user deploying a checkpoint relies on.

The exported graph answers as the PyTorch model does (every output within 1e-4, at any batch size), its
probabilities are tree-consistent (a parent's the sum of its children's), nothing is written when fp32 fails its
check or an argument is wrong, an int8 model short of the agreement asked for leaves the fp32 export written and the
command exits 1, and by default the checks run on the test split of the data set the checkpoint's run recorded
(calibration on its validation split), or the photos are asked for before any work.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX export needs onnxruntime: pip install -e '.[onnx]'")
pytest.importorskip("onnx", reason="the ONNX export needs onnx: pip install -e '.[onnx]'")

from conftest import load_script, save_checkpoint_as_train_py  # noqa: E402

import yoga82  # noqa: E402
from configuration_vit_yoga import ViTYogaConfig  # noqa: E402
from vit_yoga import export  # noqa: E402
from vit_yoga.arguments import DataArguments  # noqa: E402
from vit_yoga.data import DATA_RECORD_KEY, data_record  # noqa: E402
from vit_yoga.export import export_onnx, main  # noqa: E402
from vit_yoga.onnx_runtime import ort_session  # noqa: E402
from yoga_common.errors import UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_PHOTOS = ROOT.parent / "shared" / "real-photos" / "images"
# initializer_range 0.3: spread-out logits, so that a top-1 is decided by a margin, not by rounding.
TINY = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=96, initializer_range=0.3)


def save_checkpoint(folder: Path, kind: str = "joint", attn: str = "sdpa", stem: str = "standard", seed: int = 0,
                    label_level: str = "label_82") -> Path:
    """A tiny random checkpoint as train.py writes one: weights, config, code, processor, hierarchical pipeline.
    ``kind``: "joint" (a head per level), "single" (one head of ``label_level``) or "flat" (no hierarchy)."""
    labels: dict = {"num_labels": 5} if kind == "flat" else dict(yoga82.hierarchy())
    if kind == "single":
        labels["label_level"] = label_level
    if kind == "joint":  # as train.py names a joint model's logits: the finest level's classes
        labels["id2label"] = dict(enumerate(labels["hierarchy_class_names"][-1]))
    config = ViTYogaConfig(**TINY, **labels, patch_embedding_type=stem, attn_implementation=attn)
    return save_checkpoint_as_train_py(folder, config, seed)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six synthetic poses as PNG files (drawn offline, as the export's default check does)."""
    from yoga82.synthetic import draw_pose

    folder = tmp_path_factory.mktemp("photos")
    for index, label in enumerate((0, 11, 27, 40, 63, 81)):
        draw_pose(label, np.random.default_rng([1, label]), 48).save(folder / f"pose_{index}.png")
    return folder


def check_sources(photos: Path) -> list[Path]:
    """The synthetic photos, and a few real ones when ../shared/real-photos is here."""
    return [photos, REAL_PHOTOS] if REAL_PHOTOS.is_dir() else [photos]


def torch_outputs(checkpoint: Path, pixel_values: torch.Tensor) -> dict[str, np.ndarray]:
    """What PyTorch answers, loaded as a user loads the checkpoint, named as the ONNX outputs."""
    import modeling_vit_yoga

    architecture = ViTYogaConfig.from_pretrained(checkpoint).architectures[0]
    model = getattr(modeling_vit_yoga, architecture).from_pretrained(checkpoint).eval()
    with torch.no_grad():
        output = model(pixel_values, return_dict=True)
        probabilities = model.tree_probabilities(pixel_values)
    from modeling_vit_yoga import predicted_levels

    named = {"logits": output.logits}
    if output.get("level_logits") is not None:
        named |= {f"logits_{level}": t for level, t in zip(model.config.hierarchy_levels, output.level_logits,
                                                                        strict=True)}
    named |= {f"probabilities_{level}": p for level, p in zip(predicted_levels(model.config), probabilities,
                                                             strict=True)}
    return {name: t.numpy() for name, t in named.items()}


CASES = {
    "joint-sdpa-standard": ("joint", "sdpa", "standard", {}),
    "label_20-eager-conv_stem": ("single", "eager", "conv_stem", {"label_level": "label_20"}),
    "label_82-sdpa-conv_stem": ("single", "sdpa", "conv_stem", {}),
    "flat-eager-standard": ("flat", "eager", "standard", {}),
    "joint-sdpa-conv_stem-dynamo": ("joint", "sdpa", "conv_stem", {}),
}
# Two cases cover every attention, both stems and both kinds of head fast; the rest (and the dynamo exporter, 20 s
# on 2 cores) run with the slow tests.
SLOW_CASES = {"label_82-sdpa-conv_stem", "flat-eager-standard", "joint-sdpa-conv_stem-dynamo"}
EXPECTED_OUTPUTS = {
    "joint": ["logits", "logits_label_6", "logits_label_20", "logits_label_82", "probabilities_label_6",
              "probabilities_label_20", "probabilities_label_82"],
    "label_20": ["logits", "probabilities_label_6", "probabilities_label_20"],
    "label_82": ["logits", "probabilities_label_6", "probabilities_label_20", "probabilities_label_82"],
    "flat": ["logits", "probabilities_label"],
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c
                                  for c in sorted(CASES)])
def test_every_attention_and_stem_exports_equal_to_pytorch_at_any_batch_size(case, tmp_path, photos):
    kind, attn, stem, extra = CASES[case]
    checkpoint = save_checkpoint(tmp_path / "model", kind, attn, stem, **extra)
    exporter = "dynamo" if case.endswith("dynamo") else "torchscript"
    results = export_onnx(checkpoint, tmp_path / "onnx", check_images=check_sources(photos), check_limit=4,
                          attn_implementation=attn, exporter=exporter)

    folder = tmp_path / "onnx"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.onnx", "config.json", "configuration_vit_yoga.py", "preprocessor_config.json", "labels.json",
         "export_results.json"])
    session = ort_session(folder / "model.onnx")
    names = [output.name for output in session.get_outputs()]
    assert names == EXPECTED_OUTPUTS[extra.get("label_level", kind).replace("single", "label_82")]
    assert results["attn_implementation"] == attn and results["patch_embedding_type"] == stem
    for source, checks in results["checks"].items():
        assert checks["images"] >= 4, source
        assert max(checks["fp32"]["max_abs_difference"].values()) <= 1e-4
        assert min(checks["fp32"]["top1_agreement"].values()) == 1.0

    labels = json.loads((folder / "labels.json").read_text())
    config = ViTYogaConfig.from_pretrained(checkpoint)
    if kind != "flat":
        assert labels["levels"] == config.hierarchy_levels
        assert [labels["names"][level] for level in labels["levels"]] == config.hierarchy_class_names
        assert [labels["parents"][level] for level in labels["levels"][1:]] == config.hierarchy_parents
    else:
        assert labels["names"] == {"label": [config.id2label[i] for i in range(5)]}
    assert set(labels["outputs"]) == set(names)

    # Batches of 1 and 3 (the graph was traced with 2): every output equal to PyTorch's.
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        pixel_values = torch.randn(batch, 3, 32, 32, generator=generator)
        expected = torch_outputs(checkpoint, pixel_values)
        got = dict(zip(names, session.run(None, {"pixel_values": pixel_values.numpy()}), strict=True))
        assert set(got) == set(expected)
        for name in names:
            assert got[name].shape == expected[name].shape, name
            np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=0, err_msg=name)

    # The exported probabilities are a distribution at every level, and every parent's is its children's sum.
    probabilities = {labels["outputs"][n]: got[n] for n in names if n.startswith("probabilities_")}
    for level, p in probabilities.items():
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5, err_msg=level)
    for level, parents in labels["parents"].items():
        if level in probabilities:
            parent_level = labels["levels"][labels["levels"].index(level) - 1]
            sums = np.zeros_like(probabilities[parent_level])
            np.add.at(sums.T, parents, probabilities[level].T)
            np.testing.assert_allclose(probabilities[parent_level], sums, atol=1e-5, err_msg=level)


def test_int8_model_is_smaller_and_a_failed_fp32_check_writes_nothing(tmp_path, photos):
    checkpoint = save_checkpoint(tmp_path / "model", "single")
    output = tmp_path / "onnx"
    # A tolerance below float32's rounding: the fp32 check fails, so nothing may appear (not even the int8 model
    # asked for, nor a temporary) and the command exits 2.
    with pytest.raises(UsageError, match="nothing was written.*differs from PyTorch by"):
        export_onnx(checkpoint, output, quantize="dynamic", check_images=[photos], calibration_images="synthetic",
                    calibration_limit=16, tolerance=1e-12)
    assert main(["--model", str(checkpoint), "--output_dir", str(output), "--check_images", str(photos),
                 "--tolerance", "1e-12"]) == 2
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    results = export_onnx(checkpoint, output, quantize="dynamic", check_images=[photos], int8_min_agreement=0.0,
                          calibration_images="synthetic", calibration_limit=16)
    fp32, int8 = (output / "model.onnx").stat().st_size, (output / "model_int8.onnx").stat().st_size
    assert int8 < 0.75 * fp32 and results["int8"]["written"] is True
    agreement = results["checks"][str(photos)]["int8"]["top1_agreement"]
    assert set(agreement) == {"logits"} and 0.0 <= agreement["logits"] <= 1.0
    session = ort_session(output / "model_int8.onnx")
    assert [o.name for o in session.get_outputs()] == EXPECTED_OUTPUTS["label_82"]
    # Only the network is quantised: the int8 model's probabilities still add up exactly along the tree.
    labels = json.loads((output / "labels.json").read_text())
    six, twenty, eighty_two = session.run(None, {"pixel_values": torch.randn(3, 3, 32, 32).numpy()})[1:]
    for coarse, fine, parents in ((six, twenty, labels["parents"]["label_20"]),
                                  (twenty, eighty_two, labels["parents"]["label_82"])):
        sums = np.zeros_like(coarse)
        np.add.at(sums.T, parents, fine.T)
        np.testing.assert_allclose(coarse, sums, atol=1e-6)

    # Written once: a second export into the same folder is refused without overwrite.
    with pytest.raises(UsageError, match="--overwrite"):
        export_onnx(checkpoint, output, check_images=[photos])


def test_int8_keeps_the_layer_whose_quantisation_flips_answers_in_fp32(tmp_path, photos):
    """One layer made hostile to int8 (a weight 400x the others: per-tensor int8 rounds the rest of that matrix to
    a few levels) must be the first kept in fp32, chosen on the calibration images, and the check images must then
    agree at the required share; every other layer stays int8."""
    import onnx

    checkpoint = save_checkpoint(tmp_path / "model", "single")
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    hostile = "vit.layers.1.mlp.fc1.weight"
    assert hostile in weights, sorted(weights)
    weights[hostile][0, 0] = 400 * weights[hostile].abs().max()
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})

    results = export_onnx(checkpoint, tmp_path / "onnx", quantize="dynamic", check_images=[photos],
                          calibration_images="synthetic", calibration_limit=48)
    int8 = results["int8"]
    assert int8["calibration_images"] == 48 and int8["calibration_source"] == "synthetic"
    assert int8["calibration_agreement_all_int8"] < int8["calibration_aim"] == pytest.approx(0.995)
    assert int8["fp32_layers"][0] == "/model/vit/layers.1/mlp/fc1/MatMul", int8["fp32_layers"]
    assert int8["calibration_agreement"] >= 0.995 and len(int8["fp32_layers"]) <= int8["layers"] // 2
    assert results["checks"][str(photos)]["int8"]["top1_agreement"]["logits"] >= 0.99
    graph = onnx.load(str(tmp_path / "onnx" / "model_int8.onnx")).graph
    float_matmuls = {node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")}
    assert set(int8["fp32_layers"]) <= float_matmuls
    assert sum(node.op_type == "MatMulInteger" for node in graph.node) == int8["layers"] - len(int8["fp32_layers"])
    exported = json.loads((tmp_path / "onnx" / "export_results.json").read_text())
    assert exported["int8"]["fp32_layers"] == int8["fp32_layers"]


def test_bad_arguments_are_refused_with_the_fix_before_any_work(tmp_path, photos, capsys):
    checkpoint = save_checkpoint(tmp_path / "model", "flat")
    cases = [
        (dict(quantize="static"), "only 'dynamic'"),
        (dict(opset=12), "--opset 12"),
        (dict(check_images=[tmp_path / "nowhere"]), "is not a folder"),
        (dict(check_images=[tmp_path / "model"]), "holds no images"),
        (dict(attn_implementation="flash_attention_2"), "ONNX has no such kernel"),
        (dict(exporter="jit"), "--exporter jit"),
        (dict(quantize="dynamic", calibration_images=tmp_path / "nowhere"), "--calibration_images"),
        (dict(quantize="dynamic", calibration_limit=0), "--calibration_limit 0"),
        (dict(check_limit=0), "--check_limit 0"),
        (dict(quantize="dynamic", int8_min_agreement=99.0), "--int8_min_agreement 99.0: give a share from 0 to 1"),
        (dict(attention_maps=True, attn_implementation="sdpa"), "only eager attention returns its weights"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=re.escape(message)):
            export_onnx(checkpoint, tmp_path / "out", **{"check_images": [photos], **kwargs})
    with pytest.raises(UsageError, match="not a ViTYoga checkpoint.*optimum"):
        from transformers import ViTConfig, ViTForImageClassification

        ViTForImageClassification(ViTConfig(**{k: v for k, v in TINY.items() if k != "initializer_range"})
                                  ).save_pretrained(tmp_path / "hf-vit")
        export_onnx(tmp_path / "hf-vit", tmp_path / "out", check_images=[photos])
    assert not (tmp_path / "out").exists()

    capsys.readouterr()
    assert main(["--model", str(checkpoint), "--output_dir", str(tmp_path / "model"),
                 "--check_images", str(photos)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "--overwrite" in error[0]


# --------------------------------------------------------------------------------------------------------------
# The photos the checks run on by default: the data set the checkpoint's run recorded
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(poses, tmp_path_factory) -> Path:
    """A joint model trained by train.py for one step on the tiny prepared poses (conftest: 82 test and 82 validation
    images, 32 px): a weakly trained model, whose run records its data set."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    load_script("train.py")["main"]([
        "--dataset_name", str(poses), "--output_dir", str(folder), "--label_level", "all", "--model_preset", "vit-pico",
        "--config_overrides", "hidden_size=48,num_hidden_layers=2,num_attention_heads=3,intermediate_size=96",
        "--image_size", "32", "--max_steps", "1", "--learning_rate", "1e-3", "--per_device_train_batch_size", "8",
        "--max_train_samples", "8", "--max_eval_samples", "8", "--eval_strategy", "no", "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--seed", "9", "--report_to", "none"])
    return folder


@pytest.mark.slow  # on a model train.py trains (one step, end to end)
def test_the_default_photos_are_the_test_and_validation_splits_of_the_runs_data_set(trained, poses, tmp_path,
                                                                                    monkeypatch):
    import datasets

    record = json.loads((trained / "all_results.json").read_text())[DATA_RECORD_KEY]
    assert record["dataset_name"] == str(poses.resolve()) and record["seed"] == 9
    seen = []  # every photo the export prepares, in order
    monkeypatch.setattr(export, "load_photo", lambda image: seen.append(np.asarray(image)) or image.convert("RGB"))

    results = export_onnx(trained, tmp_path / "onnx", quantize="dynamic", int8_min_agreement=0.0,
                          calibration_limit=20)
    test, validation = f"{poses.resolve()}[test]", f"{poses.resolve()}[validation]"
    assert list(results["checks"]) == [test] and results["checks"][test]["images"] == 82
    assert results["int8"]["calibration_source"] == validation and results["int8"]["calibration_images"] == 20
    assert (tmp_path / "onnx" / "model_int8.onnx").is_file()
    # The photos themselves: all of the test split for the checks, then 20 spread over the validation split.
    splits = datasets.load_dataset(str(poses))
    expected = [np.asarray(row["image"]) for row in splits["test"]]
    expected += [np.asarray(splits["validation"][int(i)]["image"]) for i in np.linspace(0, 81, 20).round()]
    assert len(seen) == len(expected) == 102
    assert all(np.array_equal(got, want) for got, want in zip(seen, expected, strict=True))


@pytest.mark.slow  # on a model train.py trains (one step, end to end)
def test_int8_short_of_the_agreement_writes_the_fp32_model_and_exits_1(trained, tmp_path, capsys):
    """The one-step model's near-tied answers flip in int8 (4 of its 82 test photos here, with 4 of 8 layers kept
    fp32): int8 is not written, the fp32 model that matched PyTorch is, the command says what it measured, why, and
    the flags, and exits with status 1."""
    output = tmp_path / "onnx"
    capsys.readouterr()
    status = main(["--model", str(trained), "--output_dir", str(output), "--quantize", "dynamic"])
    captured = capsys.readouterr()
    assert status == 1, captured.err[-2000:]
    assert sorted(p.name for p in output.iterdir()) == [
        "config.json", "configuration_vit_yoga.py", "export_results.json", "labels.json", "model.onnx",
        "preprocessor_config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no temporary left beside it
    int8 = json.loads((output / "export_results.json").read_text())["int8"]
    assert int8["written"] is False and int8["min_agreement"] == 0.99
    (shortfall,) = int8["shortfalls"]
    assert shortfall["images"] == 82 and shortfall["agreement"] < 0.99
    assert f"wrote {output}" in captured.out and "int8 (not written)" in captured.out
    message = captured.err.strip().splitlines()[-1]
    for words in (f"agreement {shortfall['agreement']:.1%} of 82 images", "< 99%", "near-tied", "not a faulty export",
                  "--int8_min_agreement", "--calibration_images"):
        assert words in message, message
    session = ort_session(output / "model.onnx")  # what was written runs
    assert session.run(["logits"], {"pixel_values": np.zeros((1, 3, 32, 32), np.float32)})[0].shape == (1, 82)
    from vit_yoga.onnx_runtime import OnnxHierarchicalClassifier

    with pytest.raises(UsageError, match=rf"int8 graph was not written.*{shortfall['agreement']:.1%}"):
        OnnxHierarchicalClassifier(output, int8=True)  # and what runs it says why there is no int8 graph


def write_record(checkpoint: Path, data_args: DataArguments) -> Path:
    """The record train.py writes into all_results.json for a run on ``data_args``."""
    (checkpoint / "all_results.json").write_text(json.dumps({DATA_RECORD_KEY: data_record(data_args, 42)}))
    return checkpoint


def test_a_model_trained_on_the_synthetic_poses_is_checked_on_them(tmp_path):
    checkpoint = write_record(save_checkpoint(tmp_path / "model", "single"), DataArguments())  # no data set given
    results = export_onnx(checkpoint, tmp_path / "onnx", check_limit=8, quantize="dynamic", int8_min_agreement=0.0,
                          calibration_limit=8)
    assert list(results["checks"]) == ["synthetic"] and results["checks"]["synthetic"]["images"] == 8
    assert results["int8"]["calibration_source"] == "synthetic" and results["int8"]["calibration_images"] == 8


@pytest.mark.parametrize("case", ["hub data set", "moved data set", "no record", "hub model"])
def test_photos_that_cannot_be_found_are_asked_for_before_any_work(case, tmp_path, monkeypatch, capsys):
    checkpoint = save_checkpoint(tmp_path / "model", "single")
    model, message = str(checkpoint), {
        "hub data set": "trained on the Hub data set someone/yoga82, which cannot be loaded offline",
        "moved data set": f"{tmp_path / 'gone'}, which is not there any more",
        "no record": "records no data set",
        "hub model": "is not a local folder",
    }[case]
    if case == "hub data set":
        write_record(checkpoint, DataArguments(dataset_name="someone/yoga82"))
    elif case == "moved data set":
        write_record(checkpoint, DataArguments(dataset_name=str(tmp_path / "gone")))
    elif case == "hub model":
        model = "someone/vit-yoga"

    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the photos were found")

    monkeypatch.setattr(export, "load_checkpoint", no_work)
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        export_onnx(model, tmp_path / "onnx", quantize="dynamic")
    assert "pass --check_images DIR and --calibration_images DIR" in str(error.value)
    with pytest.raises(UsageError, match="pass --calibration_images DIR \\("):  # the checks' photos given
        export_onnx(model, tmp_path / "onnx", quantize="dynamic", check_images=["synthetic"])
    capsys.readouterr()
    assert main(["--model", model, "--output_dir", str(tmp_path / "onnx")]) == 2
    assert "pass --check_images DIR (" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()


def test_a_model_trained_on_image_folders_is_checked_on_its_test_folder(tmp_path):
    """--train_dir/--test_dir runs: the checks take --test_dir, the calibration the validation images the run held
    out of --train_dir (the same ones: the run's seed)."""
    from PIL import Image

    for split, count in (("train", 10), ("test", 3)):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (20, 20), (index * 20, label == "b" and 200 or 0, 0)).save(
                    tmp_path / split / label / f"{index}.png")
    checkpoint = write_record(save_checkpoint(tmp_path / "model", "flat"),
                              DataArguments(train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test")))
    sources = export.recorded_sources(checkpoint, ["test", "validation"])
    assert str(sources["test"]) == str(tmp_path / "test") and len(sources["test"].rows) == 6
    assert str(sources["validation"]) == f"{tmp_path / 'train'}[validation]" and len(sources["validation"].rows) == 2
