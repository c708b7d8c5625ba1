"""python -m vit_yoga.predict: files, folders and globs to CSV/JSONL rows; unreadable files become rows; the numbers are
the hierarchical pipeline's and agree with the tree."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT
from PIL import Image

import yoga82
from vit_yoga.predict import expand_paths, main
from yoga82.labels import POSE_DISPLAY_NAMES
from yoga_common.errors import UsageError

HIERARCHY = yoga82.hierarchy()
LEVELS = HIERARCHY["hierarchy_levels"]
NAMES = dict(zip(LEVELS, HIERARCHY["hierarchy_class_names"], strict=True))
EXAMPLES = sorted((PROJECT_ROOT / "examples").glob("*.jpg"))


@pytest.fixture
def photos(tmp_path) -> Path:
    """Real photos in nested folders, a text file posing as a JPEG, a truncated JPEG and a file that is no image."""
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, example in enumerate(EXAMPLES):
        shutil.copy(example, (folder if i % 2 else folder / "nested") / example.name)
    Image.open(EXAMPLES[0]).convert("L").save(folder / "grey.png")
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "nested" / "truncated.jpg").write_bytes(EXAMPLES[1].read_bytes()[:2000])
    (folder / "readme.txt").write_text("skipped: not an image extension")
    return folder


def run(*args: str) -> int:
    return main([*args, "--num_workers", "0"])


def test_paths_files_folders_and_globs(photos, monkeypatch):
    monkeypatch.chdir(photos)
    everything = expand_paths(["."])
    assert len(everything) == len(EXAMPLES) + 3 and not any(p.suffix == ".txt" for p in everything)
    assert sorted(expand_paths(["**/*.jpg"])) == sorted(p for p in everything if p.suffix == ".jpg")
    named = expand_paths(["readme.txt", "grey.png", "*.png", "nested"])  # a file named is kept; each file once
    assert named[:2] == [Path("readme.txt"), Path("grey.png")] and named.count(Path("grey.png")) == 1
    with pytest.raises(UsageError, match="does not exist"):
        expand_paths(["missing.jpg"])
    with pytest.raises(UsageError, match="matches no file"):
        expand_paths(["*.gif"])
    (photos / "empty").mkdir()
    with pytest.raises(UsageError, match="no image files"):
        expand_paths(["empty"])


def test_csv_rows_for_every_file_and_the_reason_for_unreadable_ones(tiny_checkpoint, photos, tmp_path, capsys):
    output = tmp_path / "predictions.csv"
    assert run("--model", str(tiny_checkpoint), str(photos), "--output", str(output)) == 0
    rows = list(csv.DictReader(output.open()))
    assert [row["file"] for row in rows] == [str(p) for p in expand_paths([str(photos)])]
    errors = {Path(row["file"]).name: row["error"] for row in rows if row["error"]}
    assert set(errors) == {"notes.jpg", "truncated.jpg"}
    assert "is not an image" in errors["notes.jpg"] and "truncated" in errors["truncated.jpg"]
    for row in rows:
        if row["error"]:
            assert all(row[level] == "" for level in LEVELS)
            continue
        path = [NAMES[level].index(row[level]) for level in LEVELS]
        for depth in range(1, len(LEVELS)):  # the path goes down the tree
            assert HIERARCHY["hierarchy_parents"][depth - 1][path[depth]] == path[depth - 1]
        scores = [float(row[f"{level}_score"]) for level in LEVELS]
        assert scores == sorted(scores, reverse=True) and float(row["path_score"]) == scores[-1]
        assert row["label_82"] == row["label_82_top1"]  # the most probable path ends at the finest top-1
        assert row["label_82_name"] == POSE_DISPLAY_NAMES[row["label_82"]] and row["label_6_name"] == row["label_6"]
        for level in LEVELS:
            top = [float(row[f"{level}_top{k}_score"]) for k in range(1, 6)]
            assert top == sorted(top, reverse=True) and sum(top) <= 1 + 1e-5
    assert "5 photos predicted, 2 unreadable" in capsys.readouterr().err


def test_jsonl_probabilities_agree_with_the_tree_and_the_pipeline(tiny_checkpoint, tmp_path):
    """With every class listed, each level sums to 1 and each coarse class is the sum of its children; the numbers are
    the hierarchical pipeline's."""
    from transformers import pipeline

    output = tmp_path / "predictions.jsonl"
    assert run("--model", str(tiny_checkpoint), *map(str, EXAMPLES[:2]), "--output", str(output),
               "--top_k", "82", "--batch_size", "1") == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 2 and all(row["error"] is None for row in rows)
    classify = pipeline("hierarchical-image-classification", model=str(tiny_checkpoint), trust_remote_code=True)
    for row, photo in zip(rows, EXAMPLES[:2], strict=True):
        probability = {level: {c["label"]: c["score"] for c in row["levels"][level]} for level in LEVELS}
        for depth, level in enumerate(LEVELS):
            assert len(probability[level]) == len(NAMES[level])
            assert sum(probability[level].values()) == pytest.approx(1, abs=1e-5)
            if depth:
                parents = HIERARCHY["hierarchy_parents"][depth - 1]
                coarse = LEVELS[depth - 1]
                for parent_id, parent in enumerate(NAMES[coarse]):
                    children = sum(probability[level][NAMES[level][i]] for i, p in enumerate(parents) if p == parent_id)
                    assert probability[coarse][parent] == pytest.approx(children, abs=1e-5)
        expected = classify(str(photo), top_k=82)
        assert [n["label"] for n in row["path"]] == [n["label"] for n in expected["path"]]
        assert [n["display"] for n in row["path"]][-1] == POSE_DISPLAY_NAMES[row["path"][-1]["label"]]
        for level in LEVELS:
            for c in expected["levels"][level]:
                assert probability[level][c["label"]] == pytest.approx(c["score"], abs=1e-5)


def test_risk_decision_and_batches_give_the_same_rows(tiny_checkpoint, photos, tmp_path):
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert run("--model", str(tiny_checkpoint), str(photos), "--output", str(one), "--batch_size", "1") == 0
    assert run("--model", str(tiny_checkpoint), str(photos), "--output", str(many), "--batch_size", "4") == 0
    for a, b in zip(one.read_text().splitlines(), many.read_text().splitlines(), strict=True):
        a, b = json.loads(a), json.loads(b)
        assert a["file"] == b["file"] and a["error"] == b["error"]
        if not a["error"]:
            assert [n["label"] for n in a["path"]] == [n["label"] for n in b["path"]]
            assert a["path_score"] == pytest.approx(b["path_score"], abs=1e-5)
    risk = tmp_path / "risk.jsonl"
    assert run("--model", str(tiny_checkpoint), str(photos), "--output", str(risk), "--decision", "risk") == 0
    for line in risk.read_text().splitlines():
        row = json.loads(line)
        if not row["error"]:
            assert [n["level"] for n in row["path"]] == LEVELS


@pytest.mark.parametrize(("args", "words"), [
    (["--output", "out.txt"], "write a .csv or a .jsonl"),
    (["--model", "/no/such/model"], "cannot load it"),
    (["missing-folder"], "does not exist"),
])
def test_user_errors_exit_2_with_one_line_and_leave_the_output_alone(args, words, tiny_checkpoint, photos, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("predictions.csv").write_text("yesterday's predictions\n")
    base = {"--model": str(tiny_checkpoint), "--output": "predictions.csv"}
    for flag in ("--model", "--output"):
        if flag in args:
            base[flag] = args[args.index(flag) + 1]
    paths = [a for a in args if not a.startswith("--") and a not in base.values()] or [str(photos)]
    assert run(*paths, *[x for kv in base.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and words in err[-1]
    assert Path("predictions.csv").read_text() == "yesterday's predictions\n"


@pytest.mark.slow
def test_command_line_with_workers_on_real_photos(tiny_checkpoint, photos, tmp_path):
    """As a user runs it: python -m, DataLoader worker processes, a progress bar, real web photos when ../shared has
    them."""
    real = PROJECT_ROOT.parent / "shared" / "real-photos" / "images" / "Tree_Pose_or_Vrksasana_"
    inputs = [str(photos)] + ([f"{real}/*.jp*g"] if real.is_dir() else [])
    output = tmp_path / "out" / "predictions.csv"
    result = subprocess.run(
        [sys.executable, "-m", "vit_yoga.predict", "--model", str(tiny_checkpoint), *inputs, "--output", str(output),
         "--num_workers", "2", "--batch_size", "8"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == len(expand_paths(inputs))
    assert sum(bool(row["error"]) for row in rows) == 2
    assert "predict" in result.stderr and "photo" in result.stderr  # tqdm's bar
