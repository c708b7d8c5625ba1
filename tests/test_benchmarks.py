"""Smoke tests of the benchmarks, one per script at its tiniest setting: the script runs, and the JSON a reader relies
on holds together (one row per model, input or setting asked for, the documented keys, ratios in a sane range and
equal to the quotients they were computed from). No test asserts how fast anything is."""

import json
import sys

import pytest
import torch
from conftest import PROJECT_ROOT, save_tiny_checkpoint

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))

import bench_model  # noqa: E402
import gpu  # noqa: E402

TINY = ["--preset", "vit-pico", "--batch-size", "2", "--rounds", "1", "--steps", "1", "--warmup", "1"]
EXAMPLES = PROJECT_ROOT / "examples"


def sane(ratio: float) -> bool:
    """A speed ratio of two ways of doing the same work on the same machine: neither 20x the other."""
    return 0.05 < ratio < 20


# ------------------------------------------------------------------------------------------------ bench_model, gpu
@pytest.mark.slow
def test_bench_model_times_all_three_and_writes_the_ratios(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert bench_model.main([*TINY, "--threads", "1", "--memory", "none", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["throughput"]) == {"vit-yoga", "transformers", "timm"}
    ours = report["throughput"]["vit-yoga"]
    for name, numbers in report["throughput"].items():
        for mode in ("train", "infer"):
            assert len(numbers[f"{mode}_samples"]) == 1  # one per round
            assert numbers[f"{mode}_images_per_s"] == numbers[f"{mode}_samples"][0] > 0
        if name == "vit-yoga":
            continue
        for mode in ("train", "infer"):  # one round: the ratio is the quotient of that round's two throughputs
            ratio = report["ratios"][f"{mode}_vs_{name}"]
            assert ratio == pytest.approx(ours[f"{mode}_samples"][0] / numbers[f"{mode}_samples"][0])
            cpu_ratio = report["ratios_cpu_time"][f"{mode}_vs_{name}"]
            assert cpu_ratio == pytest.approx(ours[f"{mode}_cpu_samples"][0] / numbers[f"{mode}_cpu_samples"][0])
            # the same model three ways: within 20x of each other in CPU time (one step's wall time, a few ms, is
            # at the mercy of other processes on a loaded machine)
            assert sane(cpu_ratio)
    assert report["machine"]["device"].startswith("CPU")
    assert report["settings"]["preset"] == "vit-pico" and report["settings"]["batch_size"] == 2
    assert report["flops_per_image"]["train"] == pytest.approx(3 * report["flops_per_image"]["forward"])
    printed = capsys.readouterr().out
    assert "ours/theirs train_vs_timm" in printed and f"wrote {out}" in printed


@pytest.mark.slow
def test_bench_model_measures_peak_memory_in_a_fresh_process(tmp_path):
    out = tmp_path / "memory.json"
    argv = [*TINY, "--modes", "infer", "--implementations", "vit-yoga", "--memory", "peak", "--json", str(out)]
    assert bench_model.main(argv) == 0  # one subprocess only: each one imports torch and transformers (seconds)
    memory = json.loads(out.read_text())["memory"]["vit-yoga"]
    model = bench_model.build_model("vit-yoga", bench_model.make_config("vit-pico"))
    assert memory["parameter_bytes"] == 4 * sum(p.numel() for p in model.parameters())  # fp32
    assert memory["peak_bytes"] > memory["parameter_bytes"]
    assert memory["activation_bytes"] == memory["step_bytes"] - memory["parameter_bytes"]


@pytest.mark.slow
def test_gradient_checkpointing_memory_worker_reports_activations():
    args = bench_model.parse_args([*TINY, "--memory-worker", "vit-yoga", "--grad-ckpt"])
    numbers = bench_model.memory_worker(args)
    assert set(numbers) >= {"peak_bytes", "step_bytes", "activation_bytes", "parameter_bytes"}
    assert numbers["activation_bytes"] == numbers["step_bytes"] - numbers["parameter_bytes"]


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
    assert [(row["model"], row["preset"], row["compile"]) for row in result["rows"]] == [
        (model, "vit-pico", False) for model in ("vit-yoga", "transformers", "timm")]
    (report,) = result["reports"].values()
    for row in result["rows"]:  # TFLOP/s = images/s x FLOPs per image; the share is of the measured matmul rate
        for mode, flops in (("train", "train"), ("infer", "forward")):
            tflops = row[f"{mode}_images_per_s"] * report["flops_per_image"][flops] / 1e12
            assert row[f"{mode}_tflops"] == pytest.approx(tflops) and tflops > 0
            assert row[f"{mode}_share_of_matmul"] == pytest.approx(tflops / result["matmul_tflops"])
    assert any("share of matmul rate" in key for key in result["targets"])
    assert "TFLOP/s" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- bench_data
@pytest.mark.slow
def test_bench_data_times_the_pipelines_and_the_dataloader(tmp_path):
    pytest.importorskip("datasets")  # train.py needs it; the GPU machine has no datasets and runs gpu.py only
    import bench_data

    out = tmp_path / "data.json"
    argv = ["--num-images", "3", "--measure-images", "3", "--rounds", "1", "--workers", "0", "1", "--batch-size",
            "2", "--image-dir", str(tmp_path / "images"), "--json", str(out)]
    assert bench_data.main(argv) == 0
    report = json.loads(out.read_text())
    for image_set in ("prepared", "web"):
        rates = {name: numbers["images_per_cpu_s"] for name, numbers in report["per_worker"][image_set].items()}
        assert {"train", "eval", "vit-image-processor", "train-full-decode", "train-float-first"} <= set(rates)
        ratio = report["ratios"][image_set]["train_vs_vit-image-processor"]
        assert ratio == pytest.approx(rates["train"] / rates["vit-image-processor"]) and sane(ratio)
        assert report["ratios"][image_set]["draft_decode_speedup"] == pytest.approx(
            rates["train"] / rates["train-full-decode"])
        assert report["projection"][image_set] == pytest.approx(bench_data.GPU_WORKERS * rates["train"])
        assert set(report["dataloader"][image_set]) == {"0", "1"}  # one rate per worker count asked for
        assert all(rate > 0 for rate in report["dataloader"][image_set].values())
    assert len(list((tmp_path / "images" / "web").glob("*.jpg"))) == 3


# ------------------------------------------------------------------------------------------ learning, pretraining
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
    assert all(row["task"] == "digits" and 0 <= row["accuracy"] <= 1 for row in report["rows"])
    assert all(0 < row["train_s"] <= row["wall_s"] for row in report["rows"])  # training is part of the command
    # the digits as a user's image folder: 80/20, stratified, 10 classes (--smoke: the first 200 digits)
    train = list((tmp_path / "digits-smoke" / "train").glob("*/*.png"))
    validation = list((tmp_path / "digits-smoke" / "validation").glob("*/*.png"))
    assert (len(train), len(validation)) == (160, 40)
    assert len({path.parent.name for path in validation}) == 10
    assert "| digits | train.py, defaults (--hflip 0) |" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_pretraining_smoke_compares_scratch_with_pretrained_on_digits(tmp_path, capsys):
    pytest.importorskip("sklearn")
    import bench_pretraining

    out = tmp_path / "pretraining.json"
    argv = ["--smoke", "--tasks", "digits", "--seeds", "3", "--work_dir", str(tmp_path), "--json", str(out),
            "--levers", "few-photos"]
    assert bench_pretraining.main(argv) == 0
    report = json.loads(out.read_text())
    scratch, pretrained, few_photos = report["rows"]
    assert scratch["run"].startswith("(a) train.py from scratch") and pretrained["run"].startswith("(b) pretrain.py")
    assert all((row["task"], row["seed"]) == ("digits", 3) and 0 <= row["accuracy"] <= 1 for row in report["rows"])
    assert "pretrain_s" not in scratch
    # (b)'s time is the whole of both commands: pretraining, then fine-tuning
    assert 0 < pretrained["pretrain_s"] < pretrained["wall_s"]
    # the numbers are the runs' own: pretrain.py's k-NN at the start and the end, the fine-tuned run's top-1
    runs = tmp_path / "runs" / "digits-seed3"
    record = json.loads((runs / "pretrain-simclr" / "pretrain_results.json").read_text())
    assert pretrained["knn_start"] == record["knn_top1_at_initialisation"]
    assert pretrained["knn_end"] == record["knn_top1"]
    assert pretrained["knn_curve"] == [pretrained["knn_start"], pretrained["knn_end"]]  # at step 0 and at the end
    assert all(0 <= knn <= 1 for knn in pretrained["knn_curve"])
    assert pretrained["accuracy"] == json.loads((runs / "tuned-simclr" / "eval_results.json").read_text())[
        "eval_accuracy"]
    assert scratch["accuracy"] == json.loads((runs / "scratch" / "eval_results.json").read_text())["eval_accuracy"]
    # the lever is train.py with the named recipe: its batches of 32, its own results
    assert few_photos["run"].endswith("--recipe few-photos")
    assert few_photos["accuracy"] == json.loads((runs / "scratch-few-photos" / "eval_results.json").read_text())[
        "eval_accuracy"]
    assert json.loads((runs / "scratch-few-photos" / "trainer_state.json").read_text())["train_batch_size"] == 32
    assert len(list((tmp_path / "digits-smoke").glob("*/*/*.png"))) == 200  # --smoke: 200 digits, not 1797
    printed = capsys.readouterr().out
    assert "| digits | 3 | (a) train.py from scratch (default recipe) |" in printed
    assert f"{pretrained['accuracy'] - scratch['accuracy']:+.3f} against (a)" in printed  # the seeds' mean: one


# ----------------------------------------------------------------------------------------------- bench_hierarchy
@pytest.mark.slow
def test_bench_hierarchy_measures_heads_rules_and_decisions(poses, tmp_path, capsys):
    import bench_hierarchy

    from configuration_vit_yoga import HIERARCHY_COMBINATIONS

    joint = save_tiny_checkpoint(tmp_path / "joint")
    out = tmp_path / "bench.json"
    assert bench_hierarchy.main(["--models", str(joint), "--dataset_name", str(poses), "--splits", "validation",
                                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]) == [str(joint)] and list(report["results"][str(joint)]) == ["validation"]
    entry = report["results"][str(joint)]["validation"]
    rows = {row["method"]: row for row in entry["rows"]}
    assert set(HIERARCHY_COMBINATIONS) <= set(rows) and "heads (independent)" in rows
    assert all(rows[rule]["path consistency"] == 1.0 for rule in HIERARCHY_COMBINATIONS)  # a path by construction
    # finest: the 82-way head's own answers and log-loss, unchanged by summing up the tree.
    assert rows["finest"]["label_82 top-1"] == rows["heads (independent)"]["label_82 top-1"]
    assert rows["finest"]["label_82 log-loss"] == pytest.approx(rows["heads (independent)"]["label_82 log-loss"])
    assert entry["best_rule"] in HIERARCHY_COMBINATIONS and entry["images"] == 82  # 1 validation image per pose
    assert "best combination on validation" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ bench_predict, _demo
@pytest.mark.slow
def test_bench_predict_times_four_ways_and_their_ratios(tmp_path, capsys):
    import bench_predict

    out = tmp_path / "bench.json"
    assert bench_predict.main(["--preset", "vit-pico", "--image_size", "32", "--photos", "4", "--rounds", "1",
                               "--batch_size", "2", "--num_workers", "0", "--photo_dir", str(EXAMPLES),
                               "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rates = report["images_per_second"]
    assert set(rates) == {"pipeline loop", "pipeline batch_size=16", "predict", "model alone"}
    assert report["settings"]["photos"] == 4 and report["settings"]["image_size"] == 32
    # one round: each ratio is the quotient of that round's two rates
    assert report["predict_over_loop"] == pytest.approx(rates["predict"] / rates["pipeline loop"])
    assert report["predict_over_pipeline_batched"] == pytest.approx(rates["predict"] / rates["pipeline batch_size=16"])
    assert report["predict_over_model_alone"] == pytest.approx(rates["predict"] / rates["model alone"])
    assert sane(report["predict_over_loop"]) and sane(report["predict_over_pipeline_batched"])
    assert "predict / model alone" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_demo_times_the_ways_in_process_and_through_gradio_client(tmp_path):
    """The in-process ways and the whole request through gradio_client (app.py in its own process)."""
    pytest.importorskip("gradio_client")
    import bench_demo

    out = tmp_path / "bench.json"
    assert bench_demo.main(["--presets", "vit-pico", "--photos", "2", "--rounds", "1", "--threads", "1",
                            "--photo_dir", str(EXAMPLES), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["models"]) == ["vit-pico"] and report["settings"]["photos"] == 2
    numbers = report["models"]["vit-pico"]
    ms = numbers["milliseconds"]
    alone_way = "model alone (sdpa, tree probabilities)"
    with_maps_way = "model + attention maps + rollout (one eager forward)"
    alone, with_maps = ms[alone_way], ms[with_maps_way]
    whole = ms["whole request through gradio_client"]
    assert len(ms) == 6 and all(value > 0 for value in ms.values())
    cpu = numbers["cpu_milliseconds"]
    assert set(cpu) < set(ms)  # the in-process ways, CPU time too
    assert numbers["attention_map_extra_over_model"] == pytest.approx(with_maps / alone - 1)
    assert numbers["attention_map_extra_over_request"] == pytest.approx((with_maps - alone) / whole)
    cpu_ratio = cpu[with_maps_way] / cpu[alone_way]
    assert numbers["attention_map_extra_over_model_cpu"] == pytest.approx(cpu_ratio - 1) and sane(cpu_ratio)


# ----------------------------------------------------------------------------------------- ONNX: inference, int8
@pytest.mark.slow
def test_bench_inference_times_every_backend_side_by_side(tmp_path):
    pytest.importorskip("onnxruntime")
    import bench_inference

    out = tmp_path / "bench.json"
    assert bench_inference.main(["--models", "vit-pico", "--batch_sizes", "1", "3", "--rounds", "1", "--min_seconds",
                                 "0.05", "--backends", "eager", "ort-fp32", "ort-int8", "--threads", "1",
                                 "--isolation", "none", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["batch"], r["backend"]) for r in rows) == [(b, k) for b in (1, 3) for k in ("eager", "ort-fp32",
                                                                                                 "ort-int8")]
    for row in rows:  # one round: the speed-up is the quotient of the two speeds
        eager = next(r for r in rows if r["batch"] == row["batch"] and r["backend"] == "eager")
        assert row["speedup_vs_eager"] == pytest.approx(row["images_per_second"] / eager["images_per_second"])
        assert sane(row["speedup_vs_eager"])
    assert [row["speedup_vs_eager"] for row in rows if row["backend"] == "eager"] == [1.0, 1.0]  # its own baseline
    sizes = {r["backend"]: r["megabytes"] for r in rows if r["batch"] == 1}
    assert sizes["eager"] is None and sizes["ort-int8"] < 0.5 * sizes["ort-fp32"]  # int8: a quarter, plus the graph


@pytest.mark.slow
def test_bench_inference_times_each_backend_alone_in_its_own_process(tmp_path):
    """The default isolation: each timing runs in a fresh process that runs one backend (ONNX Runtime with its
    spinning threads) and reports seconds per call."""
    pytest.importorskip("onnxruntime")
    import bench_inference

    out = tmp_path / "bench.json"
    assert bench_inference.main(["--models", "vit-pico", "--batch_sizes", "2", "--rounds", "1", "--min_seconds",
                                 "0.05", "--backends", "eager", "ort-fp32", "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["isolation"] == "process"
    eager, onnx = report["rows"]
    assert (eager["backend"], onnx["backend"]) == ("eager", "ort-fp32") and eager["batch"] == onnx["batch"] == 2
    assert onnx["speedup_vs_eager"] == pytest.approx(onnx["images_per_second"] / eager["images_per_second"])
    assert sane(onnx["speedup_vs_eager"])


@pytest.mark.slow
def test_bench_onnx_variants_times_every_graph_against_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    import bench_onnx_variants

    out = tmp_path / "variants.json"
    assert bench_onnx_variants.main(["--models", "vit-pico", "--batch_sizes", "2", "--rounds", "1", "--threads", "1",
                                     "--min_seconds", "0.05", "--graphs", "fused", "nbits8", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["kind"]: row for row in report["rows"]}
    assert list(rows) == ["eager", "fused", "nbits8"]  # one row per graph asked for (every one is written and loads)
    assert rows["eager"]["speedup_vs_eager"] == 1.0
    for row in rows.values():
        assert (row["model"], row["batch"]) == ("vit-pico", 2)
        assert row["speedup_vs_eager"] == pytest.approx(row["images_per_second"] / rows["eager"]["images_per_second"])
        assert sane(row["speedup_vs_eager"])
    assert report["fused"]["vit-pico"].get("SkipLayerNormalization", 0) > 0  # the optimiser did fuse something


@pytest.mark.slow
def test_bench_int8_schemes_scores_every_scheme_on_every_image_set(tmp_path, tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    import bench_int8_schemes

    out = tmp_path / "int8.json"
    assert bench_int8_schemes.main(["--model", str(tiny_checkpoint), "--photos", str(EXAMPLES),
                                    "--calibration_limit", "32", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    photos = len(list(EXAMPLES.glob("*.jpg")))
    assert report["image_sets"]["synthetic test"]["images"] == 656  # the export's check: 8 per pose
    assert report["image_sets"][str(EXAMPLES)]["images"] == photos
    assert all(0 <= image_set["near_ties"] <= 1 for image_set in report["image_sets"].values())
    schemes = [row["scheme"] for row in report["rows"]]
    assert schemes[:2] == ["dynamic, every weight layer", "dynamic, every weight layer (batch 1)"]
    assert len(schemes) == 11 and len(set(schemes)) == 11 and schemes[-1].startswith("mixed precision")
    for row in report["rows"]:
        assert set(row["agreement"]) == set(report["image_sets"])  # every scheme on every image set
        assert all(0 <= share <= 1 for share in row["agreement"].values())


# ---------------------------------------------------------------------------------------------- the data tools
@pytest.mark.slow
def test_bench_dataset_measures_download_prepare_and_synthetic(tmp_path):
    import bench_dataset

    out = tmp_path / "dataset.json"
    assert bench_dataset.main(["--latency_ms", "100", "--images", "4", "--workers", "1", "4", "--prepare_images", "4",
                               "--synthetic_per_class", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    download = report["download_images_per_s"]
    assert list(download) == ["1", "4"]  # one rate per worker count asked for
    # the server holds every request 100 ms: one worker can't fetch more than 10 images a second, four can
    assert 0 < download["1"] <= 10 < download["4"]
    assert report["latency_ms"] == 100
    for key in ("prepare_images_per_s", "synthetic_draw_images_per_s", "synthetic_end_to_end_images_per_s"):
        assert report[key] > 0
    # drawing alone is part of writing the data set end to end
    assert report["synthetic_draw_images_per_s"] > report["synthetic_end_to_end_images_per_s"]


@pytest.mark.slow
def test_bench_ctrl_c_times_each_interrupted_download(tmp_path):
    import bench_ctrl_c

    out = tmp_path / "ctrl_c.json"
    assert bench_ctrl_c.main(["--runs", "2", "--workers", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["runs"], report["workers"]) == (2, 1) and len(report["seconds"]) == 2  # one time per run
    assert report["min_s"] == min(report["seconds"]) and report["max_s"] == max(report["seconds"]) > 0
    assert report["min_s"] <= report["median_s"] <= report["max_s"]
