"""train.py end to end on tiny synthetic poses: each level, hierarchy fine-tuning, two processes, resume, push."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT as PROJECT
from conftest import load_script, tiny_args
from huggingface_hub import HfApi
from PIL import Image
from safetensors.torch import load_file

import yoga82
from configuration_vit_yoga import ViTYogaConfig
from modeling_vit_yoga import ViTYogaForHierarchicalClassification, ViTYogaForImageClassification
from vit_yoga.arguments import DataArguments, ModelArguments
from vit_yoga.data import Labels, hierarchy_of_dataset
from vit_yoga.models import build_model
from vit_yoga.outputs import last_complete_checkpoint
from yoga_common.errors import UsageError

train_main = load_script("train.py")["main"]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture
def group_umask():
    """umask 027, as on a shared machine where a group reads each other's runs; restored afterwards."""
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


@pytest.mark.slow
def test_level1_then_fine_tune_level3_from_its_backbone(poses, tmp_path, caplog, group_umask):
    level1 = tmp_path / "level1"
    out = train_main(tiny_args(poses, level1, "--label_level", "1", "--recipe", "report"))
    # Every file the run wrote, weights and checkpoints included, has the umask's permissions (safetensors: 0600).
    modes = {p.relative_to(level1).as_posix(): p.stat().st_mode & 0o777 for p in level1.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and any(name.startswith("checkpoint-") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o640} == {}
    assert set(out["results"]) == {"validation", "test"}
    files = {p.name for p in level1.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_vit_yoga.py", "modeling_vit_yoga.py",
            "preprocessor_config.json", "README.md", "all_results.json", "eval_results.json", "test_results.json",
            "training_curves.png", "confusion_test_label_6.png", "pipeline_vit_yoga.py"} <= files
    assert not list(level1.glob("*.bin")) and not list(level1.glob("*.pt"))  # no pickle in a shared repo
    test_results = read_json(level1 / "test_results.json")
    assert 0.0 <= test_results["test_accuracy"] <= 1.0 and "test_top5_accuracy" in test_results
    assert set(test_results["test_per_level"]["label_6"]["per_class_accuracy"]) <= {
        "Standing", "Sitting", "Balancing", "Inverted", "Reclining", "Wheel"}
    config1 = read_json(level1 / "config.json")
    assert config1["label_level"] == "label_6" and config1["id2label"]["5"] == "Wheel"
    assert config1["hidden_dropout_prob"] == 0.1  # the report's recipe
    # The hierarchical pipeline ships in the folder and in each checkpoint (tests/test_hierarchy.py loads it).
    assert "hierarchical-image-classification" in config1["custom_pipelines"]
    checkpoints = list(level1.glob("checkpoint-*"))
    assert checkpoints and all((c / "pipeline_vit_yoga.py").is_file() for c in checkpoints)

    # Fine-tuning on level 3: the backbone is level 1's, the head is new, the lineage is recorded.
    data_args = DataArguments(dataset_name=str(poses), label_level="3")
    model_args = ModelArguments(init_from=str(level1))
    dataset = datasets.load_dataset(str(poses))
    names = [dataset["train"].features["label_82"].names]
    with caplog.at_level(logging.WARNING, logger="vit_yoga"):
        model = build_model(model_args, data_args, Labels(["label_82"], names, hierarchy_of_dataset(dataset)))
    assert "the head is new (82 classes" in caplog.text
    level1_weights = load_file(level1 / "model.safetensors")
    for name, tensor in model.vit.state_dict().items():
        torch.testing.assert_close(tensor, level1_weights[f"vit.{name}"])
    assert model.classifier.out_features == 82 and model.config.init_lineage[-1]["head"] == "re-initialised"

    level3 = tmp_path / "level3"
    train_main(tiny_args(poses, level3, "--label_level", "3", "--init_from", str(level1)))
    config3 = read_json(level3 / "config.json")
    assert config3["label_level"] == "label_82" and config3["init_lineage"][0]["label_level"] == "label_6"
    card = (level3 / "README.md").read_text()
    assert str(level1) in card and "re-initialised" in card and "model-index" in card
    assert "Optimiser adamw_torch" in card and "OptimizerNames" not in card  # the flag's value, as a user types it
    results3 = read_json(level3 / "test_results.json")
    assert {"test_implied_label_20_accuracy", "test_implied_label_6_accuracy"} <= set(results3)


@pytest.mark.slow
def test_level2_and_all_levels(poses, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # without --output_dir, the run goes to runs/level2
    args = tiny_args(poses, tmp_path / "unused", "--label_level", "2")
    out = train_main(args[:2] + args[4:])
    assert out["results"]["test"]["label_20"]["num_examples"] == 82
    assert (tmp_path / "runs" / "level2" / "model.safetensors").exists()
    assert not (tmp_path / "trainer_output").exists()

    out = train_main(tiny_args(poses, tmp_path / "all", "--label_level", "all"))
    levels = out["results"]["test"]
    assert set(levels) == {"label_6", "label_20", "label_82"}
    assert "implied_label_6_accuracy" in levels["label_82"]
    config = read_json(tmp_path / "all" / "config.json")
    assert config["architectures"] == ["ViTYogaForHierarchicalClassification"]
    assert config["auto_map"]["AutoModelForImageClassification"].endswith("ViTYogaForHierarchicalClassification")
    assert config["display_names"]["Tree_Pose_or_Vrksasana_"] == "Tree Pose (Vrksasana)"  # the names people read
    assert set(config["display_names"]) == {n for names in config["hierarchy_class_names"] for n in names}
    eval_results = read_json(tmp_path / "all" / "eval_results.json")
    assert {"eval_label_6_accuracy", "eval_label_20_top5_accuracy", "eval_accuracy"} <= set(eval_results)
    model = ViTYogaForHierarchicalClassification.from_pretrained(tmp_path / "all")
    assert [head.out_features for head in model.classifiers] == [6, 20, 82]


FRESH_PIPELINE = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline
    folder, image = sys.argv[1], sys.argv[2]
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    classify = pipeline("image-classification", model=folder, trust_remote_code=True)
    print(json.dumps({"class": type(model).__name__, "labels": [p["label"] for p in classify(image, top_k=2)]}))
    """
)


@pytest.mark.slow
def test_push_uploads_exactly_the_folder_and_a_failed_push_keeps_it(poses, tmp_path, monkeypatch, caplog):
    commits = []

    def fake_create_commit(self, repo_id, operations, **kwargs):
        commits.append((repo_id, sorted(op.path_in_repo for op in operations)))
        if repo_id.endswith("broken"):
            raise ConnectionError("the Hub is unreachable")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: repo_id)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    secret = "hf_DoNotLogThisTokenAnywhere1234"
    out_dir = tmp_path / "pushed"
    with caplog.at_level(logging.INFO):
        train_main(tiny_args(poses, out_dir, "--label_level", "1", "--save_total_limit", "1", "--push_to_hub",
                             "--hub_model_id", "me/vit-yoga-level1", "--hub_token", secret))
    repo_id, paths = commits[0]
    assert repo_id == "me/vit-yoga-level1"
    assert {"model.safetensors", "config.json", "modeling_vit_yoga.py", "configuration_vit_yoga.py",
            "preprocessor_config.json", "README.md", "all_results.json", "training_curves.png"} <= set(paths)
    assert not any(p.startswith("checkpoint-") or p.endswith((".bin", ".pt")) for p in paths)
    assert set(paths) == {str(p.relative_to(out_dir)) for p in out_dir.rglob("*")
                          if p.is_file() and not p.relative_to(out_dir).parts[0].startswith("checkpoint-")}

    broken = tmp_path / "broken"
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_info:
        train_main(tiny_args(poses, broken, "--label_level", "1", "--push_to_hub", "--hub_model_id", "me/broken",
                             "--hub_token", secret, "--num_train_epochs", "1"))
    assert exit_info.value.code == 1  # a script or CI job must not believe the model was shared
    assert "hf upload me/broken" in caplog.text  # the retry command
    assert "Upload to the Hub repo 'me/broken' failed" in caplog.text and "the Hub is unreachable" in caplog.text
    assert secret not in caplog.text
    assert (broken / "model.safetensors").exists() and (broken / "README.md").exists()
    # No token in any file either: checkpoints' training_args.bin (a pickle of the arguments) included.
    written = [p for folder in (out_dir, broken) for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    assert not [p for p in written if secret.encode() in p.read_bytes()]

    # The pushed folder is what users download: it loads in a fresh process, pipeline included.
    image = tmp_path / "pose.png"
    Image.fromarray(np.full((40, 30, 3), 200, dtype=np.uint8)).save(image)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", FRESH_PIPELINE, str(out_dir), str(image)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] == "ViTYogaForImageClassification"
    assert set(report["labels"]) <= {"Standing", "Sitting", "Balancing", "Inverted", "Reclining", "Wheel"}


def run_train(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    # The same thread count as this process: a different one sums in another order, and runs drift apart.
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.Popen([sys.executable, str(PROJECT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(poses, tmp_path):
    args = ["--label_level", "1", "--save_total_limit", "3"]
    straight = tmp_path / "straight"
    train_main(tiny_args(poses, straight, *args, epochs=3))

    killed = tmp_path / "killed"
    process = run_train(tiny_args(poses, killed, *args, epochs=3), tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and last_complete_checkpoint(str(killed)) is None:
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no clean-up, as when a notebook's time runs out
    process.wait()
    assert not (killed / "all_results.json").exists()
    checkpoint = Path(last_complete_checkpoint(str(killed)))
    saved = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}
    train_main(tiny_args(poses, killed, *args, "--resume_from_checkpoint", "latest", epochs=3))
    # It continued from the checkpoint's step: the checkpoint was read, not written again (a run that ignored it
    # would redo those steps, save them there, and still end equal to the straight run).
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == saved
    state = read_json(killed / "trainer_state.json")
    assert state["global_step"] == read_json(straight / "trainer_state.json")["global_step"]
    for name in ("eval_results.json", "test_results.json"):
        a, b = read_json(straight / name), read_json(killed / name)
        for key in ("eval_accuracy", "eval_loss", "test_accuracy", "test_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
    weights_a, weights_b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert max((weights_a[k] - weights_b[k]).abs().max().item() for k in weights_a) < 1e-4


RANK_REPORT = textwrap.dedent(
    """
    import json, os, runpy, sys
    sys.path.insert(0, {project!r})
    out = runpy.run_path(os.path.join({project!r}, "train.py"))["main"](sys.argv[1:])
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(out["output_dir"], f"rank{{rank}}.json"), "w") as f:
        json.dump(out["results"], f)
    """
)


@pytest.mark.slow
def test_two_processes_through_accelerate_agree(poses, tmp_path):
    script = tmp_path / "train_and_report.py"
    script.write_text(RANK_REPORT.format(project=str(PROJECT)))
    out_dir = tmp_path / "ddp"
    # On the CPU whatever the machine has: --multi_gpu gives rank 1 cuda:1, which a one-GPU machine lacks.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
               *tiny_args(poses, out_dir, "--label_level", "1")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rank0, rank1 = read_json(out_dir / "rank0.json"), read_json(out_dir / "rank1.json")
    assert rank0 == rank1  # metrics are computed over all processes' predictions
    assert rank0["validation"]["label_6"]["num_examples"] == 82  # the whole split, no duplicates from padding
    state = read_json(out_dir / "trainer_state.json")
    assert state["max_steps"] == 3  # 164 training images over 2 processes x 32 per step: one run, not two copies


# ---------------------------------------------------------------- errors a user can cause, before training


def make_image_folder(root: Path) -> Path:
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20, 3), 60 * i, dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label_column", "pose"], "needs the column 'pose'"),
        (["--label_level", "2", "--image_column", "photo"], "--image_column 'photo' is not in the data set"),
        (["--model_preset", "vit-xxl"], "--model_preset 'vit-xxl' is unknown"),
        (["--config_overrides", "hidden_size=50"], "not divisible by num_attention_heads"),
        (["--resume_from_checkpoint", "latest"], "no complete checkpoint"),
        (["--early_stopping_patience", "3", "--load_best_model_at_end", "False"],
         r"--early_stopping_patience 3 needs --load_best_model_at_end True"),
    ],
)
def test_bad_flags_fail_before_training(poses, tmp_path, extra, message, capsys):
    with pytest.raises(UsageError, match=message):
        train_main(tiny_args(poses, tmp_path / "out", *extra))


def test_help_lists_the_model_presets(capsys, monkeypatch):
    from configuration_vit_yoga import VIT_YOGA_PRESETS
    from vit_yoga.arguments import parse_arguments

    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: argparse wraps help text at hyphens too
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"--model_preset MODEL_PRESET, --model-preset MODEL_PRESET Model size: one of {sorted(VIT_YOGA_PRESETS)}" \
        in text


def test_resuming_another_folders_checkpoint_into_a_used_folder_is_refused(poses, tmp_path):
    """--output_dir B --resume_from_checkpoint A/checkpoint-N would mix A's continuation with B's run: refused like
    any other used folder, before any work, and B is left as it was."""
    checkpoint = tmp_path / "A" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    used = tmp_path / "B"
    used.mkdir()
    (used / "all_results.json").write_text("{}")
    with pytest.raises(UsageError, match=r"holds files of another run .*belongs to the run in .*A: continuing it "
                                         r"here would mix two runs"):
        train_main(tiny_args(poses, used, "--resume_from_checkpoint", str(checkpoint)))
    assert [p.name for p in used.iterdir()] == ["all_results.json"]


def test_image_folder_without_yoga_levels(tmp_path):
    folder = make_image_folder(tmp_path / "pets")
    with pytest.raises(UsageError, match="lacks .*pass --label_column label"):
        train_main(tiny_args(tmp_path, tmp_path / "out", "--label_level", "3", "--train_dir", str(folder)))
    parquet = tmp_path / "no_images"
    parquet.mkdir()
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(parquet / "train.parquet")
    with pytest.raises(UsageError, match="has no image column"):
        train_main(tiny_args(parquet, tmp_path / "out2", "--label_column", "label"))


def test_checkpoint_that_cannot_be_used(poses, tmp_path):
    level1 = tmp_path / "level1"
    config = ViTYogaConfig.from_preset("vit-pico", image_size=32, label_level="label_6", **yoga82.hierarchy())
    ViTYogaForImageClassification(config).save_pretrained(level1)
    with pytest.raises(UsageError, match="is a 32 px model but 64 px was asked for"):
        train_main(tiny_args(poses, tmp_path / "o1", "--init_from", str(level1), "--image_size", "64"))
    other = ViTYogaConfig.from_preset("vit-pico", image_size=32, hierarchy_levels=["label_6", "label_20"],
                                            hierarchy_class_names=[["a", "b"], ["c", "d"]],
                                            hierarchy_parents=[[0, 1]])
    ViTYogaForImageClassification(other).save_pretrained(tmp_path / "other")
    with pytest.raises(UsageError, match="another label hierarchy"):
        train_main(tiny_args(poses, tmp_path / "o2", "--init_from", str(tmp_path / "other")))


@pytest.mark.slow
def test_string_labels_of_another_data_set_get_class_names(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(12)]
    rows = {"photo": images, "pose": ["tree", "crow_pose_or_bakasana", "plank"] * 4}
    folder = tmp_path / "poses"
    folder.mkdir()
    datasets.Dataset.from_dict(rows).cast_column("photo", datasets.Image()).to_parquet(folder / "train.parquet")
    train_main(tiny_args(folder, tmp_path / "out", "--label_column", "pose", "--validation_fraction", "0.25"))
    config = read_json(tmp_path / "out" / "config.json")
    assert sorted(config["id2label"].values()) == ["crow_pose_or_bakasana", "plank", "tree"]
    assert config["display_names"]["crow_pose_or_bakasana"] == "crow pose (bakasana)"  # folder names, readable
    assert config["label_level"] is None and config["hierarchy_levels"] == []


@pytest.mark.slow
def test_fine_tune_from_a_converted_transformers_vit(poses, tmp_path):
    """The ImageNet route: convert_vit_checkpoint.py's output is a valid --init_from (its normalisation kept)."""
    from transformers import ViTConfig, ViTForImageClassification

    source = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
                                                 num_attention_heads=3, intermediate_size=96, num_labels=10))
    source.save_pretrained(tmp_path / "hf")
    convert_main = load_script("convert_vit_checkpoint.py")["main"]
    assert convert_main(["--source", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "in1k")]) == 0
    out_dir = tmp_path / "from_in1k"
    train_main(tiny_args(poses, out_dir, "--label_level", "1", "--init_from", str(tmp_path / "in1k")))
    config = read_json(out_dir / "config.json")
    assert len(config["id2label"]) == 6
    assert config["init_lineage"][0]["num_labels"] == 10 and config["init_lineage"][0]["head"] == "re-initialised"
    assert config["layer_norm_eps"] == 1e-12  # the source's, not our default
    weights = load_file(out_dir / "model.safetensors")
    assert weights["classifier.weight"].shape == (6, 48)
    with pytest.raises(UsageError, match="'vit' checkpoint, not a ViTYoga one; convert it first"):
        train_main(tiny_args(poses, tmp_path / "raw", "--init_from", str(tmp_path / "hf")))
