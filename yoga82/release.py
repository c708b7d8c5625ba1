"""Parsing and validation of the Yoga-82 release: the split files and the per-pose link files.

The release is plain text written by hand-run scripts and copied across operating systems, so the parser accepts
the quirks real copies have (CRLF, a BOM, blank lines, stray spaces, tab- or comma-separated link rows, non-``.txt``
files beside the link files) and rejects, with ``file:line``, anything that would silently corrupt the labels.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yoga_common.errors import UsageError

from .labels import LABEL_6_NAMES, LABEL_20_NAMES, LABEL_82_NAMES, PARENT_OF_20, PARENT_OF_82

TRAIN_FILE = "yoga_train.txt"
TEST_FILE = "yoga_test.txt"
LINKS_DIR = "yoga_dataset_links"

# A URL starts where a scheme does; everything before it (minus the separator) is the image path, which may itself
# contain spaces, commas or parentheses ("Sitting pose 1 (normal)/12.jpg").
_URL_START = re.compile(r"[\t ,;]+(?=[A-Za-z][A-Za-z0-9+.-]*://)")


class ReleaseError(UsageError):
    """The release metadata is malformed; the message names the file and line."""


class ReleaseNotFoundError(FileNotFoundError):
    """There is no Yoga-82 release where the user pointed."""


@dataclass(frozen=True)
class SplitRow:
    """One labelled image of ``yoga_train.txt`` / ``yoga_test.txt``."""

    path: str  # "<pose folder>/<file>", as in the release
    label_6: int
    label_20: int
    label_82: int
    source: str  # file name, for error messages
    line: int


@dataclass(frozen=True)
class LinkRow:
    """One ``<pose folder>/<file>`` -> URL row of a link file."""

    path: str
    url: str
    source: str
    line: int


@dataclass
class Release:
    """The parsed release: official train and test rows, and the image links."""

    root: Path
    train: list[SplitRow]
    test: list[SplitRow]
    links: list[LinkRow]

    def listed_counts(self, rows: Iterable[SplitRow]) -> list[int]:
        counts = [0] * len(LABEL_82_NAMES)
        for row in rows:
            counts[row.label_82] += 1
        return counts


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    # utf-8-sig drops a BOM; splitlines() handles \n, \r\n and lone \r alike.
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line:
            yield number, line


def normalize_release_path(path: str) -> str:
    """Strip stray spaces around the path and its components and use forward slashes."""
    path = path.strip().replace("\\", "/")
    parts = [part.strip() for part in path.split("/")]
    # A leading slash is kept: an absolute path must stay recognisable so that the downloader can refuse it.
    return ("/" if path.startswith("/") else "") + "/".join(part for part in parts if part)


def check_labels(label_6: int, label_20: int, label_82: int, path: str, where: str) -> None:
    """Raise ReleaseError unless the three labels are in range and agree with the hierarchy and the pose folder."""
    for value, names, level in (
        (label_6, LABEL_6_NAMES, "label_6"),
        (label_20, LABEL_20_NAMES, "label_20"),
        (label_82, LABEL_82_NAMES, "label_82"),
    ):
        if not 0 <= value < len(names):
            raise ReleaseError(f"{where}: {level}={value} is out of range 0..{len(names) - 1}")
    if PARENT_OF_82[label_82] != label_20:
        raise ReleaseError(
            f"{where}: label_82={label_82} ({LABEL_82_NAMES[label_82]}) belongs to label_20="
            f"{PARENT_OF_82[label_82]}, but the row says label_20={label_20}"
        )
    if PARENT_OF_20[label_20] != label_6:
        raise ReleaseError(
            f"{where}: label_20={label_20} ({LABEL_20_NAMES[label_20]}) belongs to label_6="
            f"{PARENT_OF_20[label_20]}, but the row says label_6={label_6}"
        )
    folder = PurePosixPath(path).parts[0] if "/" in path else ""
    if folder != LABEL_82_NAMES[label_82]:
        raise ReleaseError(
            f"{where}: image folder {folder!r} is not the pose of label_82={label_82} "
            f"({LABEL_82_NAMES[label_82]})"
        )


def read_split_file(path: str | Path) -> list[SplitRow]:
    """Parse a split file: ``<pose folder>/<file>,<label_6>,<label_20>,<label_82>`` per line."""
    path = Path(path)
    rows: list[SplitRow] = []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        # rsplit: a file name may contain a comma, the three labels never do.
        fields = [field.strip() for field in line.rsplit(",", 3)]
        if len(fields) != 4 or not fields[0]:
            raise ReleaseError(
                f"{where}: expected '<pose folder>/<file>,<label_6>,<label_20>,<label_82>', got {line!r}"
            )
        try:
            label_6, label_20, label_82 = (int(field) for field in fields[1:])
        except ValueError:
            raise ReleaseError(f"{where}: labels must be integers, got {line!r}") from None
        image_path = normalize_release_path(fields[0])
        check_labels(label_6, label_20, label_82, image_path, where)
        rows.append(SplitRow(image_path, label_6, label_20, label_82, path.name, number))
    return rows


def read_link_file(path: str | Path) -> list[LinkRow]:
    """Parse a link file: ``<pose folder>/<file>`` then a URL, separated by a tab, a comma or spaces."""
    path = Path(path)
    rows: list[LinkRow] = []
    for number, line in _lines(path):
        if "\t" in line:
            image_path, _, url = line.partition("\t")
        else:
            match = _URL_START.search(line)
            if match is None:
                raise ReleaseError(f"{path}:{number}: expected '<pose folder>/<file>' then a URL, got {line!r}")
            image_path, url = line[: match.start()], line[match.end() :]
        image_path, url = normalize_release_path(image_path), url.strip()
        if not image_path or not url:
            raise ReleaseError(f"{path}:{number}: expected '<pose folder>/<file>' then a URL, got {line!r}")
        rows.append(LinkRow(image_path, url, path.name, number))
    return rows


def _require_dir(release_dir: Path) -> Path:
    if not release_dir.is_dir():
        raise ReleaseNotFoundError(
            f"No Yoga-82 release at {release_dir}: the folder does not exist. Point --release_dir at the unpacked "
            f"release (the folder holding {TRAIN_FILE}, {TEST_FILE} and {LINKS_DIR}/)."
        )
    return release_dir


def link_files(release_dir: str | Path) -> list[Path]:
    """The link files of a release, sorted; other files in the folder (desktop.ini, .DS_Store) are ignored."""
    links_dir = _require_dir(Path(release_dir)) / LINKS_DIR
    files = []
    if links_dir.is_dir():
        files = sorted(p for p in links_dir.iterdir() if p.is_file() and p.suffix.lower() == ".txt")
    if not files:
        raise ReleaseNotFoundError(
            f"No Yoga-82 release at {release_dir}: {links_dir} has no .txt link files. Point --release_dir at the "
            f"unpacked release (the folder holding {TRAIN_FILE}, {TEST_FILE} and {LINKS_DIR}/)."
        )
    return files


def read_links(release_dir: str | Path) -> list[LinkRow]:
    """All link rows of a release, in file order."""
    return [row for file in link_files(release_dir) for row in read_link_file(file)]


def read_release(release_dir: str | Path, *, with_links: bool = True) -> Release:
    """Parse and validate a whole release folder."""
    root = _require_dir(Path(release_dir))
    missing = [name for name in (TRAIN_FILE, TEST_FILE) if not (root / name).is_file()]
    if missing:
        raise ReleaseNotFoundError(
            f"No Yoga-82 release at {root}: missing {', '.join(missing)}. Point --release_dir at the unpacked release."
        )
    train, test = read_split_file(root / TRAIN_FILE), read_split_file(root / TEST_FILE)
    seen: dict[str, SplitRow] = {}
    for row in (*train, *test):
        if row.path in seen:
            first = seen[row.path]
            raise ReleaseError(
                f"{row.source}:{row.line}: {row.path} is listed again (first at {first.source}:{first.line})"
            )
        seen[row.path] = row
    return Release(root, train, test, read_links(root) if with_links else [])


def stratified_split(
    rows: Sequence[SplitRow], fraction: float, seed: int
) -> tuple[list[SplitRow], list[SplitRow]]:
    """Split rows into (kept, held out) with ``round(fraction * n)`` of each label_82 class held out.

    Written by hand because it has to act on the release's rows, before any image is read: which images a user
    managed to download must not move an image from one split to the other (that would leak between runs).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[SplitRow]] = defaultdict(list)
    for row in rows:
        by_class[row.label_82].append(row)
    held_out_paths: set[str] = set()
    rng = random.Random(seed)
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda row: row.path)
        rng.shuffle(members)
        held_out_paths.update(row.path for row in members[: round(fraction * len(members))])
    kept = [row for row in rows if row.path not in held_out_paths]
    held_out = [row for row in rows if row.path in held_out_paths]
    return kept, held_out
