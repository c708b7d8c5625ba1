"""Self-supervised objectives for a ViTYoga backbone, and the views they learn from.

Two methods, both on the backbone's class token (``pooler_output``, what the classifiers read):

- ``simclr``: SimCLR's contrastive loss (Chen et al., ICML 2020; NT-Xent): two augmented views of each image are
  pulled together, every other view of the batch pushed away. With several processes each process's views meet the
  negatives of every process (gathered with their gradients), as one process with the whole batch would.
- ``dino``: DINO's self-distillation (Caron et al., ICCV 2021), as Gani et al. (BMVC 2022) use it on small data sets:
  a student matches the sharpened, centred output of a momentum teacher across multi-crop views. The teacher and the
  centre are part of the model's state (so of every checkpoint) and evolve identically on every process.

No BatchNorm anywhere (the heads are plain MLPs): a process's gradients never depend on how the batch was split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from modeling_vit_yoga import ViTYogaModel

from .transforms import open_image

METHODS = ("simclr", "dino")


# ------------------------------------------------------------------------------------------ several processes
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGradient(torch.autograd.Function):
    """All processes' rows, concatenated in rank order; the backward pass sums every process's gradient for this
    process's rows (what one process holding the whole batch would compute). Written here because torch's
    ``torch.distributed.nn.all_gather`` backward needs reduce-scatter or all-to-all, which gloo (CPU) lacks."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        world, rank = _world()
        ctx.rank, ctx.rows = rank, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_gradient(local: torch.Tensor) -> torch.Tensor:
    """Every process's ``local`` rows in rank order (equal row counts), differentiable; ``local`` itself alone."""
    return _GatherWithGradient.apply(local) if _world()[0] > 1 else local


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over processes (no gradient)."""
    world, _ = _world()
    if world == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world


# ---------------------------------------------------------------------------------------------------- losses
def contrastive_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the global batch. ``view_a[i]`` and ``view_b[i]``: projections of two views of this process's
    image i. Each of the 2N views of the global batch (N images) is an anchor whose positive is its other view and
    whose negatives are the other 2N - 2 views; a view is never compared with itself. The loss is the mean over this
    process's anchors of the cross-entropy of the positive among those 2N - 1 candidates: ln(2N - 1) when every
    similarity is equal, as at initialisation. Averaged over processes (as DDP averages gradients), it is the loss of
    one process holding the whole batch."""
    a, b = F.normalize(view_a, dim=-1), F.normalize(view_b, dim=-1)
    local = a.shape[0]
    _, rank = _world()
    keys = torch.cat([gather_with_gradient(a), gather_with_gradient(b)])  # (2N, d): every a, then every b
    total = keys.shape[0] // 2
    queries = torch.cat([a, b])  # (2n, d)
    logits = queries @ keys.T / temperature
    own = torch.arange(local, device=a.device) + rank * local  # this process's images in the global batch
    self_index = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])
    logits[torch.arange(2 * local, device=a.device), self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


def distillation_loss(student: torch.Tensor, teacher_probabilities: torch.Tensor, student_temperature: float
                      ) -> torch.Tensor:
    """DINO's loss: ``student`` (views, batch, K) logits of every view; ``teacher_probabilities`` (global views,
    batch, K) of the first views. The mean over pairs of different views (teacher view i, student view j != i) of the
    cross-entropy -sum p_teacher log softmax(student / temperature)."""
    log_student = F.log_softmax(student / student_temperature, dim=-1)
    total, pairs = student.new_zeros(()), 0
    for i, target in enumerate(teacher_probabilities):
        for j, prediction in enumerate(log_student):
            if i == j:
                continue
            total = total + torch.sum(-target * prediction, dim=-1).mean()
            pairs += 1
    return total / pairs


def cosine_schedule(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0, ``end`` at progress 1, cosine in between."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


# ----------------------------------------------------------------------------------------------------- heads
class ProjectionHead(nn.Module):
    """The MLP on the class token that the loss sees (discarded after pretraining): Linear-GELU-Linear-GELU-Linear to
    ``bottleneck``; for DINO then an L2 normalisation and a linear layer to ``out_dim`` with unit-norm weight rows
    (DINO's weight-normalised last layer with its norm fixed at 1)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last = nn.Parameter(torch.randn(out_dim, bottleneck) * 0.02) if out_dim else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)
        if self.last is None:
            return x
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.last, dim=-1))


class SelfSupervisedViT(nn.Module):
    """A ViTYoga backbone and what pretrains it: a projection head, and for DINO a momentum teacher (backbone and
    head, no gradient) and the centre of its outputs. ``forward`` returns ``{"loss": ...}`` as Trainer expects.

    ``pixel_values``: (batch, global views, 3, size, size); ``local_pixel_values``: (batch, local views, 3, s, s),
    DINO's small crops (the position embeddings are interpolated to their size)."""

    def __init__(self, backbone: ViTYogaModel, method: str, *, head_hidden: int = 512, head_bottleneck: int = 128,
                 out_dim: int = 1024, temperature: float = 0.2, teacher_temperature: tuple[float, float] = (0.04, 0.07),
                 teacher_temperature_warmup: float = 0.3, student_temperature: float = 0.1,
                 center_momentum: float = 0.9, teacher_momentum: float = 0.99) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown self-supervised method {method!r}; choose one of {METHODS}")
        self.method = method
        self.backbone = backbone
        width = backbone.config.hidden_size
        self.head = ProjectionHead(width, head_hidden, head_bottleneck, out_dim if method == "dino" else None)
        self.temperature = temperature
        self.teacher_temperature = teacher_temperature
        self.teacher_temperature_warmup = teacher_temperature_warmup
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.progress = 0.0  # share of the optimizer steps done; set by the trainer before each step
        self.statistics: dict[str, list[torch.Tensor]] = {}
        if method == "dino":
            self.teacher_backbone = ViTYogaModel(backbone.config)
            self.teacher_head = ProjectionHead(width, head_hidden, head_bottleneck, out_dim)
            self.teacher_backbone.load_state_dict(backbone.state_dict())
            self.teacher_head.load_state_dict(self.head.state_dict())
            for parameter in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
                parameter.requires_grad_(False)
            self.register_buffer("center", torch.zeros(out_dim))

    @property
    def encoder(self) -> ViTYogaModel:
        """The backbone pretraining hands on: DINO's teacher (the one DINO evaluates and releases), else the one
        trained."""
        return self.teacher_backbone if self.method == "dino" else self.backbone

    def _embed(self, backbone: ViTYogaModel, head: nn.Module, views: torch.Tensor) -> torch.Tensor:
        """(batch, views, 3, h, w) -> (views, batch, out) through one backbone pass."""
        batch, count = views.shape[:2]
        pooled = backbone(pixel_values=views.transpose(0, 1).flatten(0, 1), pooled_only=True,
                          interpolate_pos_encoding=views.shape[-1] != backbone.config.image_size).pooler_output
        return head(pooled).reshape(count, batch, -1)

    def forward(self, pixel_values: torch.Tensor, local_pixel_values: torch.Tensor | None = None, **_: Any
                ) -> dict[str, torch.Tensor]:
        student = self._embed(self.backbone, self.head, pixel_values)
        if self.method == "simclr":
            loss = contrastive_loss(student[0], student[1], self.temperature)
            self._record("embedding_spread", feature_spread(student.flatten(0, 1).detach()))
            return {"loss": loss}
        if local_pixel_values is not None and local_pixel_values.shape[1] > 0:
            student = torch.cat([student, self._embed(self.backbone, self.head, local_pixel_values)])
        with torch.no_grad():
            teacher = self._embed(self.teacher_backbone, self.teacher_head, pixel_values)
            warm = min(self.progress / self.teacher_temperature_warmup, 1.0) if self.teacher_temperature_warmup else 1
            temperature = self.teacher_temperature[0] + warm * (self.teacher_temperature[1] -
                                                                self.teacher_temperature[0])
            probabilities = F.softmax((teacher - self.center) / temperature, dim=-1)
            if self.training:
                batch_center = all_reduce_mean(teacher.mean(dim=(0, 1)))
                self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
            entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1).mean()
            self._record("teacher_entropy", entropy / math.log(probabilities.shape[-1]))
        return {"loss": distillation_loss(student, probabilities, self.student_temperature)}

    @torch.no_grad()
    def update_teacher(self) -> float:
        """The momentum step, after each optimizer step: teacher = m teacher + (1 - m) student, with m rising from
        ``teacher_momentum`` to 1 on a cosine over the run's steps (set in steps: a few hundred images give a few
        optimizer steps an epoch). Returns m; nothing to do without a teacher."""
        if self.method != "dino":
            return 0.0
        momentum = cosine_schedule(self.teacher_momentum, 1.0, self.progress)
        for student, teacher in ((self.backbone, self.teacher_backbone), (self.head, self.teacher_head)):
            for s, t in zip(student.parameters(), teacher.parameters(), strict=True):
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
        return momentum

    def _record(self, name: str, value: torch.Tensor) -> None:
        if self.training:
            self.statistics.setdefault(name, []).append(value.detach())

    def pop_statistics(self) -> dict[str, torch.Tensor]:
        """The mean of each statistic recorded since the last call (on this process)."""
        out = {name: torch.stack(values).mean() for name, values in self.statistics.items() if values}
        self.statistics = {}
        return out


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """How spread out a batch of features is: the standard deviation over the batch of the L2-normalised features,
    averaged over dimensions and scaled by sqrt(dimensions). About 1 for directions spread evenly over the sphere,
    0 when every image maps to the same point (collapse)."""
    normalised = F.normalize(features.float(), dim=-1)
    return normalised.std(dim=0).mean() * math.sqrt(normalised.shape[-1])


# ----------------------------------------------------------------------------------------------------- views
class SelfSupervisedViews:
    """One training image -> its views: ``global_views`` random resized crops at ``image_size`` (area
    ``global_scale``) and ``local_views`` at ``local_size`` (area ``local_scale``), each flipped, colour-jittered
    and sometimes grey, as SimCLR and DINO augment; normalised with the checkpoint's mean and std. The image is
    decoded once for all its views (JPEG draft mode: libjpeg scales while decoding, never below the crop size)."""

    def __init__(self, image_size: int, image_mean: Sequence[float], image_std: Sequence[float], *,
                 global_views: int = 2, local_views: int = 0, local_size: int | None = None,
                 global_scale: tuple[float, float] = (0.25, 1.0), local_scale: tuple[float, float] = (0.05, 0.25),
                 ) -> None:
        self.image_size, self.global_views, self.local_views = image_size, global_views, local_views
        appearance = [v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                      v2.RandomGrayscale(p=0.2), v2.ToDtype(torch.float32, scale=True),
                      v2.Normalize(list(image_mean), list(image_std))]
        self.global_crop = v2.Compose([v2.RandomResizedCrop(image_size, scale=global_scale, antialias=True),
                                       *appearance])
        self.local_crop = v2.Compose([v2.RandomResizedCrop(local_size or image_size // 2, scale=local_scale,
                                                           antialias=True), *appearance])
        self.to_tensor = v2.PILToTensor()

    def __call__(self, image: Image.Image | dict[str, Any], seed: int | None = None) -> dict[str, torch.Tensor]:
        """The views of one image; with ``seed``, drawn from a generator of that seed alone (the same views whatever
        process, worker or batch the image lands in), leaving the global random state as it was."""
        pixels = self.to_tensor(open_image(image, draft_size=self.image_size))
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            views = {"pixel_values": torch.stack([self.global_crop(pixels) for _ in range(self.global_views)])}
            if self.local_views:
                views["local_pixel_values"] = torch.stack([self.local_crop(pixels) for _ in range(self.local_views)])
        return views


class ViewsTransform:
    """``Dataset.set_transform`` hook of the pretraining images: each image's views, drawn from a seed of its own
    (the run's seed, the epoch, the image's index), so that a batch's views do not depend on the process layout,
    the DataLoader workers or a resume. ``epoch`` is set before each epoch (the workers are started after)."""

    def __init__(self, views: SelfSupervisedViews, seed: int) -> None:
        self.views, self.seed, self.epoch = views, seed, 0

    def image_seed(self, index: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63

    def __call__(self, batch: dict[str, list]) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {}
        for image, index in zip(batch["image"], batch["index"], strict=True):
            for key, value in self.views(image, self.image_seed(index)).items():
                out.setdefault(key, []).append(value)
        return out
