"""Synthetic Yoga-82: procedurally drawn stick figures with the real 6 -> 20 -> 82 hierarchy and names.

The structure follows the hierarchy so that a model can learn it the way it would on photos:

* level 1 (6 body positions) fixes the body's orientation and what touches the floor: standing figures are upright
  on straight legs, sitting ones have their legs along the floor, balancing ones rest on their arms, inverted ones
  are head down, reclining ones lie flat, wheel ones arch;
* level 2 (20 variations) fixes the torso angle and the leg arrangement within that position;
* level 3 (82 poses) gives each sibling its own arm arrangement (or, where the arms carry the body, its own legs).

Every image then varies in position, size, mirror image, limb lengths, joint angles, line width, colours and
noise. Images are drawn with PIL at twice the size and downsampled (antialiasing), and stored as PNG so that a
seed reproduces the pixels exactly.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from yoga_common.errors import UsageError

from .builder import yoga82_features
from .export import COUNTS_FILE, check_output_folder, write_parquet_dataset
from .labels import LABEL_82_NAMES, PARENT_OF_20, PARENT_OF_82

# Arm arrangements relative to the torso: (upper arm, forearm bend) for each arm, in degrees. 0 hangs along the
# body, 180 points past the head, +-90 sticks out sideways; the bend turns the forearm from the upper arm.
ARM_VARIANTS: list[tuple[tuple[float, float], tuple[float, float]]] = [
    ((180, 0), (180, 0)),  # both overhead
    ((15, 0), (-15, 0)),  # along the body
    ((90, 0), (-90, 0)),  # spread wide
    ((90, 90), (-90, -90)),  # cactus
    ((180, 0), (15, 0)),  # one up, one down
    ((45, 110), (-45, -110)),  # hands on hips
    ((90, 0), (90, 0)),  # both to one side
    ((140, 0), (-140, 0)),  # high V
    ((160, 130), (-160, -130)),  # hands behind the head
]
# Leg changes (added to the family's thigh and shin angles, left then right) for poses that rest on their arms.
LEG_VARIANTS: list[tuple[float, float, float, float]] = [
    (0, 0, 0, 0),
    (0, -100, 0, -100),  # knees bent
    (-45, -45, 45, 45),  # legs apart
    (0, 0, 70, 70),  # one leg lifted
    (35, 110, 35, 110),  # both knees tucked
    (-70, 0, 0, 0),  # one leg dropped
    (0, 90, 0, -90),  # shins crossed
    (60, 60, 60, 60),  # both legs swung
]


@dataclass(frozen=True)
class Family:
    """A level-2 class: torso angle, legs as (thigh, shin) angles, and which limbs the level-3 poses vary."""

    torso: float
    left_leg: tuple[float, float]
    right_leg: tuple[float, float]
    vary: str = "arms"  # "arms" or "legs"
    arms: tuple[float, float] | None = None  # absolute arm angles when the arms carry the body
    face: int = 1  # which side of the head the face marker is on: up-facing +1, down-facing -1


# Angles are in degrees, counter-clockwise, 0 pointing right and 90 up; the torso goes from hips to neck.
FAMILIES: list[Family] = [
    # Standing: upright on straight legs
    Family(90, (262, 270), (278, 270)),  # 0 straight
    Family(295, (264, 270), (276, 270)),  # 1 forward bend
    Family(125, (238, 245), (302, 295)),  # 2 side bend
    Family(95, (270, 270), (330, 25)),  # 3 others (one leg raised)
    # Sitting: hips on the floor, legs along it
    Family(90, (345, 195), (195, 345)),  # 4 normal 1 (cross-legged)
    Family(90, (2, 185), (8, 180)),  # 5 normal 2 (kneeling)
    Family(90, (180, 180), (0, 0)),  # 6 split
    Family(30, (0, 0), (4, 4)),  # 7 forward bend
    Family(105, (0, 0), (55, 285)),  # 8 twist
    # Balancing: body held above the floor on the arms
    Family(20, (200, 175), (212, 185), vary="legs", arms=(262, 278)),  # 9 front
    Family(50, (330, 10), (345, 20), vary="legs", arms=(255, 285)),  # 10 side
    # Inverted: head down, legs up
    Family(270, (88, 90), (92, 90), vary="legs", arms=(240, 300)),  # 11 legs straight up
    Family(270, (60, 150), (120, 30), vary="legs", arms=(240, 300)),  # 12 legs bent
    # Reclining: lying flat
    Family(180, (0, 0), (2, 2), face=1),  # 13 up facing
    Family(165, (355, 25), (0, 35), face=-1),  # 14 down facing
    Family(180, (0, 0), (35, 35), face=0),  # 15 side facing
    Family(195, (345, 345), (348, 348), vary="legs", arms=(265, 275)),  # 16 plank balance
    # Wheel: arched, hands and feet on the floor
    Family(140, (305, 265), (312, 270), vary="legs", arms=(245, 250)),  # 17 up facing
    Family(225, (295, 285), (300, 290), vary="legs", arms=(235, 240)),  # 18 down facing
    Family(150, (320, 245), (330, 250), face=-1),  # 19 others
]
assert len(FAMILIES) == len(PARENT_OF_20)

TORSO, HEAD, UPPER_ARM, FOREARM, THIGH, SHIN = 1.0, 0.2, 0.5, 0.45, 0.62, 0.58


def _sibling_index() -> list[int]:
    """Position of each pose among the poses of its level-2 class (decides its limb variant)."""
    seen: dict[int, int] = {}
    index = []
    for parent in PARENT_OF_82:
        index.append(seen.get(parent, 0))
        seen[parent] = index[-1] + 1
    return index


SIBLING_INDEX = _sibling_index()


def pose_angles(label_82: int) -> dict[str, float]:
    """The noise-free joint angles of a pose: torso, and upper/lower segments of both arms and legs."""
    family = FAMILIES[PARENT_OF_82[label_82]]
    sibling = SIBLING_INDEX[label_82]
    angles = {
        "torso": family.torso,
        "left_thigh": family.left_leg[0], "left_shin": family.left_leg[1],
        "right_thigh": family.right_leg[0], "right_shin": family.right_leg[1],
    }
    if family.vary == "arms":
        (left_upper, left_bend), (right_upper, right_bend) = ARM_VARIANTS[sibling % len(ARM_VARIANTS)]
        hanging = family.torso + 180
        angles.update(
            left_upper=hanging + left_upper, left_fore=hanging + left_upper + left_bend,
            right_upper=hanging + right_upper, right_fore=hanging + right_upper + right_bend,
        )
    else:
        assert family.arms is not None
        angles.update(
            left_upper=family.arms[0], left_fore=family.arms[0], right_upper=family.arms[1], right_fore=family.arms[1]
        )
        offsets = LEG_VARIANTS[sibling % len(LEG_VARIANTS)]
        for key, offset in zip(("left_thigh", "left_shin", "right_thigh", "right_shin"), offsets, strict=True):
            angles[key] += offset
    return angles


Segment = tuple[np.ndarray, np.ndarray]


def _skeleton(angles: dict[str, float], lengths: dict[str, float]) -> tuple[list[Segment], np.ndarray]:
    def step(start: np.ndarray, angle: float, length: float) -> np.ndarray:
        radians = math.radians(angle)
        return start + length * np.array([math.cos(radians), math.sin(radians)])

    hips = np.zeros(2)
    neck = step(hips, angles["torso"], lengths["torso"])
    head = step(neck, angles["torso"], lengths["head"] * 1.1)
    segments = [(hips, neck)]
    for side in ("left", "right"):
        elbow = step(neck, angles[f"{side}_upper"], lengths["upper_arm"])
        segments += [(neck, elbow), (elbow, step(elbow, angles[f"{side}_fore"], lengths["forearm"]))]
        knee = step(hips, angles[f"{side}_thigh"], lengths["thigh"])
        segments += [(hips, knee), (knee, step(knee, angles[f"{side}_shin"], lengths["shin"]))]
    return segments, head


def draw_pose(label_82: int, rng: np.random.Generator, image_size: int) -> Image.Image:
    """One RGB image of pose ``label_82`` with the random variation drawn from ``rng``."""
    family = FAMILIES[PARENT_OF_82[label_82]]
    angles = {key: value + rng.normal(0, 6) for key, value in pose_angles(label_82).items()}
    lengths = {
        name: base * rng.uniform(0.88, 1.12)
        for name, base in (("torso", TORSO), ("head", HEAD), ("upper_arm", UPPER_ARM), ("forearm", FOREARM),
                           ("thigh", THIGH), ("shin", SHIN))
    }
    segments, head = _skeleton(angles, lengths)
    mirror = rng.random() < 0.5

    points = np.array([p for segment in segments for p in segment] + [head + lengths["head"], head - lengths["head"]])
    low, high = points.min(axis=0), points.max(axis=0)
    canvas = 2 * image_size  # drawn at twice the size, then downsampled: cheap antialiasing
    scale = rng.uniform(0.65, 0.9) * canvas / max(high - low)
    extent = (high - low) * scale
    margin = 0.06 * canvas
    offset = np.array([rng.uniform(margin, max(margin, canvas - margin - extent[i])) for i in range(2)])

    def to_canvas(point: np.ndarray) -> tuple[float, float]:
        x, y = (point - low) * scale + offset
        if mirror:
            x = canvas - x
        return float(x), float(canvas - y)  # y grows downwards in images

    background = rng.integers(0, 256, size=3)
    light = background @ np.array([0.299, 0.587, 0.114]) > 128
    ink = rng.integers(0, 90, size=3) if light else rng.integers(170, 256, size=3)
    image = Image.new("RGB", (canvas, canvas), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    # Proportional to the image, so that limbs stay 1-4 pixels thick at any --image_size (learnable at 32 px too).
    width = max(1, round(rng.uniform(0.035, 0.06) * canvas))
    floor_y = to_canvas(low)[1] + width
    if rng.random() < 0.7:
        floor = tuple(int(v) for v in (background * 0.6 + ink * 0.4))
        draw.line([(0, floor_y), (canvas, floor_y)], fill=floor, width=max(1, width // 2))
    color = tuple(int(v) for v in ink)
    for start, end in segments:
        draw.line([to_canvas(start), to_canvas(end)], fill=color, width=width, joint="curve")
    center, radius = to_canvas(head), lengths["head"] * scale
    draw.ellipse([center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius], fill=color)
    if family.face:
        # The face marker: which way the body faces (up or down) is what tells some reclining families apart.
        facing = math.radians(angles["torso"] + 90 * family.face)
        dx, dy = math.cos(facing) * radius * 1.2, -math.sin(facing) * radius * 1.2
        dx = -dx if mirror else dx
        dot = max(1.0, radius * 0.45)
        x, y = center[0] + dx, center[1] + dy
        draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=color)

    image = image.resize((image_size, image_size), Image.Resampling.BOX)
    sigma = rng.uniform(0, 12)
    if sigma > 1:
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, size=(image_size, image_size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image


def _split_sizes(count: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    test = round(count * test_fraction)
    validation = round(count * validation_fraction)
    while test + validation >= count and (test or validation):  # keep at least one training image
        if validation >= test and validation:
            validation -= 1
        else:
            test -= 1
    return validation, test


def _parameters(images_per_class: int, image_size: int, seed: int, validation_fraction: float,
                test_fraction: float) -> dict[str, float | int | str]:
    return {"generator": "yoga82.synthetic/1", "images_per_class": images_per_class, "image_size": image_size,
            "seed": seed, "validation_fraction": validation_fraction, "test_fraction": test_fraction}


def build_synthetic(
    images_per_class: int = 40, image_size: int = 64, seed: int = 0, validation_fraction: float = 0.2,
    test_fraction: float = 0.2, progress: bool = True, labels: Sequence[int] | None = None,
) -> datasets.DatasetDict:
    """The synthetic data set in memory: ``images_per_class`` per pose, split per class into train/validation/test."""
    if images_per_class < 1 or image_size < 8:
        raise UsageError(f"need images_per_class >= 1 and image_size >= 8, got {images_per_class} and {image_size}")
    if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise UsageError("validation_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    columns: dict[str, dict[str, list]] = {
        split: {"image": [], "image_path": [], "label_6": [], "label_20": [], "label_82": []}
        for split in ("train", "validation", "test")
    }
    n_validation, n_test = _split_sizes(images_per_class, validation_fraction, test_fraction)
    labels = range(len(LABEL_82_NAMES)) if labels is None else labels
    for label_82 in tqdm(labels, desc="Drawing synthetic poses", unit="pose", disable=not progress):
        label_20 = PARENT_OF_82[label_82]
        for index in range(images_per_class):
            # One generator per image, seeded by (seed, pose, index): an image does not depend on how many others
            # are drawn, so a larger set extends a smaller one with the same seed.
            rng = np.random.default_rng([seed, label_82, index])
            buffer = io.BytesIO()
            draw_pose(label_82, rng, image_size).save(buffer, format="PNG", optimize=False)
            split = "test" if index < n_test else "validation" if index < n_test + n_validation else "train"
            path = f"{LABEL_82_NAMES[label_82]}/synthetic_{index:05d}.png"
            column = columns[split]
            column["image"].append({"path": path, "bytes": buffer.getvalue()})
            column["image_path"].append(path)
            column["label_6"].append(PARENT_OF_20[label_20])
            column["label_20"].append(label_20)
            column["label_82"].append(label_82)
    features = yoga82_features()
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(data, features=features) for split, data in columns.items()}
    )


def generate_synthetic(
    output_dir: str | Path,
    images_per_class: int = 40,
    image_size: int = 64,
    seed: int = 0,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic Yoga-82 to ``output_dir`` in the format of ``prepare`` and return the folder.

    The folder appears only once complete (built under a temporary sibling name, then renamed). If it already
    holds a synthetic set made with the same parameters, it is returned as is; a different existing folder is
    refused unless ``overwrite``.
    """
    output_dir = Path(output_dir)
    parameters = _parameters(images_per_class, image_size, seed, validation_fraction, test_fraction)
    counts_file = output_dir / COUNTS_FILE
    if (output_dir / "README.md").is_file() and counts_file.is_file() and not overwrite:
        try:
            existing = json.loads(counts_file.read_text(encoding="utf-8")).get("synthetic")
        except (OSError, ValueError):
            existing = None
        if existing == parameters:
            return output_dir
        raise FileExistsError(
            f"{output_dir} already holds a different dataset ({existing or 'not a synthetic one'}); choose another "
            f"output folder or pass overwrite=True (--overwrite)."
        )
    check_output_folder(output_dir, overwrite=overwrite)  # before drawing anything
    dataset_dict = build_synthetic(images_per_class, image_size, seed, validation_fraction, test_fraction, progress)
    return write_parquet_dataset(
        dataset_dict,
        output_dir,
        pretty_name="Synthetic Yoga-82 (stick figures)",
        description=(
            "Procedurally drawn stick-figure poses with the Yoga-82 hierarchy and class names: the 82 poses under "
            "their real 20 and 6 parents. Poses under the same body position share its orientation, poses under the "
            "same variation share the torso and leg arrangement, and each pose has its own limb arrangement; "
            "position, size, mirror image, proportions, line width, colours and noise vary at random. Generated "
            f"with `python -m yoga82 synthetic` ({images_per_class} images per pose, {image_size} px, seed {seed}). "
            "Use it to test a training pipeline end to end without downloading anything."
        ),
        extra_counts={"synthetic": parameters},
        license="apache-2.0",
        source=(
            "Generated by this project's `yoga82/synthetic.py`; no photographs are involved. The class hierarchy and "
            "names are those of Yoga-82 (Verma et al., 2020)."
        ),
        overwrite=overwrite,
    )
