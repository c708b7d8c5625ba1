"""pretrain.py: the losses theory gives, the momentum teacher, any process layout, resume, the k-NN reading, and a
backbone checkpoint that loads anywhere and that train.py fine-tunes."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import PROJECT_ROOT, load_script
from huggingface_hub import HfApi
from PIL import Image
from safetensors.torch import load_file
from transformers import set_seed

from configuration_vit_yoga import ViTYogaConfig
from modeling_vit_yoga import ViTYogaModel
from vit_yoga.outputs import last_complete_checkpoint
from vit_yoga.pretraining import PretrainArguments, build_self_supervised, warn_if_collapsed, weighted_knn_top1
from vit_yoga.self_supervised import (
    SelfSupervisedViews,
    SelfSupervisedViT,
    ViewsTransform,
    contrastive_loss,
    distillation_loss,
)
from vit_yoga.trainer import YogaTrainer, layer_index
from yoga_common.errors import UsageError

pretrain_main = load_script("pretrain.py")["main"]
train_main = load_script("train.py")["main"]

TINY = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=96, patch_embedding_type="conv_stem")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def tiny_backbone(folder: Path) -> Path:
    """A fresh tiny backbone, saved: every run below starts from exactly these weights."""
    torch.manual_seed(0)
    ViTYogaModel(ViTYogaConfig(**TINY)).save_pretrained(folder)
    return folder


def pretrain_args(poses: Path, out: Path, *extra: str, init: Path | None = None) -> list[str]:
    return ["--dataset_name", str(poses), "--output_dir", str(out), "--per_device_train_batch_size", "16",
            "--per_device_eval_batch_size", "64", "--dataloader_num_workers", "0", "--seed", "3",
            *(["--init_from", str(init)] if init else ["--model_preset", "vit-pico", "--config_overrides",
                                                         "hidden_size=48,num_hidden_layers=2,intermediate_size=96",
                                                         "--image_size", "32"]), *extra]


# ------------------------------------------------------------------------------------------ the losses, by hand
def test_contrastive_loss_equals_the_hand_computation_and_ln_2n_minus_1_when_all_views_agree():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    temperature = 0.5
    views = F.normalize(torch.cat([a, b]), dim=-1)
    expected = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        others = [j for j in range(6) if j != i]  # never the view itself
        logits = torch.stack([views[i] @ views[j] / temperature for j in others])
        expected += -(views[i] @ views[positive] / temperature - torch.logsumexp(logits, 0))
    assert contrastive_loss(a, b, temperature).item() == pytest.approx(expected.item() / 6, rel=1e-6)
    same = torch.ones(5, 4)  # every similarity equal: the positive is one of 2N - 1 equal candidates
    assert contrastive_loss(same, same, 0.2).item() == pytest.approx(math.log(2 * 5 - 1), rel=1e-6)


def test_distillation_loss_equals_the_hand_computation_over_pairs_of_different_views():
    torch.manual_seed(1)
    student = torch.randn(4, 3, 5)  # 2 global + 2 local views, batch 3, 5 outputs
    teacher = F.softmax(torch.randn(2, 3, 5), dim=-1)
    expected, pairs = 0.0, 0
    for i in range(2):
        for j in range(4):
            if i != j:
                expected += -(teacher[i] * F.log_softmax(student[j] / 0.1, dim=-1)).sum(-1).mean()
                pairs += 1
    assert pairs == 6
    assert distillation_loss(student, teacher, 0.1).item() == pytest.approx(expected.item() / pairs, rel=1e-6)


def test_a_fresh_model_starts_near_ln_2n_minus_1_on_real_views(poses):
    rows = datasets.load_dataset(str(poses), split="train").select(range(32))
    rows = rows.cast_column("image", datasets.Image(decode=False))
    views = ViewsTransform(SelfSupervisedViews(32, (0.5,) * 3, (0.5,) * 3), seed=0)
    batch = views({"image": rows["image"], "index": list(range(32))})
    torch.manual_seed(0)
    model = SelfSupervisedViT(ViTYogaModel(ViTYogaConfig(**TINY)), "simclr")
    loss = model(pixel_values=torch.stack(batch["pixel_values"]))["loss"].item()
    assert loss == pytest.approx(math.log(2 * 32 - 1), abs=0.25)


def test_views_follow_the_image_seed_alone():
    image = Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy())
    views = SelfSupervisedViews(32, (0.5,) * 3, (0.5,) * 3, local_views=2, local_size=16)
    torch.manual_seed(123)
    first = views(image, seed=7)
    after = torch.rand(1)
    torch.manual_seed(999)
    again = views(image, seed=7)
    torch.manual_seed(123)
    assert torch.rand(1) == after  # the global random state is left as it was
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    assert torch.equal(first["local_pixel_values"], again["local_pixel_values"])
    assert first["pixel_values"].shape == (2, 3, 32, 32) and first["local_pixel_values"].shape == (2, 3, 16, 16)
    assert not torch.equal(views(image, seed=8)["pixel_values"], first["pixel_values"])


# ---------------------------------------------------------------------------------------------- the teacher
def test_the_teacher_is_the_momentum_average_of_the_student_and_gets_no_gradient():
    torch.manual_seed(0)
    model = SelfSupervisedViT(ViTYogaModel(ViTYogaConfig(**TINY)), "dino", out_dim=64, teacher_momentum=0.9)
    teacher_before = {k: v.clone() for k, v in model.teacher_backbone.state_dict().items()}
    pixels = torch.randn(4, 2, 3, 32, 32)
    local = torch.randn(4, 2, 3, 16, 16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.teacher_backbone.parameters())
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    teacher_out = model._embed(model.teacher_backbone, model.teacher_head, pixels).detach()
    model.train()
    model(pixel_values=pixels, local_pixel_values=local)["loss"].backward()
    assert all(p.grad is None for p in [*model.teacher_backbone.parameters(), *model.teacher_head.parameters()])
    # The centre moved by (1 - 0.9) of the batch's mean teacher output.
    torch.testing.assert_close(model.center, 0.1 * teacher_out.mean(dim=(0, 1)), rtol=1e-5, atol=1e-7)
    optimizer.step()
    model.progress = 0.5
    momentum = model.update_teacher()
    assert momentum == pytest.approx(1 - 0.1 * (math.cos(math.pi * 0.5) + 1) / 2)
    student = model.backbone.state_dict()
    for key, value in model.teacher_backbone.state_dict().items():
        torch.testing.assert_close(value, momentum * teacher_before[key] + (1 - momentum) * student[key])
    assert any(not torch.equal(model.teacher_backbone.state_dict()[k], teacher_before[k]) for k in teacher_before)


# ---------------------------------------------------------------------------------------- k-NN and collapse
def test_weighted_knn_votes_with_exp_similarity_over_temperature():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # k = 2: the two nearest are classes 0 and 1, class 0 the more similar: it wins.
    assert weighted_knn_top1(bank, labels, query, torch.tensor([0]), k=2) == 1.0
    # k = 3: class 1 adds the orthogonal vector's exp(~0.05 / 0.07) ~ 2: still class 0 (exp(~1/0.07) dominates).
    assert weighted_knn_top1(bank, labels, query, torch.tensor([0]), k=3) == 1.0
    # With a huge temperature every neighbour weighs ~1: two votes for class 1 win.
    assert weighted_knn_top1(bank, labels, query, torch.tensor([1]), k=3, temperature=1e6) == 1.0


def test_collapse_is_flagged_only_when_knn_stays_at_initialisation(caplog):
    start = {"eval_knn_top1": 0.20, "eval_feature_spread": 0.6}
    collapsed = [start, {"eval_knn_top1": 0.21, "eval_feature_spread": 0.1}]
    with caplog.at_level(logging.WARNING):
        assert warn_if_collapsed(collapsed, step=50, max_steps=100)
    assert "collapsed" in caplog.text and "0.2" in caplog.text
    assert not warn_if_collapsed(collapsed, step=10, max_steps=100)  # too early to tell
    learning = [start, {"eval_knn_top1": 0.35, "eval_feature_spread": 0.1}]
    assert not warn_if_collapsed(learning, step=50, max_steps=100)
    uniform_teacher = [start, {"teacher_entropy": 0.99}, {"eval_knn_top1": 0.2, "eval_feature_spread": 0.6}]
    assert warn_if_collapsed(uniform_teacher, step=50, max_steps=100)


def test_layer_decay_gives_each_depth_its_rate(poses, tmp_path):
    from transformers import TrainingArguments

    from modeling_vit_yoga import ViTYogaForImageClassification

    model = ViTYogaForImageClassification(ViTYogaConfig(**TINY, num_labels=3))
    args = TrainingArguments(str(tmp_path), learning_rate=1.0, weight_decay=0.1, report_to=[])
    args.layer_decay = 0.5
    optimizer = YogaTrainer(model=model, args=args).create_optimizer()
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, parameter in model.named_parameters():
        depth = layer_index(name, 2)
        assert rate[id(parameter)] == 0.5 ** (3 - depth), name
    assert layer_index("vit.embeddings.cls_token", 2) == 0 and layer_index("vit.layers.1.mlp.fc1.weight", 2) == 2
    assert layer_index("classifier.weight", 2) == 3
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


# ----------------------------------------------------------------------------------------- the command line
def test_mistakes_are_refused_before_any_work(poses, tmp_path):
    with pytest.raises(UsageError, match="--local_views 2 is DINO's"):
        pretrain_main(pretrain_args(poses, tmp_path / "a", "--local_views", "2"))
    with pytest.raises(UsageError, match="--extra_images .* is not a folder"):
        pretrain_main(pretrain_args(poses, tmp_path / "b", "--extra_images", str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="--extra_images .*empty holds no readable image files"):
        pretrain_main(pretrain_args(poses, tmp_path / "d", "--extra_images", str(tmp_path / "empty")))
    with pytest.raises(UsageError, match="--global_views 1"):
        pretrain_main(pretrain_args(poses, tmp_path / "c", "--global_views", "1"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


DETERMINISTIC = ["--max_train_samples", "32", "--max_eval_samples", "16", "--optim", "sgd", "--learning_rate", "1.0",
                 "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--weight_decay", "0", "--max_grad_norm",
                 "0", "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no"]

TWO_PROCESSES = textwrap.dedent(
    """
    import os, runpy, sys
    sys.path.insert(0, {project!r})
    runpy.run_path(os.path.join({project!r}, "pretrain.py"))["main"](sys.argv[1:])
    """
)


def expected_simclr_step(poses: Path, init: Path) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of the 32 images' views at the initial weights, and the backbone one SGD step (lr 1) later, computed
    here in one process from the same views (each image's seed: the run's, epoch 0, its index)."""
    set_seed(3)
    model = build_self_supervised(ViTYogaModel.from_pretrained(init), PretrainArguments())
    rows = datasets.load_dataset(str(poses), split="train").select(range(32))
    views = ViewsTransform(SelfSupervisedViews(32, (0.5,) * 3, (0.5,) * 3), seed=3)
    batch = views({"image": rows.cast_column("image", datasets.Image(decode=False))["image"],
                   "index": list(range(32))})
    loss = model(pixel_values=torch.stack(batch["pixel_values"]))["loss"]
    loss.backward()
    return loss.item(), {k: (p - p.grad).detach() for k, p in model.backbone.named_parameters()}


@pytest.mark.slow
def test_two_processes_give_the_loss_and_step_of_one_process_with_the_whole_batch(poses, tmp_path):
    """Each process's views meet every process's negatives (gathered with their gradients): 2 processes of 16 take
    exactly the step of 1 process of 32, and both the step computed here by hand; the loss starts near ln 63."""
    init = tiny_backbone(tmp_path / "init")
    loss0, stepped = expected_simclr_step(poses, init)
    assert loss0 == pytest.approx(math.log(63), abs=0.25)
    one = tmp_path / "one"
    pretrain_main(pretrain_args(poses, one, *DETERMINISTIC, "--per_device_train_batch_size", "32", init=init))
    script = tmp_path / "pretrain_two.py"
    script.write_text(TWO_PROCESSES.format(project=str(PROJECT_ROOT)))
    two = tmp_path / "two"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
               *pretrain_args(poses, two, *DETERMINISTIC, init=init)]
    result = subprocess.run(command, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES=""),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    for out in (one, two):
        weights = load_file(out / "model.safetensors")
        assert weights.keys() == stepped.keys()
        for key, expected in stepped.items():
            torch.testing.assert_close(weights[key], expected, rtol=1e-4, atol=2e-6, msg=f"{out.name}: {key}")
        assert read_json(out / "train_results.json")["train_loss"] == pytest.approx(loss0, rel=1e-5), out.name


def run_pretrain(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "pretrain.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_dino_run_resumes_to_the_same_teacher_and_centre(poses, tmp_path):
    args = ["--method", "dino", "--local_views", "2", "--max_train_samples", "32", "--max_eval_samples", "16",
            "--num_train_epochs", "2"]
    straight = tmp_path / "straight"
    pretrain_main(pretrain_args(poses, straight, *args))
    killed = tmp_path / "killed"
    process = run_pretrain(pretrain_args(poses, killed, *args), tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline and last_complete_checkpoint(str(killed)) is None:
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "pretrain_results.json").exists()
    checkpoint = Path(last_complete_checkpoint(str(killed)))
    saved = load_file(checkpoint / "model.safetensors")
    assert {"center", "teacher_backbone.layernorm.weight"} <= saved.keys()  # the teacher is in the checkpoint
    pretrain_main(pretrain_args(poses, killed, *args, "--resume_from_checkpoint", "latest"))
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")  # the teachers
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    final_a = load_file(last_complete_checkpoint(str(straight)) + "/model.safetensors")
    final_b = load_file(last_complete_checkpoint(str(killed)) + "/model.safetensors")
    torch.testing.assert_close(final_a["center"], final_b["center"], rtol=1e-5, atol=1e-6)
    knn_a = read_json(straight / "pretrain_results.json")["evaluations"]
    knn_b = read_json(killed / "pretrain_results.json")["evaluations"]
    assert [e["eval_knn_top1"] for e in knn_a] == pytest.approx([e["eval_knn_top1"] for e in knn_b], abs=1e-6)
    assert len(knn_a) == 3  # at initialisation, then after each of the 2 epochs


@pytest.mark.slow
def test_the_backbone_loads_in_a_fresh_process_and_train_py_fine_tunes_it(poses, tmp_path, caplog, monkeypatch):
    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: repo_id)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: commits.append(
        (repo_id, sorted(op.path_in_repo for op in operations))))
    secret = "hf_DoNotLogThisTokenAnywhere1234"
    out = tmp_path / "backbone"
    extra = tmp_path / "extra"
    (extra / "nested").mkdir(parents=True)
    for i in range(5):
        Image.fromarray((torch.rand(48, 40, 3) * 255).byte().numpy()).save(extra / "nested" / f"{i}.png")
    with caplog.at_level(logging.INFO):
        result = pretrain_main(pretrain_args(poses, out, "--max_train_samples", "32", "--max_eval_samples", "16",
                                             "--num_train_epochs", "2", "--extra_images", str(extra), "--push_to_hub",
                                             "--hub_model_id", "me/backbone", "--hub_token", secret))
    # Pushed once, at the end: exactly the finished folder, no checkpoint, no pickle, no token anywhere.
    assert commits == [("me/backbone", sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                                              and not p.relative_to(out).parts[0].startswith("checkpoint-")))]
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in commits[0][1])
    assert secret not in caplog.text
    assert not [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    record = result["record"]
    assert record["training_images"] == 32 and record["extra_images"] == 5 and record["method"] == "simclr"
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_vit_yoga.py", "modeling_vit_yoga.py",
            "preprocessor_config.json", "README.md", "training_curves.png", "pretrain_results.json"} <= files
    evaluations = read_json(out / "pretrain_results.json")["evaluations"]
    assert [e["epoch"] for e in evaluations] == [0, 1, 2] and all("eval_knn_top1" in e for e in evaluations)
    card = (out / "README.md").read_text()
    assert "SimCLR" in card and "32 of the training split" in card and "5 unlabelled photos" in card
    code = textwrap.dedent(f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        torch.manual_seed(0)
        pixels = torch.randn(2, 3, 32, 32)
        print(type(model).__name__, model(pixel_values=pixels).pooler_output.sum().item())
    """)
    fresh = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    name, value = fresh.stdout.split()[-2:]
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ViTYogaModel.from_pretrained(out).eval()(pixel_values=pixels).pooler_output.sum().item()
    assert name == "ViTYogaModel" and float(value) == pytest.approx(expected, rel=1e-5)

    # The demo refuses a backbone with the fix, and never takes one for the newest finished run.
    app = load_script("app.py")
    with pytest.raises(UsageError, match="backbone pretrained by pretrain.py.*train.py --init_from"):
        app["load_served"](str(out), None)
    assert app["newest_run"](tmp_path) is None

    tuned = tmp_path / "tuned"
    with caplog.at_level(logging.INFO):
        run = train_main(["--dataset_name", str(poses), "--init_from", str(out), "--output_dir", str(tuned),
                          "--label_level", "1", "--num_train_epochs", "1", "--per_device_train_batch_size", "32",
                          "--dataloader_num_workers", "0", "--max_train_samples", "32", "--max_eval_samples", "16"])
    assert "fine-tuning recipe for a backbone pretrained by pretrain.py (simclr" in caplog.text
    assert "layer_decay=0.75" in caplog.text
    config = read_json(tuned / "config.json")
    assert config["init_lineage"][-1]["checkpoint"] == str(out) and config["label_level"] == "label_6"
    assert app["newest_run"](tmp_path) == tuned
    groups = run["trainer"].optimizer.param_groups
    rates = [g["initial_lr"] for g in groups]  # before the schedule: the head's rate and the embeddings' 0.75 ** 3
    assert min(rates) == pytest.approx(max(rates) * 0.75 ** 3) and max(rates) == pytest.approx(5e-4)
