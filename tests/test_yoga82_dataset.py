"""prepare and synthetic: the Parquet + dataset card folder loads with datasets.load_dataset, with the hierarchy."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import PROJECT_ROOT
from PIL import Image

from yoga82 import generate_synthetic, prepare
from yoga82.__main__ import main
from yoga82.labels import LABEL_6_NAMES, LABEL_20_NAMES, LABEL_82_NAMES, PARENT_OF_20, PARENT_OF_82

COLUMNS = ["image", "image_path", "label_6", "label_20", "label_82"]
SPLITS = {"train", "validation", "test"}
POSES = ["Akarna_Dhanurasana", "Sitting pose 1 (normal)", "Crane_(Crow)_Pose_or_Bakasana_"]


def labels(pose: str) -> tuple[int, int, int]:
    label_82 = LABEL_82_NAMES.index(pose)
    label_20 = PARENT_OF_82[label_82]
    return PARENT_OF_20[label_20], label_20, label_82


def save(path: Path, image: Image.Image, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


def assert_yoga82_features(features: datasets.Features) -> None:
    assert list(features) == COLUMNS
    assert isinstance(features["image"], datasets.Image)
    assert features["image_path"] == datasets.Value("string")
    assert features["label_6"].names == LABEL_6_NAMES
    assert features["label_20"].names == LABEL_20_NAMES
    assert features["label_82"].names == LABEL_82_NAMES


@pytest.fixture(scope="module")
def mini_release(tmp_path_factory) -> tuple[Path, Path]:
    """10 train + 2 test rows per pose; images 80x48 in every format of the web, plus a missing and a corrupt one."""
    root = tmp_path_factory.mktemp("mini")
    release, images = root / "release", root / "images"
    (release / "yoga_dataset_links").mkdir(parents=True)
    train, test = [], []
    base = Image.linear_gradient("L").resize((80, 48)).convert("RGB")
    modes = [("RGB", "JPEG"), ("RGB", "PNG"), ("P", "GIF"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG")]
    for pose in POSES:
        for index in range(12):
            path = f"{pose}/{index}.jpg"  # always a .jpg name, whatever the bytes are
            mode, fmt = modes[index % len(modes)]
            save(images / path, base.convert(mode), fmt)
            (train if index < 10 else test).append(f"{path},{','.join(map(str, labels(pose)))}\r\n")
    (images / POSES[0] / "3.jpg").unlink()  # never downloaded (train)
    (images / POSES[1] / "11.jpg").write_bytes(b"<html>not an image</html>")  # test
    (release / "yoga_train.txt").write_bytes("".join(train).encode())
    (release / "yoga_test.txt").write_bytes("\r\n".join(test).encode())
    (release / "yoga_dataset_links" / "x.txt").write_text("a/b.jpg\thttp://127.0.0.1/b.jpg\n")
    return release, images


def test_prepare_round_trips_through_load_dataset(mini_release, tmp_path, monkeypatch):
    release, images = mini_release
    uploads = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hub/{repo_id}")
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_commit",
        lambda self, **kw: uploads.append((kw["repo_id"], sorted(op.path_in_repo for op in kw["operations"]))),
    )
    output = tmp_path / "yoga82"
    argv = ["prepare", "--release_dir", str(release), "--images_dir", str(images), "--output_dir", str(output),
            "--resize", "32", "--push_to_hub", "someone/yoga82", "--quiet"]
    assert main(argv) == 0

    dataset = datasets.load_dataset(str(output))
    assert set(dataset) == SPLITS
    for split in dataset.values():
        assert_yoga82_features(split.features)
    # per pose: 10 official train rows -> 8 train + 2 validation; 2 test rows
    sizes = {name: Counter(split["label_82"]) for name, split in dataset.items()}
    akarna, sitting, crane = (LABEL_82_NAMES.index(pose) for pose in POSES)
    assert sizes["train"][crane] + sizes["validation"][crane] == 10 and sizes["validation"][crane] == 2
    assert sizes["train"][akarna] + sizes["validation"][akarna] == 9  # the missing image is skipped
    assert sizes["test"] == {akarna: 2, sitting: 1, crane: 2}  # the HTML one is skipped
    paths = [path for split in dataset.values() for path in split["image_path"]]
    assert len(paths) == len(set(paths)) == 34

    for row in dataset["train"]:
        image = row["image"]
        assert image.mode == "RGB" and image.format == "JPEG"
        assert image.size == (53, 32)  # shorter side 32, aspect 80:48 kept
        assert (row["label_6"], row["label_20"], row["label_82"]) == labels(row["image_path"].split("/")[0])

    counts = json.loads((output / "class_counts.json").read_text())
    assert counts["splits"]["test"]["num_examples"] == 5
    assert counts["listed"]["test"]["num_examples"] == 6
    skipped = counts["skipped"]
    assert skipped["test"] == {"not_an_image": 1}
    assert Counter(skipped["train"]) + Counter(skipped["validation"]) == {"missing": 1}
    assert (output / "class_counts.png").stat().st_size > 0
    card = huggingface_hub.DatasetCard.load(output / "README.md")
    assert {c["split"] for c in card.data.configs[0]["data_files"]} == SPLITS
    assert sorted(p.name for p in (output / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"
    ]
    assert uploads and uploads[0][0] == "someone/yoga82" and "README.md" in uploads[0][1]

    # nothing the user made is replaced without asking
    assert main(argv[:-3]) == 2


HOLD_THE_DOWNLOAD_LOCK = """
import sys, time
from pathlib import Path
from yoga82.download import LOCK_FILE
from yoga_common.files import exclusive_lock
images = Path(sys.argv[1]).resolve()
with exclusive_lock(images / LOCK_FILE, what=f"A download into {images}"):  # what download_images holds
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_prepare_and_download_never_share_an_images_folder(mini_release, tmp_path, capsys):
    """prepare refuses an images folder a download is filling, naming the download's pid; while prepare reads it,
    a download refuses to start, naming prepare's; afterwards no lock file is left among the images."""
    from contextlib import ExitStack

    from yoga82.download import LOCK_FILE, download_images
    from yoga82.prepare import _hold_images_against_downloads
    from yoga_common.files import LockHeldError

    release, images = mini_release
    output = tmp_path / "yoga82"
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    download = subprocess.Popen([sys.executable, "-c", HOLD_THE_DOWNLOAD_LOCK, str(images)], env=env,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert download.stdout.readline().strip() == "held"
        argv = ["prepare", "--release_dir", str(release), "--images_dir", str(images), "--output_dir", str(output),
                "--quiet"]
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert (f"cannot start: A download into {images.resolve()} is running: pid {download.pid} on host" in error
                and f"kill {download.pid}" in error)
        assert not output.exists()
    finally:
        download.kill()
        download.wait()

    with ExitStack() as stack:
        _hold_images_against_downloads(stack, images)  # what prepare holds while it builds
        with pytest.raises(LockHeldError, match=rf"A download into .* cannot start: `python -m yoga82 prepare` "
                                                rf"reading .* is running: pid {os.getpid()} on host"):
            download_images(release, images, progress=False)
    assert not (images / LOCK_FILE).exists()


def test_prepare_keeps_original_size_without_resize(mini_release, tmp_path):
    release, images = mini_release
    output = prepare(release, images, tmp_path / "full", resize=None, validation_fraction=0.0)
    dataset = datasets.load_dataset(str(output))
    assert set(dataset) == {"train", "test"} and len(dataset["train"]) == 29
    image = dataset["test"][0]["image"]
    assert image.size == (80, 48) and image.mode == "RGB"


def pixels(folder: Path) -> dict[str, list[tuple[str, bytes, int]]]:
    dataset = datasets.load_dataset(str(folder))
    return {
        name: [(row["image_path"], np.asarray(row["image"]).tobytes(), row["label_82"]) for row in split]
        for name, split in dataset.items()
    }


@pytest.mark.slow  # end to end: several whole data sets drawn and written
def test_synthetic_is_deterministic_fast_and_has_the_real_hierarchy(tmp_path):
    first = generate_synthetic(tmp_path / "a", images_per_class=4, image_size=32, seed=3, progress=False)
    second = generate_synthetic(tmp_path / "b", images_per_class=4, image_size=32, seed=3, progress=False)
    other = generate_synthetic(tmp_path / "c", images_per_class=4, image_size=32, seed=4, progress=False)
    assert first == tmp_path / "a"
    for split in SPLITS:
        table = pq.read_table(next((first / "data").glob(f"{split}-*.parquet")))
        same = pq.read_table(next((second / "data").glob(f"{split}-*.parquet")))
        assert table.equals(same)  # identical image bytes and labels
    assert pixels(first) == pixels(second)
    assert pixels(first) != pixels(other)

    dataset = datasets.load_dataset(str(first))
    assert set(dataset) == SPLITS
    assert {name: len(split) for name, split in dataset.items()} == {"train": 164, "validation": 82, "test": 82}
    for split in dataset.values():
        assert_yoga82_features(split.features)
        assert Counter(split["label_82"]) == Counter({label: len(split) // 82 for label in range(82)})
        for label_6, label_20, label_82 in zip(split["label_6"], split["label_20"], split["label_82"], strict=True):
            assert PARENT_OF_82[label_82] == label_20 and PARENT_OF_20[label_20] == label_6
    image = dataset["train"][0]["image"]
    assert image.size == (32, 32) and image.mode == "RGB"


def test_synthetic_poses_share_structure_with_their_parents_and_differ_from_their_siblings():
    from yoga82.synthetic import FAMILIES, pose_angles

    skeletons = [pose_angles(label) for label in range(82)]
    assert len({tuple(sorted(angles.items())) for angles in skeletons}) == 82  # every pose is drawn differently
    for label, angles in enumerate(skeletons):
        family = FAMILIES[PARENT_OF_82[label]]
        assert angles["torso"] == family.torso  # the level-2 class fixes the body's orientation
        if family.vary == "arms":  # ...and its legs, when the poses differ by their arms
            assert (angles["left_thigh"], angles["left_shin"]) == family.left_leg
    # the body position (level 1) decides whether the figure is upright, head down or lying
    torso_by_position: dict[int, set[float]] = {}
    for label_20, family in enumerate(FAMILIES):
        torso_by_position.setdefault(PARENT_OF_20[label_20], set()).add(family.torso % 360)
    assert all(180 < torso < 360 for torso in torso_by_position[3])  # inverted: head down
    assert all(160 <= torso <= 200 for torso in torso_by_position[4])  # reclining: lying


@pytest.mark.slow  # end to end: several whole data sets drawn and written
def test_synthetic_writes_atomically_and_reuses_a_complete_folder(tmp_path, monkeypatch):
    import yoga82.export

    target = tmp_path / "synthetic"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(yoga82.export, "_write_plot", crash)
        with pytest.raises(KeyboardInterrupt):
            generate_synthetic(target, images_per_class=2, image_size=16, progress=False)
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no staging leftovers

    generate_synthetic(target, images_per_class=2, image_size=16, progress=False)
    stamp = (target / "README.md").stat().st_mtime_ns
    assert generate_synthetic(target, images_per_class=2, image_size=16, progress=False) == target
    assert (target / "README.md").stat().st_mtime_ns == stamp  # same parameters: reused, not redrawn
    with pytest.raises(FileExistsError, match="different dataset"):
        generate_synthetic(target, images_per_class=3, image_size=16, progress=False)
    generate_synthetic(target, images_per_class=3, image_size=16, progress=False, overwrite=True)
    assert len(datasets.load_dataset(str(target))["train"]) == 82
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic"]


def test_synthetic_cli(tmp_path):
    output = tmp_path / "cli"
    assert main(["synthetic", "--output_dir", str(output), "--images_per_class", "2", "--image_size", "16",
                 "--quiet"]) == 0
    image = Image.open(io.BytesIO(pq.read_table(next((output / "data").glob("train-*"))).column("image")[0]["bytes"]
                                  .as_py()))
    assert image.size == (16, 16)


def test_a_failed_dataset_push_exits_non_zero_with_the_folder_complete(tmp_path, capsys):
    """The Hub cannot be reached here (HF_HUB_OFFLINE): the real upload call fails, the data set is still written
    whole, the command says how to retry and exits 1, so a script does not believe the data set was shared."""
    output = tmp_path / "pushed"
    code = main(["synthetic", "--output_dir", str(output), "--images_per_class", "5", "--image_size", "16", "--quiet",
                 "--push_to_hub", "someone/poses"])
    assert code == 1
    err = capsys.readouterr().err
    assert "upload to the Hub dataset repo 'someone/poses' failed" in err
    assert f"hf upload someone/poses {output} . --repo-type dataset" in err
    assert set(datasets.load_dataset(str(output))) == SPLITS  # complete


# ---------------------------------------------------------------------------------------------------- what prepare
# refuses, where its temporaries go, and what a kill leaves


def write_small_release(root: Path, per_pose: int = 6, size: tuple[int, int] = (64, 40)) -> tuple[Path, Path]:
    """A release (split files) and its images: ``per_pose`` noise JPEGs per pose, one in six of them for test."""
    release, images = root / "release", root / "images"
    (release / "yoga_dataset_links").mkdir(parents=True)
    (release / "yoga_dataset_links" / "x.txt").write_text("a/b.jpg\thttp://127.0.0.1/b.jpg\n")
    rows: dict[str, list[str]] = {"train": [], "test": []}
    rng = np.random.default_rng(0)
    for pose in POSES:
        for index in range(per_pose):
            path = f"{pose}/{index}.jpg"
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            save(images / path, Image.fromarray(pixels), "JPEG")
            rows["test" if index % 6 == 0 else "train"].append(f"{path},{','.join(map(str, labels(pose)))}\n")
    for split, lines in rows.items():
        (release / f"yoga_{split}.txt").write_text("".join(lines))
    return release, images


def folder_digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``; {} when it does not exist."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    } if folder.is_dir() else {}


def test_prepare_refuses_an_output_that_overlaps_its_inputs_before_any_work(tmp_path, monkeypatch, capsys):
    # The natural layout of the issue: the images inside the folder the data set is to replace.
    data = tmp_path / "data" / "yoga82"
    release, images = write_small_release(data)
    before = folder_digest(data)
    (tmp_path / "alias").symlink_to(data, target_is_directory=True)
    for module in ("yoga82.builder", "yoga82.prepare"):  # wherever prepare looks it up
        monkeypatch.setattr(importlib.import_module(module), "Yoga82",
                            lambda **kwargs: pytest.fail("prepare started working"), raising=False)

    cases = {
        data: ("contains", "--images_dir", tmp_path / "data" / "yoga82-parquet"),
        images: ("is the same folder as", "--images_dir", tmp_path / "data" / "yoga82" / "images-parquet"),
        images / "parquet": ("lies inside", "--images_dir", tmp_path / "data" / "yoga82" / "images-parquet"),
        tmp_path / "alias": ("contains", "--images_dir", tmp_path / "data" / "yoga82-parquet"),  # via a symlink
        release / "out": ("lies inside", "--release_dir", tmp_path / "data" / "yoga82" / "release-parquet"),
    }
    for output, (relation, flag, suggestion) in cases.items():
        argv = ["prepare", "--release_dir", str(release), "--images_dir", str(images), "--output_dir", str(output),
                "--overwrite", "--quiet"]
        assert main(argv) == 2, output
        error = capsys.readouterr().err
        assert f"--output_dir {output} {relation} {flag}" in error and str(suggestion) in error, error
    assert folder_digest(data) == before  # not one input file touched
    assert not (images / "parquet").exists() and not (release / "out").exists()

    # --overwrite replaces only a folder that yoga82 wrote: one with anything else in it is refused, untouched.
    output = tmp_path / "mine"
    output.mkdir()
    (output / "README.md").write_text("my notes")
    (output / "data").mkdir()
    (output / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (output / "data" / "labels.csv").write_text("mine")
    with pytest.raises(FileExistsError, match=r"did not write \(data/labels.csv\)"):
        prepare(release, images, output, overwrite=True)
    assert (output / "data" / "labels.csv").read_text() == "mine"


def test_prepare_keeps_its_temporaries_beside_the_output_not_in_tmpdir(tmp_path, monkeypatch):
    release, images = write_small_release(tmp_path / "inputs")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # what $TMPDIR sets
    outputs = tmp_path / "outputs"
    seen = {}
    export = importlib.import_module("yoga82.export")
    write = export.write_parquet_dataset

    def spy(dataset_dict, output_dir, **kwargs):  # what is where while the data set exists only as a cache
        seen["tmpdir"] = sorted(p.name for p in tmpdir.iterdir())
        seen["beside"] = sorted(p.name for p in outputs.iterdir()) if outputs.is_dir() else []
        return write(dataset_dict, output_dir, **kwargs)

    for module in (export, importlib.import_module("yoga82.prepare")):  # wherever prepare looks it up
        monkeypatch.setattr(module, "write_parquet_dataset", spy, raising=False)
    prepare(release, images, outputs / "yoga82", resize=None)
    assert seen["tmpdir"] == []
    assert len(seen["beside"]) == 1 and seen["beside"][0].startswith(".yoga82.")  # the Arrow cache, hidden
    assert sorted(p.name for p in outputs.iterdir()) == ["yoga82"] and list(tmpdir.iterdir()) == []


@pytest.mark.slow
def test_prepare_killed_at_random_moments_leaves_the_previous_output_or_the_new_one(tmp_path):
    release, images = write_small_release(tmp_path / "inputs", per_pose=12, size=(96, 64))
    outputs = tmp_path / "outputs"
    output = outputs / "yoga82"
    prepare(release, images, output, resize=16)
    previous = folder_digest(output)
    started = time.perf_counter()
    prepare(release, images, tmp_path / "reference", resize=32)
    work_seconds = time.perf_counter() - started
    new = folder_digest(tmp_path / "reference")
    assert new != previous

    argv = [sys.executable, "-m", "yoga82", "prepare", "--release_dir", str(release), "--images_dir", str(images),
            "--output_dir", str(output), "--resize", "32", "--overwrite", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    rng = random.Random(82)
    outcomes = []
    for _ in range(3):
        entries_before = set(outputs.iterdir())
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            stop_at = time.monotonic() + 60
            # Start the clock when the work starts (its hidden cache folder appears), not while Python imports.
            while process.poll() is None and set(outputs.iterdir()) <= entries_before:
                assert time.monotonic() < stop_at, "prepare never started"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.2 * work_seconds))
            outcomes.append("killed" if process.poll() is None else "finished")
        finally:
            process.kill()
            process.communicate(timeout=60)
        state = folder_digest(output)
        assert state in (previous, new), "a kill left a half-written data set"
        if state == new:
            prepare(release, images, output, resize=16, overwrite=True)  # back to the previous one for the next kill
    assert outcomes.count("killed") >= 2

    # The next run is not blocked by what the killed ones left, and cleans it up.
    assert main(argv[3:]) == 0
    assert folder_digest(output) == new
    assert sorted(p.name for p in outputs.iterdir()) == ["yoga82"]
