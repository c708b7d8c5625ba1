"""train.py computes the right numbers: the losses and gradients theory gives, at any process layout; every flag
honoured in any spelling; honest exits; output folders that hold one run. Each test pins a number computed here by
hand from the same weights and images, not only agreement between two runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import PROJECT_ROOT, load_script
from PIL import Image
from safetensors.torch import load_file

import yoga82
from configuration_vit_yoga import ViTYogaConfig
from modeling_vit_yoga import ViTYogaForHierarchicalClassification, ViTYogaForImageClassification
from vit_yoga.data import LEVEL_COLUMNS
from vit_yoga.transforms import TrainingTransform
from yoga_common.errors import UsageError

train_main = load_script("train.py")["main"]

TINY = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=96, hidden_dropout_prob=0.0)
TINY_OVERRIDES = "image_size=32,patch_size=8,hidden_size=48,num_hidden_layers=2,num_attention_heads=3," \
                 "intermediate_size=96"
CLASSES = {"label_6": 6, "label_20": 20, "label_82": 82}
N_TRAIN = 32  # one optimizer step sees the whole (truncated) train split, whatever the layout


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def init_checkpoint(folder: Path, label_level: str) -> Path:
    """A fresh tiny model of Yoga-82's hierarchy, saved: every layout starts from exactly these weights."""
    torch.manual_seed(0)
    if label_level == "all":
        model = ViTYogaForHierarchicalClassification(ViTYogaConfig(**TINY, **yoga82.hierarchy()))
    else:
        column = LEVEL_COLUMNS[label_level][0]
        model = ViTYogaForImageClassification(ViTYogaConfig(**TINY, **yoga82.hierarchy(), label_level=column))
    model.save_pretrained(folder)
    return folder


def deterministic_flags(poses: Path, init: Path, out: Path, label_level: str, *extra: str) -> list[str]:
    """No augmentation, no dropout, plain SGD with lr 1, no clipping, one step: the update is exactly -gradient."""
    return [
        "--dataset_name", str(poses), "--init_from", str(init), "--output_dir", str(out), "--label_level", label_level,
        "--max_train_samples", str(N_TRAIN), "--max_eval_samples", "32", "--train_crop", "none", "--hflip", "0",
        "--rand_augment_ops", "0", "--optim", "sgd", "--learning_rate", "1.0", "--lr_scheduler_type", "constant",
        "--weight_decay", "0", "--max_grad_norm", "0", "--max_steps", "1", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "False", "--early_stopping_patience", "0",
        "--dataloader_num_workers", "0", "--per_device_eval_batch_size", "16", "--seed", "0", *extra,
    ]


def split_batch(poses: Path, split: str, count: int, columns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` examples of a split as train.py feeds them (no augmentation: train = evaluation)."""
    rows = datasets.load_dataset(str(poses))[split].select(range(count))
    rows = rows.cast_column("image", datasets.Image(decode=False))
    transform = TrainingTransform(32, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    pixels = torch.stack([transform(image) for image in rows["image"]])
    labels = torch.tensor([[row[c] for c in columns] for row in rows], dtype=torch.long)
    return pixels, labels


def level_logits(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = model(pixel_values=pixels)
    return out.level_logits if hasattr(out, "level_logits") else (out.logits,)


def mean_loss(logits: tuple[torch.Tensor, ...], labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Per-example mean of the sum over levels of the cross-entropy: the loss theory asks for."""
    return sum(F.cross_entropy(level, labels[:, i], label_smoothing=smoothing) for i, level in enumerate(logits))


def load_model(folder: Path) -> torch.nn.Module:
    config = ViTYogaConfig.from_pretrained(folder)
    cls = ViTYogaForHierarchicalClassification if "ViTYogaForHierarchicalClassification" in config.architectures \
        else ViTYogaForImageClassification
    return cls.from_pretrained(folder).eval()


def expected_step(init: Path, poses: Path, columns: list[str], smoothing: float = 0.0):
    """The loss at the initial weights on the whole train batch, and the weights one SGD step (lr 1) later."""
    model = load_model(init)
    pixels, labels = split_batch(poses, "train", N_TRAIN, columns)
    loss = mean_loss(level_logits(model, pixels), labels, smoothing)
    loss.backward()
    stepped = {name: (p - p.grad).detach() for name, p in model.named_parameters()}
    return loss.item(), stepped


TWO_PROCESSES = textwrap.dedent(
    """
    import os, runpy, sys
    sys.path.insert(0, {project!r})
    runpy.run_path(os.path.join({project!r}, "train.py"))["main"](sys.argv[1:])
    """
)


def two_cpu_processes_env() -> dict[str, str]:
    """Two processes on the CPU (gloo), on any machine: ``accelerate launch --multi_gpu --num_processes 2`` gives rank
    i the device cuda:i, which a machine with one GPU lacks (rank 1 failed there); with no GPU visible both ranks run
    on the CPU, as on a machine without one, and the exact fp32 comparisons below hold everywhere."""
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def run_two_processes(tmp_path: Path, args: list[str]) -> None:
    script = tmp_path / "train_two.py"
    script.write_text(TWO_PROCESSES.format(project=str(PROJECT_ROOT)))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args]
    result = subprocess.run(command, cwd=tmp_path, env=two_cpu_processes_env(), capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("label_level", ["2", "all"])
def test_one_step_is_the_exact_mean_gradient_at_any_process_layout(poses, tmp_path, label_level):
    """(a) 1 process, batch 32; (b) 2 processes through accelerate launch (gloo), batch 16 each; (c) 1 process, batch
    16, 2 accumulation steps: each step equals the hand-computed SGD step on the mean loss of the same 32 examples,
    and the logged train and eval losses are per-example means (ln K at initialisation, not K x processes)."""
    # The two-process layout runs for the joint model (three heads, the summed loss): the single head's loss is the
    # same code's one-level case, and a second accelerate launch costs 12-19 s of the suite's 8 minutes.
    columns = LEVEL_COLUMNS[label_level]
    init = init_checkpoint(tmp_path / "init", label_level)
    loss0, stepped = expected_step(init, poses, columns)
    chance = sum(math.log(CLASSES[c]) for c in columns)
    assert loss0 == pytest.approx(chance, abs=0.2)  # a fresh model is close to uniform: ln 20, or ln 6+ln 20+ln 82

    layouts = {
        "one_batch": ["--per_device_train_batch_size", "32"],
        "accumulated": ["--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "2"],
        "two_processes": ["--per_device_train_batch_size", "16"],
    }
    if label_level != "all":
        del layouts["two_processes"]
    for name, extra in layouts.items():
        args = deterministic_flags(poses, init, tmp_path / name, label_level, *extra)
        if name == "two_processes":
            run_two_processes(tmp_path, args)
        else:
            train_main(args)

    val_pixels, val_labels = split_batch(poses, "validation", 32, columns)
    for name in layouts:
        out = tmp_path / name
        weights = load_file(out / "model.safetensors")
        assert weights.keys() == stepped.keys(), name
        for key, expected in stepped.items():
            torch.testing.assert_close(weights[key], expected, rtol=1e-4, atol=2e-6, msg=f"{name}: {key}")
        assert read_json(out / "train_results.json")["train_loss"] == pytest.approx(loss0, rel=1e-5), name
        with torch.no_grad():
            eval_loss = mean_loss(level_logits(load_model(out), val_pixels), val_labels).item()
        assert read_json(out / "eval_results.json")["eval_loss"] == pytest.approx(eval_loss, rel=1e-4), name
        assert eval_loss == pytest.approx(chance, abs=0.5), name


@pytest.mark.slow
def test_label_smoothing_smooths_every_level_of_the_training_loss_only(poses, tmp_path):
    """--label_smoothing_factor (TrainingArguments' own flag) trains on smoothed targets at every level; the
    evaluation loss stays the plain cross-entropy, comparable across recipes."""
    columns = LEVEL_COLUMNS["all"]
    init = init_checkpoint(tmp_path / "init", "all")
    smoothed0, stepped = expected_step(init, poses, columns, smoothing=0.1)
    out = tmp_path / "smoothed"
    train_main(deterministic_flags(poses, init, out, "all", "--per_device_train_batch_size", "32",
                                   "--label_smoothing_factor", "0.1"))
    assert read_json(out / "train_results.json")["train_loss"] == pytest.approx(smoothed0, rel=1e-5)
    weights = load_file(out / "model.safetensors")
    for key, expected in stepped.items():
        torch.testing.assert_close(weights[key], expected, rtol=1e-4, atol=2e-6, msg=key)
    val_pixels, val_labels = split_batch(poses, "validation", 32, columns)
    with torch.no_grad():
        plain = mean_loss(level_logits(load_model(out), val_pixels), val_labels).item()
    assert read_json(out / "eval_results.json")["eval_loss"] == pytest.approx(plain, rel=1e-4)


@pytest.mark.slow
def test_train_accuracy_counts_training_batches_only_and_cpu_logs_are_quiet(poses, tmp_path, recwarn):
    """With the weights frozen (lr 0), every epoch's train_accuracy is the model's accuracy on the train rows,
    computed here; the model scores differently on the evaluation rows, so evaluation batches leaking into the count
    change it. No pin_memory warning on a machine without GPU."""
    init = init_checkpoint(tmp_path / "init", "3")
    train_labels = split_batch(poses, "train", N_TRAIN, ["label_82"])[1][:, 0]
    val_labels = split_batch(poses, "validation", 32, ["label_82"])[1][:, 0]
    # A head that always answers the train rows' most common pose: accuracy 2/32 there, 0 or 1/32 on validation.
    favourite = int(torch.mode(train_labels).values)
    model = load_model(init)
    with torch.no_grad():
        model.classifier.bias[favourite] = 100.0
    model.save_pretrained(init)
    out = tmp_path / "frozen"
    args = deterministic_flags(poses, init, out, "3", "--per_device_train_batch_size", "16", "--learning_rate", "0",
                               "--max_steps", "-1", "--num_train_epochs", "3", "--eval_strategy", "epoch",
                               "--logging_strategy", "epoch")
    train_main(args)

    def accuracy(split: str, count: int) -> float:
        pixels, labels = split_batch(poses, split, count, ["label_82"])
        with torch.no_grad():
            return (load_model(init)(pixel_values=pixels).logits.argmax(-1) == labels[:, 0]).float().mean().item()

    on_train, on_validation = accuracy("train", N_TRAIN), accuracy("validation", 32)
    assert on_train == (train_labels == favourite).float().mean().item() > 0  # the head does what it should
    assert abs(on_validation - on_train) > 0.02  # so a count that mixes in evaluation rows is off by over 0.01
    assert on_validation == (val_labels == favourite).float().mean().item()
    history = read_json(out / "trainer_state.json")["log_history"]
    logged = [e["train_accuracy"] for e in history if "train_accuracy" in e]
    assert len(logged) == 3 and logged == [pytest.approx(on_train, abs=1e-4)] * 3
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]


def test_training_accuracy_counting_never_waits_for_the_device(poses, tmp_path):
    """No .item() per step (a host sync on GPUs) and no float64 (Apple's MPS has none) in the training-step count."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from vit_yoga.trainer import YogaTrainer

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops, self.dtypes = set(), set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            self.ops.add(str(func))
            self.dtypes.update(t.dtype for t in (result if isinstance(result, (tuple, list)) else [result])
                               if isinstance(t, torch.Tensor))
            return result

    model = load_model(init_checkpoint(tmp_path / "init", "3")).train()
    from transformers import TrainingArguments

    trainer = YogaTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True))
    pixels, labels = split_batch(poses, "train", 4, ["label_82"])
    with Recorder() as recorder:
        trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels[:, 0]})
    assert "aten._local_scalar_dense.default" not in recorder.ops  # what .item() dispatches to
    assert torch.float64 not in recorder.dtypes


@pytest.mark.slow
def test_metric_for_best_model_eval_loss_keeps_the_lowest_loss(poses, tmp_path):
    """greater_is_better follows the metric (TrainingArguments infers it): a loss is best when lowest."""
    init = init_checkpoint(tmp_path / "init", "3")
    out = tmp_path / "by_loss"
    train_main(deterministic_flags(poses, init, out, "3", "--per_device_train_batch_size", "16", "--optim",
                                   "adamw_torch", "--learning_rate", "3e-3", "--max_steps", "-1",
                                   "--num_train_epochs", "4", "--eval_strategy", "epoch", "--save_strategy", "epoch",
                                   "--load_best_model_at_end", "True", "--metric_for_best_model", "eval_loss",
                                   "--save_total_limit", "5"))
    state = read_json(out / "trainer_state.json")
    losses = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e][:4]
    assert len(set(losses)) > 1
    assert state["best_metric"] == pytest.approx(min(losses))
    assert read_json(out / "eval_results.json")["eval_loss"] == pytest.approx(min(losses), rel=1e-4)


@pytest.mark.slow
def test_early_stopping_patience_survives_a_resume(poses, tmp_path):
    """Frozen weights (lr 0): no evaluation improves on the first. Patience 3 over 3 epochs leaves the count at 2;
    resumed for 10 epochs, the run must stop at epoch 4, not start counting again (epoch 6). The resumed invocation
    is given other initial weights (--init_from): a run that ignored the checkpoint would evaluate those, and a
    fresh seeded run stops at epoch 4 too, so the evaluation at epoch 4 must be the checkpoint's weights'."""
    init = init_checkpoint(tmp_path / "init", "3")
    out = tmp_path / "patient"
    base = deterministic_flags(poses, init, out, "3", "--per_device_train_batch_size", "16", "--learning_rate", "0",
                               "--max_steps", "-1", "--eval_strategy", "epoch", "--save_strategy", "epoch",
                               "--load_best_model_at_end", "True", "--early_stopping_patience", "3",
                               "--save_total_limit", "5")
    train_main([*base, "--num_train_epochs", "3"])
    state = read_json(out / "trainer_state.json")
    assert state["epoch"] == 3
    first_losses = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert len(first_losses) == 3 and len(set(first_losses)) == 1  # frozen
    checkpoint = Path(state["best_model_checkpoint"]).parent / f"checkpoint-{state['global_step']}"
    saved = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}

    torch.manual_seed(1)
    other = ViTYogaForImageClassification(ViTYogaConfig(**TINY, **yoga82.hierarchy(), label_level="label_82"))
    other.save_pretrained(tmp_path / "other")
    resume = [*base, "--num_train_epochs", "10", "--resume_from_checkpoint", "latest"]
    resume[resume.index("--init_from") + 1] = str(tmp_path / "other")
    # The finished run's folder is its own: resuming it from its last checkpoint is allowed.
    train_main(resume)
    state = read_json(out / "trainer_state.json")
    assert state["epoch"] == 4
    evaluations = [(e["epoch"], e["eval_loss"]) for e in state["log_history"] if "eval_loss" in e]
    assert evaluations == [(epoch, pytest.approx(first_losses[0], rel=1e-6)) for epoch in (1, 2, 3, 4)]
    # The checkpoint it continued from was read, not written again: the steps before it were not redone.
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == saved


@pytest.mark.slow
def test_flags_win_over_the_defaults_in_any_spelling(tmp_path, monkeypatch):
    """The synthetic poses' CPU-sized defaults never override a flag: --config_overrides, hyphenated and abbreviated
    flags, a JSON file of flags; and --init_from accepts the same overrides, refuses architecture changes, applies
    regularisation ones."""
    monkeypatch.setenv("VIT_YOGA_CACHE", str(tmp_path / "cache"))
    data = ["--synthetic_images_per_class", "4", "--synthetic_image_size", "32", "--seed", "1"]
    small = tmp_path / "small"
    train_main([*data, "--config_overrides", TINY_OVERRIDES, "--output-dir", str(small),
                "--per-device-train-batch-size", "16", "--num_train_ep", "1", "--dataloader-num-workers", "0"])
    config, state = read_json(small / "config.json"), read_json(small / "trainer_state.json")
    assert (config["image_size"], config["hidden_size"], config["num_hidden_layers"]) == (32, 48, 2)
    assert (state["train_batch_size"], state["num_train_epochs"]) == (16, 1)

    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps({"synthetic_images_per_class": 4, "synthetic_image_size": 32, "label_level": "1",
                                 "config_overrides": TINY_OVERRIDES, "output_dir": str(tmp_path / "from_json"),
                                 "per_device_train_batch_size": 8, "max_steps": 2}))
    train_main([str(flags)])
    state = read_json(tmp_path / "from_json" / "trainer_state.json")
    assert (state["train_batch_size"], state["max_steps"]) == (8, 2)

    fine = [*data, "--init_from", str(small), "--max_steps", "1", "--dataloader_num_workers", "0"]
    train_main([*fine, "--config_overrides", TINY_OVERRIDES + ",hidden_dropout_prob=0.3,drop_path_rate=0.1",
                "--output_dir", str(tmp_path / "fine")])
    config = read_json(tmp_path / "fine" / "config.json")
    assert (config["hidden_dropout_prob"], config["drop_path_rate"], config["image_size"]) == (0.3, 0.1, 32)
    with pytest.raises(UsageError, match=r"is a model with hidden_size=48 but hidden_size=64 was asked for"):
        train_main([*fine, "--config_overrides", "hidden_size=64", "--output_dir", str(tmp_path / "wide")])
    with pytest.raises(UsageError, match=r"is a 32 px model but 64 px was asked for \(image_size"):
        train_main([*fine, "--image_size", "64", "--output_dir", str(tmp_path / "big")])
    with pytest.raises(UsageError, match=r"drop_path_rate must be in \[0, 1\)"):
        train_main([*fine, "--config_overrides", "drop_path_rate=1.5", "--output_dir", str(tmp_path / "bad")])


@pytest.mark.slow
def test_an_output_folder_holds_one_run(poses, tmp_path):
    """A folder of another run is refused, or with --overwrite_output_dir replaced: the final folder holds only the
    new run's files."""
    init = init_checkpoint(tmp_path / "init1", "1")
    out = tmp_path / "runs"
    base = ["--per_device_train_batch_size", "16", "--eval_strategy", "epoch", "--save_strategy", "epoch",
            "--max_steps", "-1", "--num_train_epochs", "1"]
    train_main(deterministic_flags(poses, init, out, "1", *base))
    assert (out / "confusion_test_label_6.png").exists()
    level2 = deterministic_flags(poses, init_checkpoint(tmp_path / "init2", "2"), out, "2", *base)
    with pytest.raises(UsageError, match=r"already holds files of another run .*--overwrite_output_dir"):
        train_main(level2)
    train_main([*level2, "--overwrite_output_dir"])
    names = {p.name for p in out.iterdir()}
    assert "confusion_test_label_20.png" in names and "confusion_test_label_6.png" not in names
    assert set(read_json(out / "all_results.json")["test_per_level"]) == {"label_20"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".runs")]  # the previous run, removed at the end


def test_do_predict_needs_a_test_split(tmp_path):
    folder = tmp_path / "no_test"
    folder.mkdir()
    rows = {"image": [Image.new("RGB", (8, 8))] * 4, "label": [0, 1, 0, 1]}
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).to_parquet(folder / "train.parquet")
    with pytest.raises(UsageError, match="--do_predict asks for a test evaluation, but .* has no 'test' split"):
        train_main(["--dataset_name", str(folder), "--label_column", "label", "--do_predict",
                    "--output_dir", str(tmp_path / "out")])
