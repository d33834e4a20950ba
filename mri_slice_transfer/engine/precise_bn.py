"""Precise BatchNorm statistics before each validation (an Ignite handler).

BatchNorm layers evaluate with running averages of batch statistics (momentum 0.1). While the
weights still move quickly, as in the short demo runs, those averages lag the network they
describe, and validation outputs swing from one epoch to the next although the training loss falls
steadily (the AD demo once had validation ROC AUC 0.97, 0.36 and 1.00 at epochs 6, 7 and 8).
Recomputing the statistics with the current weights over some training batches before evaluating
("precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm") removes that lag.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable

import torch
from ignite.engine import Engine, Events

from mri_slice_transfer.engine.distributed import unwrap

__all__ = ["PreciseBatchNorm", "recompute_batchnorm_stats"]

logger = logging.getLogger(__name__)

_BatchNorm = torch.nn.modules.batchnorm._BatchNorm


def recompute_batchnorm_stats(
    network: torch.nn.Module,
    batches: Iterable,
    num_batches: int,
    device: torch.device | str,
    forward: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor] | None = None,
    image_key: str = "image",
) -> int:
    """Replace the running mean/var of every BatchNorm layer by their average over ``num_batches`` batches.

    The network runs in training mode without gradients; each layer's statistics become the plain
    (cumulative) average over the batches (``momentum=None``), as in PyTorch's
    ``torch.optim.swa_utils.update_bn``. The training mode of every module is restored afterwards,
    and the global torch RNG too, so the training data order is the same with or without this.

    Args:
        network: the network (a DDP wrapper is unwrapped for the layer list).
        batches: an iterable of batches (dicts with ``image_key``, ``[B, 1, X, Y, Z]``, or tensors),
            usually the training data loader.
        num_batches: how many batches to use (at most the loader's length).
        device: where the network is.
        forward: ``forward(images, network)`` (e.g. the bundle's inferer, for the same precision as
            training); default ``network(images)``.
        image_key: key of the images in dict batches.

    Returns:
        the number of batches used (0 if the network has no BatchNorm layer or ``num_batches`` < 1).
    """
    norms = [m for m in unwrap(network).modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms or num_batches < 1:
        return 0
    run = forward or (lambda x, net: net(x))
    modes = {m: m.training for m in network.modules()}
    momenta = {m: m.momentum for m in norms}
    used = 0
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
            network.train()
            for batch in itertools.islice(batches, int(num_batches)):
                images = batch[image_key] if isinstance(batch, dict) else batch
                images = torch.as_tensor(images).to(device)
                run(images, network)
                used += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.train(mode)
    return used


class PreciseBatchNorm:
    """Ignite handler: :func:`recompute_batchnorm_stats` when an evaluator starts.

    Attach it to the validation evaluator (the bundles list it in ``validate#handlers``); it runs
    before the first validation batch, so validation, the best-model checkpoint and everything after
    use statistics of the current weights. Training is unchanged (training-mode BatchNorm uses batch
    statistics). No effect on networks without BatchNorm (cnn5, the 3D-CNN use InstanceNorm).

    Args:
        loader: batches to compute the statistics on (the training data loader).
        network: the trained network.
        device: its device.
        num_batches: batches to use; 0 switches the handler off.
        inferer: ``inferer(images, network)`` used for the forward pass (the training inferer, so that
            the precision matches); None: ``network(images)``.
    """

    def __init__(
        self,
        loader: Iterable,
        network: torch.nn.Module,
        device: torch.device | str,
        num_batches: int = 32,
        inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor] | None = None,
    ) -> None:
        if int(num_batches) < 0:
            raise ValueError(f"precise BatchNorm: num_batches must be 0 (off) or positive, not {num_batches}")
        self.loader = loader
        self.network = network
        self.device = device
        self.num_batches = int(num_batches)
        self.inferer = inferer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        start = time.perf_counter()
        used = recompute_batchnorm_stats(
            self.network, self.loader, self.num_batches, self.device, self.inferer
        )
        if used:
            logger.info(
                "BatchNorm statistics recomputed on %d training batches (%.1f s)",
                used,
                time.perf_counter() - start,
            )
