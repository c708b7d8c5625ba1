"""The input pipeline: decoding and augmenting one image (torchvision.transforms.v2), and the collate steps that make
batches, with the training batches' targets turned into class probabilities where label smoothing asks for them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

# The report's recipe scales its 256 px images to 224 by random crops: train images are cut from 8/7 of the size.
CROP_RATIO = 256 / 224


def decode_image(image: Image.Image | dict[str, Any], min_size: int) -> Image.Image:
    """An RGB PIL image from a decoded image or a datasets ``Image(decode=False)`` dict.

    JPEGs are decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below ``min_size``,
    which makes full-size web photos several times cheaper to decode than decoding them whole and resizing.
    """
    if isinstance(image, dict):
        source = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image["path"]
        image = Image.open(source)
        if image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))
    return image if image.mode == "RGB" else image.convert("RGB")


class ImageTransform:
    """Decode, augment (training) and normalise one image into a float tensor (3, image_size, image_size).

    Evaluation: squash to ``image_size``, exactly as the saved image processor (ViTImageProcessor) does for the
    pipeline, so that test accuracy is what users get. Training adds, on uint8 tensors: a crop (``train_crop``
    "random": squash to ``CROP_RATIO * image_size``, then a random crop), a horizontal flip with probability
    ``hflip``, and RandAugment with ``rand_augment_ops`` operations.
    """

    def __init__(
        self, image_size: int, train: bool, image_mean: Sequence[float], image_std: Sequence[float], *,
        train_crop: str = "none", hflip: float = 0.0, rand_augment_ops: int = 0,
    ) -> None:
        crop = train and train_crop == "random"
        self.load_size = round(image_size * CROP_RATIO) if crop else image_size
        steps: list[Any] = [v2.PILToTensor(), v2.Resize((self.load_size, self.load_size), antialias=True)]
        if crop:
            steps.append(v2.RandomCrop(image_size))
        if train and hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if train and rand_augment_ops > 0:
            # On PIL images: PIL's kernels for RandAugment's affine ops, Sharpness and AutoContrast are faster than
            # torchvision's tensor ones (benchmarks/README.md).
            steps += [v2.ToPILImage(), v2.RandAugment(num_ops=rand_augment_ops), v2.PILToTensor()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(image_mean), list(image_std))]
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: Image.Image | dict[str, Any]) -> torch.Tensor:
        return self.pipeline(decode_image(image, self.load_size))


class BatchTransform:
    """``Dataset.set_transform`` hook: images to ``pixel_values``; label columns to ``labels``."""

    def __init__(self, transform: ImageTransform, image_column: str, label_columns: list[str]) -> None:
        self.transform, self.image_column, self.label_columns = transform, image_column, label_columns

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        out: dict[str, Any] = {"pixel_values": [self.transform(image) for image in batch[self.image_column]]}
        if len(self.label_columns) == 1:
            out["labels"] = batch[self.label_columns[0]]
        else:
            out["labels"] = [list(levels) for levels in zip(*(batch[c] for c in self.label_columns), strict=True)]
        return out


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A batch with class ids: (batch,) for one level, (batch, levels) for several."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }


class TrainingCollator:
    """The training batches' collate step: class ids become class probabilities where label smoothing asks for
    them, every level's distribution side by side (the form the ViTYoga classifiers' loss takes).

    Label smoothing is applied here rather than by Trainer's LabelSmoother, which reads only ``logits`` (one level)
    and would smooth evaluation losses too. Coarser levels' probabilities are the finer level's summed over each
    parent's children, so every level's target agrees with the finest.
    """

    def __init__(self, class_counts: Sequence[int], parents: Sequence[Sequence[int]], label_smoothing: float) -> None:
        """``class_counts``: classes per predicted level, coarsest first; ``parents``: for each level after the first,
        each class's parent in the level above."""
        self.class_counts = list(class_counts)
        # children_to_parent[i]: (classes of level i + 1, classes of level i), one 1 per row.
        self.children_to_parent = [F.one_hot(torch.tensor(p), n).float() for p, n in zip(parents, class_counts,
                                                                                             strict=False)]
        self.label_smoothing = label_smoothing

    @property
    def active(self) -> bool:
        return self.label_smoothing > 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(examples)
        if not self.active:
            return batch
        labels = batch["labels"]
        finest = labels[:, -1] if labels.ndim == 2 else labels
        probabilities = [F.one_hot(finest, self.class_counts[-1]).float()]
        for to_parent in reversed(self.children_to_parent):
            probabilities.insert(0, probabilities[0] @ to_parent)
        smoothed = [(1 - self.label_smoothing) * p + self.label_smoothing / p.shape[1] for p in probabilities]
        batch["labels"] = torch.cat(smoothed, dim=1)
        return batch
