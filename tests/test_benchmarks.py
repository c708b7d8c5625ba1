"""Smoke tests of the benchmarks: one tiny round each, the JSON a user reads has its numbers; no timing asserted."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_model  # noqa: E402
import gpu  # noqa: E402

TINY = ["--preset", "vit-pico", "--batch-size", "2", "--rounds", "1", "--steps", "1", "--warmup", "1"]


@pytest.mark.slow
def test_bench_model_times_all_three_and_writes_the_ratios(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert bench_model.main([*TINY, "--memory", "none", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["throughput"]) == {"vit-yoga", "transformers", "timm"}
    for numbers in report["throughput"].values():
        assert numbers["train_images_per_s"] > 0 and numbers["infer_images_per_s"] > 0
    for other in ("transformers", "timm"):
        for mode in ("train", "infer"):
            assert report["ratios"][f"{mode}_vs_{other}"] > 0
            assert report["ratios_cpu_time"][f"{mode}_vs_{other}"] > 0
    assert report["machine"]["device"].startswith("CPU")
    assert report["flops_per_image"]["train"] == pytest.approx(3 * report["flops_per_image"]["forward"])
    assert "ours/theirs train_vs_timm" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_model_measures_peak_memory_in_a_fresh_process(tmp_path):
    out = tmp_path / "memory.json"
    argv = [*TINY, "--modes", "infer", "--implementations", "vit-yoga", "--memory", "peak", "--json", str(out)]
    assert bench_model.main(argv) == 0  # one subprocess only: each one imports torch and transformers (seconds)
    memory = json.loads(out.read_text())["memory"]["vit-yoga"]
    assert memory["peak_bytes"] > memory["parameter_bytes"] > 0


@pytest.mark.slow
def test_gradient_checkpointing_memory_worker_reports_activations():
    args = bench_model.parse_args([*TINY, "--memory-worker", "vit-yoga", "--grad-ckpt"])
    numbers = bench_model.memory_worker(args)
    assert set(numbers) >= {"peak_bytes", "step_bytes", "activation_bytes", "parameter_bytes"}


def test_bench_model_refuses_bad_flags(capsys):
    with pytest.raises(SystemExit):
        bench_model.parse_args(["--batch-size", "0"])
    assert "--batch-size must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
def test_gpu_benchmark_refuses_cleanly_without_cuda(capsys):
    with pytest.raises(SystemExit) as raised:
        gpu.parse_args([])
    assert raised.value.code != 0
    assert "--device cpu --tiny" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu.main(["--device", "cpu", "--tiny", "--no-compile"]) == 0
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["matmul_tflops"] > 0
    assert {row["model"] for row in result["rows"]} == {"vit-yoga", "transformers", "timm"}
    for row in result["rows"]:
        assert row["train_tflops"] > 0 and 0 < row["train_share_of_matmul"]
    assert any("share of matmul rate" in key for key in result["targets"])
    assert "TFLOP/s" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_data_times_the_pipelines_and_the_dataloader(tmp_path):
    pytest.importorskip("datasets")  # train.py needs it; the GPU machine has no datasets and runs gpu.py only
    import bench_data

    out = tmp_path / "data.json"
    argv = ["--num-images", "3", "--measure-images", "3", "--rounds", "1", "--workers", "1", "--batch-size", "2",
            "--image-dir", str(tmp_path / "images"), "--json", str(out)]
    assert bench_data.main(argv) == 0
    report = json.loads(out.read_text())
    for image_set in ("prepared", "web"):
        assert report["per_worker"][image_set]["train"]["images_per_s"] > 0
        assert report["ratios"][image_set]["train_vs_vit-image-processor"] > 0
        assert report["dataloader"][image_set]["1"] > 0
    assert len(list((tmp_path / "images" / "web").glob("*.jpg"))) == 3


@pytest.mark.slow
def test_bench_learning_smoke_runs_the_reference_and_train_py_on_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    import bench_learning

    out = tmp_path / "learning.json"
    argv = ["--smoke", "--tasks", "digits", "--recipes", "--work_dir", str(tmp_path), "--json", str(out)]
    assert bench_learning.main(argv) == 0
    report = json.loads(out.read_text())
    assert [row["run"] for row in report["rows"]] == ["plain loop, transformers ViT (no augmentation)",
                                                      "train.py, defaults (--hflip 0)",
                                                      "train.py, defaults, no crop (--hflip 0 --train_crop none)"]
    assert all(0 <= row["accuracy"] <= 1 and row["train_s"] > 0 for row in report["rows"])
    # the digits as a user's image folder: 80/20, stratified, 10 classes
    train = list((tmp_path / "digits" / "train").glob("*/*.png"))
    validation = list((tmp_path / "digits" / "validation").glob("*/*.png"))
    assert (len(train), len(validation)) == (1437, 360)
    assert len({path.parent.name for path in validation}) == 10
    assert "| digits | train.py, defaults (--hflip 0) |" in capsys.readouterr().out
