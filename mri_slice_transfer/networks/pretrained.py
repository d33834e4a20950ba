"""Initialising a 2D slice encoder (ResNet, any torchvision or timm model) from ImageNet or a local file.

``pretrained`` (as accepted by :class:`~.slice_set.SliceSetNet` and :func:`~.factory.build_model`):

- ``False``: random initialisation (``encoder_init = "scratch"``).
- ``True`` (or the strings ``"imagenet"`` / ``"true"``): torchvision's ImageNet weights
  (``ResNet18_Weights.IMAGENET1K_V1`` etc. for the built-in ResNets,
  ``get_model_weights(name).DEFAULT`` for any other torchvision model:
  :func:`~.registry.imagenet_weights`). They are read from torchvision's cache
  ``$TORCH_HOME/hub/checkpoints/<file>`` (see :func:`mri_slice_transfer.paths.torch_weights_dir`) or
  downloaded there; if neither works a :class:`RuntimeError` names the file, the folder and the URL,
  so the file can be copied onto an offline machine by hand. ``timm:<model>`` encoders take timm's
  pretrained weights from the Hugging Face / timm cache only (never downloaded here). The file is
  verified before use, however it got there: its SHA-256 must start with the hash in its name and
  it is loaded with ``torch.load(weights_only=True)`` (:func:`read_verified_weights`).
- ``"auto"``: ImageNet if available (cache or download), otherwise random initialisation with a
  logging WARNING; ``encoder_init`` records which one happened.
- a path (``str`` / :class:`~pathlib.Path`): a local ``torch.save``-d state dict for the 2D encoder,
  e.g. a RadImageNet or RadiologyNET ResNet ported to PyTorch. Common wrapper prefixes and
  ``nn.Sequential(*list(resnet.children())[:-1])`` index keys are mapped to torchvision names.

A file of which only some tensors match the encoder is refused unless ``strict=False``
(``pretrained_strict`` of :func:`~.factory.build_model`); see :func:`load_encoder_weights`.

A 3-channel ``conv1`` kernel loaded into a folded 1-channel ``conv1`` is summed over its input
channels (and a 1-channel kernel loaded into a 3-channel ``conv1`` is repeated / 3), which keeps the
function of a 1-channel slice fed as 3 identical channels.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import socket
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import torch
import torch.hub
import torch.nn as nn
import torchvision

from mri_slice_transfer.networks import registry
from mri_slice_transfer.networks.encoders import fold_conv1_weight, repeat_conv1_weight
from mri_slice_transfer.paths import torch_weights_dir

__all__ = [
    "PretrainedSpec",
    "SCRATCH",
    "IMAGENET",
    "IMAGENET_FALLBACK",
    "DOWNLOAD_TIMEOUT_S",
    "imagenet_weights",
    "imagenet_weights_file",
    "load_imagenet_state_dict",
    "read_verified_weights",
    "remap_encoder_state_dict",
    "load_encoder_weights",
    "initialise_encoder",
    "normalise_pretrained",
]

logger = logging.getLogger(__name__)

#: What ``pretrained`` may be: False, True, "auto", "imagenet" (= True) or a path to a state dict.
PretrainedSpec = bool | str | os.PathLike

#: ``encoder_init`` values (a path gives ``"file:<path>"``).
SCRATCH = "scratch"
IMAGENET = "imagenet"
IMAGENET_FALLBACK = "random (ImageNet weights unavailable)"

#: Socket timeout (seconds) around a weights download, so an offline machine fails fast.
DOWNLOAD_TIMEOUT_S = 10.0

# Prefixes that training frameworks put in front of the encoder's own names.
_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "resnet.", "_orig_mod.")
# Children of a torchvision ResNet in order; nn.Sequential(*children()[:-1 or -2]) numbers them.
_SEQUENTIAL_NAMES = {
    "0": "conv1",
    "1": "bn1",
    "2": "relu",
    "3": "maxpool",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}


def normalise_pretrained(pretrained: PretrainedSpec) -> bool | str | Path:
    """Validate ``pretrained``: returns ``False``, ``True``, ``"auto"`` or a :class:`~pathlib.Path`.

    Raises:
        ValueError: for other types (e.g. ``None`` or numbers) or an empty string.
    """
    if isinstance(pretrained, bool):
        return pretrained
    if isinstance(pretrained, str):
        low = pretrained.strip().lower()
        if low == "auto":
            return "auto"
        if low in ("imagenet", "true"):  # "true"/"false" as they may arrive from CLI strings
            return True
        if low == "false":
            return False
        if not low:
            raise ValueError("pretrained must be False, True, 'auto' or a path to a state dict, got ''")
        return Path(pretrained).expanduser()
    if isinstance(pretrained, os.PathLike):
        return Path(pretrained).expanduser()
    raise ValueError(
        f"pretrained must be False, True, 'auto' or a path to a state dict, got {pretrained!r} "
        f"({type(pretrained).__name__})"
    )


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """The torchvision ImageNet weights enum member for ``arch`` (:func:`~.registry.imagenet_weights`)."""
    return registry.imagenet_weights(arch)


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision caches (and looks for) the ImageNet weights of ``arch``."""
    url = imagenet_weights(arch).url
    return torch_weights_dir() / os.path.basename(url)


def load_imagenet_state_dict(arch: str, allow_download: bool = True) -> dict[str, torch.Tensor]:
    """ImageNet-1K state dict of a torchvision ResNet, from the cache or downloaded into it.

    The file is read and verified here, not by torchvision (whose ``get_state_dict`` checks the hash
    only on download and unpickles a cached file with ``weights_only`` off): its SHA-256 must start
    with the hash in its name (``resnet18-f37072fd.pth``: ``f37072fd``, torch.hub's ``check_hash``
    rule), and it is loaded with ``torch.load(weights_only=True)``.

    Args:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        allow_download: try to download when the cache file is missing (with a short socket timeout).

    Raises:
        RuntimeError: the weights are neither cached nor downloadable (the message says which file to
            put in which folder and where to get it), or the cached file fails verification (the
            message names the file and the problem).
    """
    url = imagenet_weights(arch).url
    path = imagenet_weights_file(arch)
    if not path.is_file():
        if not allow_download:
            raise RuntimeError(_missing_message(arch, path, url, "downloads disabled"))
        _download(arch, url, path)
    return read_verified_weights(path, url)


def _download(arch: str, url: str, path: Path) -> None:
    """Download ``url`` to ``path`` (torch.hub: temp file, hash-checked, then renamed)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=_hash_prefix(path), progress=False)
    except Exception as err:  # URLError, timeouts, hash mismatch of the download, ...
        raise RuntimeError(_missing_message(arch, path, url, f"{type(err).__name__}: {err}")) from err
    finally:
        socket.setdefaulttimeout(previous)


def _hash_prefix(path: Path) -> str:
    """The SHA-256 prefix in a torchvision weights file name (``<name>-<hex>.pth``), or ``""``."""
    match = torch.hub.HASH_REGEX.search(path.name)
    return match.group(1) if match else ""


def read_verified_weights(path: Path, url: str) -> dict[str, torch.Tensor]:
    """Read a torchvision weights file: SHA-256 prefix as in its name, then ``weights_only`` load.

    Args:
        path: the cached file, ``$TORCH_HOME/hub/checkpoints/<name>-<sha256 prefix>.pth``.
        url: where it comes from (for the error message).

    Returns:
        the state dict.

    Raises:
        RuntimeError: the name has no hash, the content does not match it, or it is not a plain
            state dict (``weights_only=True`` refuses other pickled objects); the file is not run.
    """
    prefix = _hash_prefix(path)
    redo = f"delete it and download it again from {url}"
    if not prefix:
        raise RuntimeError(f"{path}: cannot verify the weights file: its name has no SHA-256 prefix")
    try:
        data = path.read_bytes()
    except OSError as err:  # permission denied, a folder, ...
        raise RuntimeError(f"{path}: cannot read the weights file ({type(err).__name__}: {err})") from err
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(prefix):
        raise RuntimeError(
            f"{path}: refused: the file's SHA-256 must start with {prefix!r} (the hash in its name), "
            f"not {digest[: len(prefix)]!r}; it is not the file torchvision published (corrupt or "
            f"replaced): {redo}"
        )
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (a non-tensor object), truncated zip, ...
        raise RuntimeError(
            f"{path}: refused: not a plain PyTorch state dict ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {redo}"
        ) from err
    return _unwrap_checkpoint(obj, path)


def _missing_message(arch: str, path: Path, url: str, reason: str) -> str:
    return (
        f"ImageNet-1K weights for {arch} are not available: the file '{path.name}' is not in "
        f"'{path.parent}' and downloading it failed ({reason}). Download {url} on a machine with "
        f"internet access and copy it to '{path}' (set $TORCH_HOME to use another cache folder); it is "
        f"verified before use (its SHA-256 must start with '{_hash_prefix(path)}', the hash in its name, "
        "and it is loaded with torch.load(weights_only=True)). "
        "Or use pretrained='auto' (random init if missing) or pretrained=False."
    )


def _strip_prefixes(key: str, targets: Collection[str] = ()) -> str:
    """``key`` without wrapper prefixes, stopping as soon as it is one of the encoder's ``targets``."""
    changed = True
    while changed and key not in targets:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
                break
    return key


def remap_encoder_state_dict(
    state_dict: dict[str, torch.Tensor],
    target_keys: Collection[str] = (),
    head_keys: Sequence[str] = ("fc.",),
) -> dict[str, torch.Tensor]:
    """Map a state dict from a foreign training framework to the encoder's (torchvision) key names.

    Strips wrapper prefixes (``module.``, ``model.``, ``backbone.``, ``encoder.``, ``resnet.``), maps
    ``nn.Sequential`` child indices (``0.`` -> ``conv1``, ``1.`` -> ``bn1``, ``4.`` .. ``7.`` ->
    ``layer1`` .. ``layer4``) and drops the classifier (``fc.*``, or ``head_keys``).

    Args:
        state_dict: the file's tensors.
        target_keys: the encoder's own keys: a key that is one of them is kept as it is (torchvision's
            ViT names its blocks ``encoder.layers...``, which must not lose ``encoder.``).
        head_keys: prefixes of the removed classifier's keys (dropped).

    Returns:
        the remapped state dict.
    """
    targets = set(target_keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = _strip_prefixes(key, targets)
        if name not in targets:
            head, _, rest = name.partition(".")
            if head in _SEQUENTIAL_NAMES and rest and name not in targets:
                name = f"{_SEQUENTIAL_NAMES[head]}.{rest}"
        if name.startswith(tuple(head_keys)):
            continue
        out[name] = value
    return out


def _unwrap_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or a training checkpoint holding one under a usual key."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "encoder"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{path}: does not hold a PyTorch state dict (a dict of tensors)")


def _is_counted(key: str) -> bool:
    # BatchNorm's step counters are not weights (torchvision's ImageNet files predate them).
    return not key.endswith("num_batches_tracked")


def _match_tensors(
    target: dict[str, torch.Tensor], remapped: dict[str, torch.Tensor], stem_key: str = "conv1.weight"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors of ``remapped`` that fit ``target`` (conv1 folded / repeated), and the shape mismatches."""
    usable: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    for key, value in remapped.items():
        if key not in target:
            continue
        want = target[key].shape
        if key == stem_key and value.ndim == 4 and value.shape != want:
            if value.shape[1] == 3 and want[1] == 1:
                value = fold_conv1_weight(value)
            elif value.shape[1] == 1 and want[1] == 3:
                value = repeat_conv1_weight(value)
        if value.shape != want:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(want)}")
            continue
        usable[key] = value.to(dtype=target[key].dtype)
    return usable, mismatched


def load_encoder_weights(
    backbone: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    strict: bool = True,
    stem_key: str = "conv1.weight",
    head_keys: Sequence[str] = ("fc.",),
) -> str | None:
    """Copy the weights of ``state_dict`` into an encoder ``backbone`` (its classifier removed).

    Keys are remapped with :func:`remap_encoder_state_dict`; ``conv1`` kernels are folded (3 -> 1
    channel) or repeated / 3 (1 -> 3) to fit. BatchNorm ``num_batches_tracked`` counters are not
    counted as tensors. A partial match (encoder tensors missing from the file, of another shape, or
    file tensors the encoder does not have, e.g. ResNet-18 weights offered to a ResNet-34) is refused
    unless ``strict`` is False: then the matching tensors are loaded and a WARNING lists the rest.

    Args:
        backbone: the encoder to initialise.
        state_dict: the weights (any key prefixes of :func:`remap_encoder_state_dict`).
        source: where they come from (for messages).
        strict: refuse a partial match (default).
        stem_key: key of the first conv's weight (folded / repeated to fit).
        head_keys: prefixes of the removed classifier's keys in the file (dropped, not "unexpected").

    Returns:
        None for a complete load, else ``"partial: <loaded>/<encoder> tensors"``.

    Raises:
        ValueError: no encoder weight matched at all, or (``strict``) only some did; the message
            says how many matched and lists some that did not.
    """
    target = backbone.state_dict()
    remapped = remap_encoder_state_dict(state_dict, target, head_keys)
    usable, mismatched = _match_tensors(target, remapped, stem_key)
    loaded = sum(map(_is_counted, usable))
    total = sum(map(_is_counted, target))
    missing = sorted(k for k in target if _is_counted(k) and k not in usable and k not in remapped)
    unexpected = sorted(k for k in remapped if k not in target and _is_counted(k))
    report = (
        f"{loaded}/{total} encoder tensors match; missing from the file: {len(missing)} {missing[:5]}; "
        f"shape mismatch: {len(mismatched)} {mismatched[:5]}; not in the {type(backbone).__name__} "
        f"encoder: {len(unexpected)} {unexpected[:5]}"
    )
    if loaded == 0:
        raise ValueError(
            f"{source}: no weight matches the encoder ({report}); is it a model of the chosen encoder?"
        )
    partial = bool(missing or mismatched or unexpected)
    if partial and strict:
        raise ValueError(
            f"{source}: refused a partial load: {report}. Is it a model of the chosen encoder "
            "(ResNet depth)? To train from this partly initialised encoder anyway, pass "
            "pretrained_strict=False (bundles: "
            "--pretrained_strict false); the model then records the partial load in encoder_init."
        )
    backbone.load_state_dict(usable, strict=False)
    logger.log(logging.WARNING if partial else logging.INFO, "loaded from %s: %s", source, report)
    return f"partial: {loaded}/{total} tensors" if partial else None


def initialise_encoder(
    backbone: nn.Module,
    arch: str,
    pretrained: PretrainedSpec,
    strict: bool = True,
    stem_key: str = "conv1.weight",
    head_keys: Sequence[str] = ("fc.",),
) -> str:
    """Initialise a slice encoder as ``pretrained`` asks; returns the ``encoder_init`` description.

    Args:
        backbone: the torchvision / timm model (classifier removed, first conv with 1 or 3 input
            channels), or any module when ``arch`` is ``"cnn5"``.
        arch: encoder name (``"cnn5"``, ``"resnet18"``, any torchvision classification model,
            ``"timm:<model>"``; :mod:`~.registry`).
        pretrained: see the module docstring.
        strict: refuse a weights file of which only some tensors match the encoder (see
            :func:`load_encoder_weights`); False loads the matching ones and records it.
        stem_key, head_keys: see :func:`load_encoder_weights` (the encoder's ``stem_key`` and
            ``head_keys`` attributes).

    Returns:
        ``"scratch"``, ``"imagenet"``, ``"random (ImageNet weights unavailable)"`` or ``"file:<path>"``,
        followed by ``" (partial: <loaded>/<encoder> tensors)"`` after a partial load.
    """
    spec = normalise_pretrained(pretrained)
    if spec is False:
        return SCRATCH
    load = {"strict": strict, "stem_key": stem_key, "head_keys": head_keys}
    if not registry.has_pretrained_weights(arch) and not isinstance(spec, Path):  # a file always loads
        if spec == "auto":
            return SCRATCH  # "auto" = use pretrained weights where they exist; cnn5 has no ImageNet ones
        raise ValueError(
            f"{arch} has no pretrained weights; use pretrained=False, 'auto' or a weights file with {arch}"
        )
    if spec in (True, "auto") and registry.encoder_family(arch) == registry.TIMM:
        return _init_timm(backbone, arch, spec, load)
    if spec in (True, "auto"):
        try:
            state = load_imagenet_state_dict(arch)
        except RuntimeError as err:
            path = imagenet_weights_file(arch)
            if spec is True or path.is_file():  # a file that is there but fails verification is an error
                raise
            logger.warning(
                "pretrained='auto': ImageNet-1K weights for %s unavailable (%s); the %s encoder starts from "
                "random weights instead. To use ImageNet, put %s (from %s) into %s (it is verified: its "
                "SHA-256 must start with the hash in its name).",
                arch,
                err.__cause__ or err,
                arch,
                path.name,
                imagenet_weights(arch).url,
                path.parent,
            )
            return IMAGENET_FALLBACK
        return _described(IMAGENET, load_encoder_weights(backbone, state, f"ImageNet {arch}", **load))
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {str(path)!r} not found (pretrained must be False, True, 'auto' "
            "or the path of a state dict)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return _described(
        f"file:{path}", load_encoder_weights(backbone, _unwrap_checkpoint(obj, path), str(path), **load)
    )


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No downloads inside: Hugging Face Hub in offline mode (cache only), torch.hub downloads refused."""
    import huggingface_hub.constants as hf_constants

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"not downloading {url} (weights are read from the local cache only)")

    saved = (hf_constants.HF_HUB_OFFLINE, torch.hub.download_url_to_file, os.environ.get("HF_HUB_OFFLINE"))
    hf_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE, torch.hub.download_url_to_file = saved[:2]
        if saved[2] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[2]


def _init_timm(backbone: nn.Module, arch: str, spec: bool | str, load: dict) -> str:
    """``pretrained`` True / "auto" for ``timm:<model>``: timm's weights from the local cache only.

    ``timm.create_model(pretrained=True)`` runs with ``HF_HUB_OFFLINE=1``, so it reads the Hugging
    Face / timm cache and never downloads; "auto" falls back to random weights with a WARNING.
    """
    timm = registry.require_timm()
    model = arch[len(registry.TIMM_PREFIX) :]
    try:
        with _offline():
            state = timm.create_model(model, pretrained=True, num_classes=0).state_dict()
    except Exception as err:  # not in the cache, no such pretrained tag, ...
        if spec is True:
            raise RuntimeError(
                f"timm weights for {model} are not in the local Hugging Face / timm cache ({err}); "
                "download them once on a machine with internet access (timm.create_model("
                f"{model!r}, pretrained=True)) and copy the cache, or pass a weights file"
            ) from err
        logger.warning("pretrained='auto': timm weights for %s unavailable (%s); random init", model, err)
        return IMAGENET_FALLBACK
    return _described(IMAGENET, load_encoder_weights(backbone, state, f"timm {model}", **load))


def _described(init: str, partial: str | None) -> str:
    return init if partial is None else f"{init} ({partial})"
