"""Self-supervised pretraining of the 2D slice encoder (``pretrain.json``): SimCLR on pairs of slices.

Each training step takes a batch of template-space volumes, picks ``slices_per_scan`` slices with
brain in them along the model's axis, and makes two views of each: the slice and a slice up to
``neighbour`` positions away, each randomly cropped-and-resized, rotated, rescaled in contrast,
shifted in brightness, blurred and given noise (inside the brain; the background stays 0). The
encoder plus a small projection head maps every view to a vector, and the NT-Xent loss
(``monai.losses.ContrastiveLoss``) pulls the two views of a slice together and pushes the other
slices of the batch away (docs/pretraining.md says why this objective).

The random choices of a step come from a ``torch.Generator`` seeded with ``(seed, iteration)``, not
from the global random state or MONAI's per-transform states, so a run resumed from its checkpoint
draws exactly what an uninterrupted run draws.

Output: ``models/encoder.pt``, the encoder's own state dict (the keys of the ResNet backbone or of
the cnn5 encoder; written atomically each epoch, loadable with ``torch.load(weights_only=True)``),
which ``train.json --pretrained models/encoder.pt`` loads exactly, and ``models/encoder.json``, its
record (encoder, axis, input scale, epoch, loss, data, sha256).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.losses import ContrastiveLoss
from torchvision.transforms.v2.functional import gaussian_blur

from mri_slice_transfer.engine.distributed import is_main_process, unwrap
from mri_slice_transfer.engine.io import atomic_torch_save
from mri_slice_transfer.engine.model_record import versions
from mri_slice_transfer.engine.network import build_network
from mri_slice_transfer.fileio import atomic_write_json, file_sha256

__all__ = [
    "OBJECTIVE",
    "SliceViews",
    "ContrastiveNet",
    "build_contrastive_network",
    "PairContrastiveLoss",
    "ContrastiveTrainer",
    "EncoderSaver",
    "step_loss",
]

logger = logging.getLogger(__name__)

#: What ``encoder.json`` records as the objective.
OBJECTIVE = "simclr (NT-Xent on two augmented views of a slice and its neighbour)"

#: Volume dimension (of x, y, z) that each slicing axis indexes (as :class:`SliceSetNet` cuts).
_AXIS_DIM = {"sagittal": 0, "coronal": 1, "axial": 2}


class SliceViews:
    """Two augmented views of ``slices_per_scan`` brain slices of each volume (module docstring).

    Args:
        axis: ``"sagittal"``, ``"coronal"`` or ``"axial"`` (as the classifier will slice).
        slices_per_scan: slices drawn from each volume per step.
        neighbour: the second view's slice is up to this many slices away from the first's.
        min_brain: a slice is eligible when its brain area is at least this fraction of the largest.
        crop: smallest side of the random crop, as a fraction of the slice.
        rotate: largest rotation, degrees.
        contrast, brightness, noise: largest contrast factor deviation, brightness shift and noise
            standard deviation (the volumes are z-scored over the brain).
        seed: seed of the per-step random generator.
    """

    def __init__(
        self,
        axis: str = "axial",
        slices_per_scan: int = 8,
        neighbour: int = 2,
        min_brain: float = 0.25,
        crop: float = 0.7,
        rotate: float = 10.0,
        contrast: float = 0.3,
        brightness: float = 0.3,
        noise: float = 0.1,
        seed: int = 0,
    ) -> None:
        if axis not in _AXIS_DIM:
            raise ValueError(f"axis must be one of {', '.join(_AXIS_DIM)}, not {axis!r}")
        if int(slices_per_scan) < 1 or not 0 < float(crop) <= 1:
            raise ValueError(
                f"slices_per_scan must be >= 1 and crop in (0, 1], not {slices_per_scan}, {crop}"
            )
        self.axis, self.slices_per_scan, self.neighbour = axis, int(slices_per_scan), int(neighbour)
        self.min_brain, self.crop, self.rotate = float(min_brain), float(crop), float(rotate)
        self.contrast, self.brightness, self.noise = float(contrast), float(brightness), float(noise)
        self.seed = int(seed)

    def generator(self, iteration: int) -> torch.Generator:
        """The random generator of one training step (the same after a resume)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(iteration))

    def pick(self, volumes: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two stacks of slices ``[B * S, 1, H, W]``: chosen slices and their neighbours."""
        x = volumes.movedim(2 + _AXIS_DIM[self.axis], 2)  # [B, 1, K, H, W]
        area = (x != 0).sum(dim=(1, 3, 4)).float().cpu()  # brain voxels per slice [B, K]
        eligible = area >= self.min_brain * area.amax(dim=1, keepdim=True)  # all, for a blank volume
        k = x.shape[2]
        first, second = [], []
        for b in range(x.shape[0]):
            idx = torch.nonzero(eligible[b]).flatten()
            pick = idx[torch.randint(len(idx), (self.slices_per_scan,), generator=gen)]
            near = torch.randint(-self.neighbour, self.neighbour + 1, pick.shape, generator=gen)
            first.append(x[b, :, pick.to(x.device)])
            second.append(x[b, :, (pick + near).clamp(0, k - 1).to(x.device)])
        return torch.cat(first, 1).movedim(1, 0), torch.cat(second, 1).movedim(1, 0)

    def augment(self, s: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop-and-resize with rotation, contrast, brightness, blur and noise of ``[N, 1, H, W]``."""
        n = s.shape[0]

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(n, *shape, generator=gen)).to(s.device, s.dtype)

        scale = uniform(self.crop, 1.0)
        angle = uniform(-self.rotate, self.rotate) * math.pi / 180
        shift = uniform(-1.0, 1.0, 2) * (1 - scale)[:, None]
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(s.shape), align_corners=False)
        out = F.grid_sample(s, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        brain = (out != 0).to(s.dtype)
        sigma = float(uniform(0.1, 1.0)[0])  # one blur width per view batch (torchvision's blur is batched)
        out = gaussian_blur(out, kernel_size=[3, 3], sigma=[sigma, sigma])
        contrast = uniform(1 - self.contrast, 1 + self.contrast)[:, None, None, None]
        bright = uniform(-self.brightness, self.brightness)[:, None, None, None]
        noise = torch.randn(s.shape, generator=gen).to(s.device, s.dtype) * self.noise
        return (out * contrast + bright + noise) * brain

    def __call__(self, volumes: torch.Tensor, iteration: int) -> torch.Tensor:
        """Both views stacked, ``[2 * B * S, 1, H, W]`` (first views, then second views)."""
        gen = self.generator(iteration)
        first, second = self.pick(volumes, gen)
        return torch.cat([self.augment(first, gen), self.augment(second, gen)])


class ContrastiveNet(nn.Module):
    """A slice encoder with a projection head: slices ``[N, 1, H, W]`` -> ``[N, projection_dim]``.

    Args:
        encoder: the 2D slice encoder (``out_features`` wide), as :class:`SliceSetNet` builds it.
        arch: its name (``"cnn5"``, ``"resnet18"``, ...).
        hidden, projection_dim: widths of the two-layer projection head (discarded after pretraining).
    """

    def __init__(self, encoder: nn.Module, arch: str, hidden: int = 256, projection_dim: int = 64) -> None:
        super().__init__()
        self.encoder, self.arch = encoder, arch
        self.projection = nn.Sequential(
            nn.Linear(encoder.out_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, projection_dim)
        )

    def encoder_weights(self) -> dict[str, torch.Tensor]:
        """What ``--pretrained`` loads: the ResNet backbone's or the cnn5 encoder's state dict."""
        module = getattr(self.encoder, "backbone", self.encoder)
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(slices))


def build_contrastive_network(
    encoder: str = "resnet18",
    axis: str = "axial",
    pretrained: Any = False,
    channels_last: bool | str = False,
    input_scale: float | str | None = None,
) -> ContrastiveNet:
    """The encoder exactly as ``train.json`` builds it (:func:`build_network`), with a projection head.

    Args:
        encoder: a 2D slice encoder name (not ``conv3d``: it has no slices).
        axis: the slicing axis.
        pretrained: where the encoder starts (False: random; ``"auto"`` / True / a file as for training).
        channels_last, input_scale: as for :func:`build_network`.

    Returns:
        the network; ``encoder_init`` says how its encoder was initialised.
    """
    net = build_network(
        encoder=encoder,
        axis=axis,
        pretrained=pretrained,
        channels_last=channels_last,
        input_scale=input_scale,
    )
    if not hasattr(net, "encoder"):
        raise ValueError(f"encoder must be a 2D slice encoder (cnn5 or a ResNet), not {encoder!r}")
    model = ContrastiveNet(net.encoder, str(net.architecture["encoder"]))
    model.encoder_init = net.encoder_init
    model.architecture = {"encoder": model.arch, "axis": str(axis), "input_scale": input_scale}
    return model


class PairContrastiveLoss(nn.Module):
    """NT-Xent of ``[2N, D]`` outputs whose halves are two views of N slices (MONAI's ContrastiveLoss).

    Args:
        temperature: the softmax temperature.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.loss = ContrastiveLoss(temperature=float(temperature))

    def forward(self, output: torch.Tensor, target: Any = None) -> torch.Tensor:
        first, second = output.float().chunk(2)
        return self.loss(first, second)


class ContrastiveTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` whose batches are the :class:`SliceViews` of the loaded volumes.

    Args:
        views: makes the two views of a step from the batch's ``image`` volumes.
        kwargs: ``SupervisedTrainer`` arguments (``prepare_batch`` is set here).
    """

    def __init__(self, views: SliceViews, **kwargs: Any) -> None:
        self.views = views
        kwargs.setdefault("decollate", False)  # the output is the step's views, not per-scan items
        super().__init__(prepare_batch=self._views, **kwargs)

    def _views(self, batch: dict, device: Any = None, non_blocking: bool = False, **_: Any) -> tuple:
        volumes = batch["image"]
        volumes = volumes.as_tensor() if hasattr(volumes, "as_tensor") else torch.as_tensor(volumes)
        volumes = volumes.to(device=device, non_blocking=non_blocking)
        return self.views(volumes, self.state.iteration), None


def step_loss(output: dict) -> torch.Tensor:
    """The loss of a :class:`ContrastiveTrainer` step (its ``engine.state.output``, not decollated)."""
    return output["loss"]


class EncoderSaver:
    """Save the encoder's weights (``models/encoder.pt``) and their record (``.json``) each epoch.

    Args:
        network: the :class:`ContrastiveNet` being pretrained.
        path: the weights file; the record goes beside it with the suffix ``.json`` (:attr:`record_path`).
        data: the run's :class:`~mri_slice_transfer.engine.pretrain_data.PretrainData`, for the record.
        output_transform: ``engine.state.output`` -> loss.
    """

    def __init__(
        self,
        network: nn.Module,
        path: str,
        data: Any = None,
        output_transform: Callable[[Any], Any] = step_loss,
    ) -> None:
        self.network = network
        self.path = Path(path)
        self.record_path = self.path.with_suffix(".json")
        self.data = data
        self.output_transform = output_transform
        self.losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.losses.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def iteration_completed(self, engine: Engine) -> None:
        self.losses.append(float(self.output_transform(engine.state.output).detach()))

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        net = unwrap(self.network)
        atomic_torch_save(net.encoder_weights(), self.path)
        atomic_write_json(self.record_path, self.record(net, int(engine.state.epoch)))

    def record(self, net: ContrastiveNet, epoch: int) -> dict[str, Any]:
        """The content of ``encoder.json``."""
        return {
            **dict(getattr(net, "architecture", {})),
            "objective": OBJECTIVE,
            "epoch": epoch,
            "train_loss": sum(self.losses) / len(self.losses) if self.losses else None,
            "encoder_init": str(getattr(net, "encoder_init", "unknown")),
            "data": self.data.summary() if self.data is not None else {},
            "sha256": file_sha256(self.path),
            "versions": versions(),
            "use": f"train.json --pretrained {self.path}",
        }
