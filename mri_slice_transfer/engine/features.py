"""Feature export: each scan's pooled embedding, one NPZ table per inference run (issue 22 item 7).

``inference.json --save_features true`` adds :class:`FeatureWriter` to the evaluator: it reads the
vector the network's head receives (captured by a forward pre-hook, so no second forward pass) and
writes, next to the predictions CSV, ``features-<run name>.npz`` with the arrays ``image``,
``subject_id``, ``session_id`` (strings) and ``features`` (``[N, D]`` float32), rows in the order of
the predictions CSV. Scans that could not be predicted (an error row in the CSV) get NaN features.
A several-plane model (:class:`~mri_slice_transfer.networks.planes.MultiPlaneNet`, ``axis all``) also
gets one ``features_<plane>`` array per plane (``features_sagittal``, ...: ``[N, 32]``, each plane's
pooled embedding, the output of its aggregation); ``features`` is then the fused embedding.

Load it with ``numpy.load(path)`` (no pickle needed)::

    z = np.load("eval/features-scans.npz")
    df = pd.DataFrame(z["features"]).add_prefix("f").assign(image=z["image"], subject_id=z["subject_id"])
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from mri_slice_transfer.engine.distributed import (
    gather_shards,
    interleave,
    is_main_process,
    shard_path,
    unwrap,
)
from mri_slice_transfer.engine.options import as_bool
from mri_slice_transfer.fileio import atomic_write_bytes
from mri_slice_transfer.networks.conv3d import Conv3DNet
from mri_slice_transfer.networks.planes import MultiPlaneNet
from mri_slice_transfer.networks.slice_set import EMBED_DIM, SliceSetNet

__all__ = ["FeatureWriter", "feature_layer", "plane_feature_layers"]

logger = logging.getLogger(__name__)

#: The string arrays of the NPZ file, in this order, then ``features``.
ID_KEYS = ("image", "subject_id", "session_id")


def feature_layer(network: nn.Module) -> nn.Module:
    """The layer whose input is the network's pooled embedding (its :meth:`pooled_embedding`).

    ``SliceSetNet``: the ``head`` (input ``[B, 32]``); ``Conv3DNet``: the 1x1x1 ``classifier``
    (input ``[B, 64, 1, 1, 1]``).

    Raises:
        TypeError: a network without a known pooled embedding.
    """
    net = unwrap(network)  # DistributedDataParallel / DataParallel
    if isinstance(net, (SliceSetNet, MultiPlaneNet)):
        return net.head
    if isinstance(net, Conv3DNet):
        return net.classifier
    raise TypeError(
        f"save_features: features are written for the project's slice-set networks (SliceSetNet, "
        f"MultiPlaneNet) and the 3D-CNN (Conv3DNet), not {type(net).__name__}; run inference with "
        "save_features false"
    )


def plane_feature_layers(network: nn.Module) -> dict[str, nn.Module]:
    """``{plane: the layer whose output is that plane's pooled embedding}`` (its aggregation).

    Args:
        network: any network (a DDP wrapper is unwrapped).

    Returns:
        one entry per plane of a :class:`~mri_slice_transfer.networks.planes.MultiPlaneNet`, in plane
        order; empty for one-plane networks.
    """
    net = unwrap(network)
    return {p: net.planes[p].aggregate for p in net.axes} if isinstance(net, MultiPlaneNet) else {}


class FeatureWriter:
    """Collect each scan's pooled embedding during an evaluator run and write them as one NPZ file.

    Args:
        network: the evaluator's network (a ``SliceSetNet`` or ``Conv3DNet``).
        features_npz: output path (``.npz``).
        enabled: False: attach nothing and write nothing (the default of ``save_features``).
        shard: ``INDEX/COUNT`` of ``inference.json --shard``: write ``<stem>.shard-INDEX-of-COUNT.npz``.
    """

    def __init__(
        self, network: nn.Module, features_npz: str, enabled: bool = True, shard: str | None = None
    ) -> None:
        self.enabled = as_bool(enabled)
        self.features_npz = Path(shard_path(str(features_npz), shard))
        self.layer = feature_layer(network) if self.enabled else None
        self.plane_layers = plane_feature_layers(network) if self.enabled else {}
        self.ids: dict[str, list[str]] = {k: [] for k in ID_KEYS}
        self.rows: list[np.ndarray] = []
        self.plane_rows: dict[str, list[np.ndarray]] = {p: [] for p in self.plane_layers}
        self._captured: torch.Tensor | None = None
        self._captured_planes: dict[str, torch.Tensor] = {}
        self._width: int | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled or self.layer is None:
            return
        self.layer.register_forward_pre_hook(self._capture)
        for plane, layer in self.plane_layers.items():
            layer.register_forward_hook(lambda m, a, out, plane=plane: self._capture_plane(plane, out))
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._captured = args[0].detach().flatten(1).float().cpu()

    def _capture_plane(self, plane: str, output: torch.Tensor) -> None:
        self._captured_planes[plane] = output.detach().flatten(1).float().cpu()

    def reset(self, engine: Engine | None = None) -> None:
        for values in (*self.ids.values(), self.rows, *self.plane_rows.values()):
            values.clear()
        self._captured = None
        self._captured_planes = {}

    def collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict) or isinstance(output, dict):
            raise TypeError("FeatureWriter needs decollated engine outputs (decollate=True)")
        feats, self._captured = self._captured, None
        if feats is None or feats.shape[0] != len(batch):
            raise RuntimeError(
                f"FeatureWriter: captured {None if feats is None else feats.shape[0]} embeddings for a "
                f"batch of {len(batch)} scans (the network's head did not run once per batch)"
            )
        self._width = feats.shape[1]
        planes, self._captured_planes = self._captured_planes, {}
        for i, (item, out, vec) in enumerate(zip(batch, output, feats.numpy(), strict=True)):
            for key in ID_KEYS:
                value = item.get("image_path", "") if key == "image" else item.get(key, "")
                self.ids[key].append(str(value))
            pred = torch.as_tensor(out["pred"]).float()
            ok = item.get("status", "ok") == "ok" and bool(torch.isfinite(pred).all())
            self.rows.append(vec.astype(np.float32) if ok else np.full(vec.shape, np.nan, np.float32))
            for plane, rows in self.plane_rows.items():
                pvec = planes[plane][i].numpy().astype(np.float32)
                rows.append(pvec if ok else np.full(pvec.shape, np.nan, np.float32))

    def write(self, engine: Engine | None = None) -> Path | None:
        """Write the NPZ file (main process only, every rank's scans in input order); returns its path."""
        parts = gather_shards([self.ids, self.rows, self._width, self.plane_rows])
        if len(parts) > 1:
            self.ids = {key: interleave([p[0][key] for p in parts]) for key in ID_KEYS}
            self.rows = interleave([p[1] for p in parts])
            self._width = next((p[2] for p in parts if p[2]), self._width)
            self.plane_rows = {plane: interleave([p[3][plane] for p in parts]) for plane in self.plane_rows}
        if not is_main_process():
            return None
        width = self._width or 0
        features = np.stack(self.rows) if self.rows else np.zeros((0, width), np.float32)
        arrays = {key: np.asarray(values, dtype=np.str_) for key, values in self.ids.items()}
        arrays["features"] = features.astype(np.float32)
        for plane, rows in self.plane_rows.items():
            arrays[f"features_{plane}"] = np.stack(rows) if rows else np.zeros((0, EMBED_DIM), np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.features_npz, buf.getvalue())
        n_nan = int(np.isnan(features).any(axis=1).sum()) if len(features) else 0
        logger.info(
            "wrote %d x %d features (%d NaN rows of unreadable scans) to %s",
            features.shape[0],
            features.shape[1],
            n_nan,
            self.features_npz,
        )
        return self.features_npz
