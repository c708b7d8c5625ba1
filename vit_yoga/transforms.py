"""The input pipeline: decoding and augmenting one training image (torchvision.transforms.v2), preparing one
evaluation image exactly as the pipeline users call does, and the collate steps that make batches, with the training
batches' targets turned into class probabilities where label smoothing asks for them."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from transformers.image_utils import load_image

# The report's recipe scales its 256 px images to 224 by random crops: train images are cut from 8/7 of the size.
CROP_RATIO = 256 / 224


def open_image(image: Image.Image | dict[str, Any], draft_size: int | None = None) -> Image.Image:
    """An upright RGB PIL image from a decoded image or a datasets ``Image(decode=False)`` dict, loaded exactly as
    the image-classification pipeline loads what users give it (transformers' ``load_image``: EXIF orientation
    applied, then RGB).

    ``draft_size``: decode JPEGs in draft mode, where libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below
    that size; several times cheaper for full-size web photos. Training only: the pipeline decodes in full.
    """
    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image["path"])
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
    return load_image(image)


class TrainingTransform:
    """Decode, augment and normalise one training image into a float tensor (3, image_size, image_size).

    On uint8 tensors: a crop (``train_crop`` "random": squash to ``CROP_RATIO * image_size``, then a random crop, the
    report's; "random_resized": a random area of ``crop_min_scale`` to all of the image and a random aspect ratio,
    resized, as DeiT and timm; "none": squash to ``image_size``, as evaluation does), a horizontal flip with
    probability ``hflip``, RandAugment with ``rand_augment_ops`` operations of magnitude ``rand_augment_magnitude``;
    then the checkpoint's normalisation, and random erasing with probability ``reprob`` (noise-filled, as timm).
    """

    def __init__(
        self, image_size: int, image_mean: Sequence[float], image_std: Sequence[float], *, train_crop: str = "none",
        crop_min_scale: float = 0.08, hflip: float = 0.0, rand_augment_ops: int = 0, rand_augment_magnitude: int = 9,
        reprob: float = 0.0,
    ) -> None:
        self.load_size = round(image_size * CROP_RATIO) if train_crop == "random" else image_size
        steps: list[Any] = [v2.PILToTensor()]
        if train_crop == "random_resized":
            steps.append(v2.RandomResizedCrop(image_size, scale=(crop_min_scale, 1.0), antialias=True))
        else:
            steps.append(v2.Resize((self.load_size, self.load_size), antialias=True))
        if train_crop == "random":
            steps.append(v2.RandomCrop(image_size))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if rand_augment_ops > 0:
            # On PIL images: PIL's kernels for RandAugment's affine ops, Sharpness and AutoContrast are faster than
            # torchvision's tensor ones (benchmarks/README.md).
            steps += [v2.ToPILImage(), v2.RandAugment(rand_augment_ops, rand_augment_magnitude), v2.PILToTensor()]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(image_mean), list(image_std))]
        if reprob > 0:
            steps.append(v2.RandomErasing(reprob, value="random"))
        self.pipeline = v2.Compose(steps)

    def __call__(self, image: Image.Image | dict[str, Any]) -> torch.Tensor:
        return self.pipeline(open_image(image, draft_size=self.load_size))


class EvaluationTransform:
    """One evaluation image as the image-classification pipeline prepares it: ``load_image``, then the checkpoint's
    own image processor. The accuracy train.py reports is then what users of the checkpoint get."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image | dict[str, Any]) -> torch.Tensor:
        return self.processor(images=open_image(image), return_tensors="pt")["pixel_values"][0]


class BatchTransform:
    """``Dataset.set_transform`` hook: images to ``pixel_values``; label columns to ``labels``."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], image_column: str, label_columns: list[str]) -> None:
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
    """The training batches' collate step: MixUp and CutMix (torchvision's, on the batch), and class ids turned into
    class probabilities where mixing or label smoothing asks for them, every level's distribution side by side (the
    form the ViTYoga classifiers' loss takes).

    Images are mixed by the finest level's labels; a coarser level's probabilities are the finer level's summed over
    each parent's children, so every level's target agrees with the finest. Label smoothing is applied here rather
    than by Trainer's LabelSmoother, which reads only ``logits`` (one level) and would smooth evaluation losses too.
    """

    def __init__(
        self, class_counts: Sequence[int], parents: Sequence[Sequence[int]], *, label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
    ) -> None:
        """``class_counts``: classes per predicted level, coarsest first; ``parents``: for each level after the first,
        each class's parent in the level above; ``mixup_alpha``, ``cutmix_alpha``: Beta(alpha, alpha) mixing, 0 off
        (both on: one of the two, at random, per batch)."""
        self.class_counts = list(class_counts)
        # children_to_parent[i]: (classes of level i + 1, classes of level i), one 1 per row.
        self.children_to_parent = [F.one_hot(torch.tensor(p), n).float()
                                   for p, n in zip(parents, class_counts, strict=False)]
        self.label_smoothing = label_smoothing
        mixers = []
        if mixup_alpha > 0:
            mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=self.class_counts[-1]))
        if cutmix_alpha > 0:
            mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=self.class_counts[-1]))
        self.mix = v2.RandomChoice(mixers) if len(mixers) > 1 else (mixers[0] if mixers else None)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate(examples)
        if self.mix is None and self.label_smoothing == 0:
            return batch
        labels = batch["labels"]
        finest = labels[:, -1] if labels.ndim == 2 else labels
        if self.mix is not None:
            batch["pixel_values"], finest_probabilities = self.mix(batch["pixel_values"], finest)
        else:
            finest_probabilities = F.one_hot(finest, self.class_counts[-1]).float()
        probabilities = [finest_probabilities]
        for to_parent in reversed(self.children_to_parent):
            probabilities.insert(0, probabilities[0] @ to_parent)
        smoothed = [(1 - self.label_smoothing) * p + self.label_smoothing / p.shape[1] for p in probabilities]
        batch["labels"] = torch.cat(smoothed, dim=1)
        return batch
