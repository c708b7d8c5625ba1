"""The Yoga-82 release parser: the real metadata, and a fabricated release with the quirks real copies have."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_YOGA82

from yoga82.labels import LABEL_6_NAMES, LABEL_20_NAMES, LABEL_82_NAMES, PARENT_OF_20, PARENT_OF_82
from yoga82.release import (
    ReleaseError,
    ReleaseNotFoundError,
    read_link_file,
    read_release,
    read_split_file,
    stratified_split,
)

SITTING = "Sitting pose 1 (normal)"  # id 57: spaces and parentheses in a real pose folder
CRANE = "Crane_(Crow)_Pose_or_Bakasana_"  # id 14
AKARNA = "Akarna_Dhanurasana"  # id 0


def labels(pose: str) -> str:
    label_82 = LABEL_82_NAMES.index(pose)
    label_20 = PARENT_OF_82[label_82]
    return f"{PARENT_OF_20[label_20]},{label_20},{label_82}"


@pytest.mark.skipif(not SHARED_YOGA82.is_dir(), reason="the real Yoga-82 metadata (../shared/yoga82) is not here")
def test_real_release_parses_with_the_published_counts_and_a_consistent_hierarchy():
    release = read_release(SHARED_YOGA82)
    assert (len(release.train), len(release.test), len(release.links)) == (20_994, 7_456, 28_450)
    rows = release.train + release.test
    assert {row.path for row in rows} == {link.path for link in release.links}
    assert len({row.label_6 for row in rows}) == len(LABEL_6_NAMES) == 6
    assert len({row.label_20 for row in rows}) == len(LABEL_20_NAMES) == 20
    assert len({row.label_82 for row in rows}) == len(LABEL_82_NAMES) == 82
    for row in rows:  # the parser checks this too; asserting it here documents the fact
        assert PARENT_OF_82[row.label_82] == row.label_20
        assert PARENT_OF_20[row.label_20] == row.label_6
        assert row.path.split("/")[0] == LABEL_82_NAMES[row.label_82]
    assert all(link.url.startswith(("http://", "https://")) for link in release.links)


@pytest.mark.skipif(not SHARED_YOGA82.is_dir(), reason="the real Yoga-82 metadata (../shared/yoga82) is not here")
def test_validation_split_is_stratified_deterministic_and_disjoint():
    release = read_release(SHARED_YOGA82, with_links=False)
    train, validation = stratified_split(release.train, 0.2, seed=42)
    again, _ = stratified_split(release.train, 0.2, seed=42)
    other, _ = stratified_split(release.train, 0.2, seed=7)
    assert [row.path for row in train] == [row.path for row in again]
    assert [row.path for row in train] != [row.path for row in other]
    assert not {row.path for row in train} & {row.path for row in validation}
    assert len(train) + len(validation) == len(release.train)
    listed = Counter(row.label_82 for row in release.train)
    held = Counter(row.label_82 for row in validation)
    assert all(held[label] == round(0.2 * count) for label, count in listed.items())


def write_quirky_release(root: Path) -> Path:
    """A mini release as real copies look: CRLF, blank lines, stray spaces, tab and comma link files, desktop.ini."""
    links = root / "yoga_dataset_links"
    links.mkdir(parents=True)
    (root / "yoga_train.txt").write_bytes(
        (
            f"{AKARNA}/1.jpg,{labels(AKARNA)}\r\n"
            "\r\n"
            f"  {SITTING}/2.jpg , {labels(SITTING).replace(',', ' , ')}  \r\n"
            f"{CRANE}/3.jpg,{labels(CRANE)}\r\n"
            "   \r\n"
        ).encode()
    )
    (root / "yoga_test.txt").write_text(f"\ufeff{CRANE}/4.jpg,{labels(CRANE)}\n{AKARNA}/5.jpg,{labels(AKARNA)}")
    (links / f"{AKARNA}.txt").write_bytes(
        f"{AKARNA}/1.jpg\thttp://example.org/a1.jpg\r\n\r\n{AKARNA}/5.jpg\thttp://example.org/a,5.jpg\r\n".encode()
    )
    (links / f"{SITTING}.txt").write_text(f" {SITTING}/2.jpg , http://example.org/s 2.jpg \n\n")
    (links / f"{CRANE}.txt").write_text(f"{CRANE}/3.jpg,https://example.org/c3.jpg?x=1,2\n{CRANE}/4.jpg  http://e.org/4\n")
    (links / "desktop.ini").write_text("[.ShellClassInfo]\nInfoTip=This folder is shared online.\n")
    (links / ".DS_Store").write_bytes(b"\x00\x01binary")
    return root


def test_quirky_release_parses(tmp_path):
    release = read_release(write_quirky_release(tmp_path / "release"))
    assert [row.path for row in release.train] == [f"{AKARNA}/1.jpg", f"{SITTING}/2.jpg", f"{CRANE}/3.jpg"]
    assert [row.line for row in release.train] == [1, 3, 4]
    assert [row.path for row in release.test] == [f"{CRANE}/4.jpg", f"{AKARNA}/5.jpg"]
    sitting = release.train[1]
    assert (sitting.label_82, sitting.label_20, sitting.label_6) == (57, 4, 1)
    links = {link.path: link.url for link in release.links}
    assert links == {
        f"{AKARNA}/1.jpg": "http://example.org/a1.jpg",
        f"{AKARNA}/5.jpg": "http://example.org/a,5.jpg",
        f"{SITTING}/2.jpg": "http://example.org/s 2.jpg",
        f"{CRANE}/3.jpg": "https://example.org/c3.jpg?x=1,2",
        f"{CRANE}/4.jpg": "http://e.org/4",
    }


@pytest.mark.parametrize(
    "row, message",
    [
        (f"{AKARNA}/9.jpg,1,8,3", "label_82=3"),  # pose 3 is under label_20 4, not 8
        (f"{AKARNA}/9.jpg,2,8,0", "label_20=8"),  # variation 8 is under body position 1, not 2
        (f"{AKARNA}/9.jpg,1,8,82", "label_82=82 is out of range"),
        (f"{AKARNA}/9.jpg,6,8,0", "label_6=6 is out of range"),
        (f"{AKARNA}/9.jpg,-1,8,0", "label_6=-1 is out of range"),
        (f"{CRANE}/9.jpg,{labels(AKARNA)}", "image folder"),  # labels of another pose's folder
        (f"{AKARNA}/9.jpg,1,eight,0", "labels must be integers"),
        (f"{AKARNA}/9.jpg,1,8", "expected"),
    ],
)
def test_contradicting_or_malformed_row_names_file_and_line(tmp_path, row, message):
    split_file = tmp_path / "yoga_train.txt"
    split_file.write_bytes(f"{AKARNA}/1.jpg,{labels(AKARNA)}\r\n\r\n{row}\r\n".encode())
    with pytest.raises(ReleaseError, match=message) as error:
        read_split_file(split_file)
    assert f"{split_file}:3:" in str(error.value)


def test_link_row_without_url_names_file_and_line(tmp_path):
    link_file = tmp_path / "pose.txt"
    link_file.write_text(f"{AKARNA}/1.jpg\thttp://x/1.jpg\n{AKARNA}/2.jpg\n")
    with pytest.raises(ReleaseError, match=rf"{link_file}:2:"):
        read_link_file(link_file)


def test_missing_release_is_a_clear_error(tmp_path):
    with pytest.raises(ReleaseNotFoundError, match="No Yoga-82 release"):
        read_release(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleaseNotFoundError, match="yoga_train.txt"):
        read_release(tmp_path / "empty")
