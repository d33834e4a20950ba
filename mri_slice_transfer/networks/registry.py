"""The one registry of 2D slice encoders: which names exist, their family and their ImageNet weights.

Three families of names are accepted wherever an encoder is named (``build_model``, the bundles'
``--encoder``, ``model.json``):

- ``builtin``: the :class:`~mri_slice_transfer.vocabulary.Encoder` names (``cnn5``, ``resnet18``,
  ``resnet34``, ``resnet50``, ``conv3d`` and their aliases). The vocabulary stays their source; the
  ResNets keep their ``IMAGENET1K_V1`` weights (what every earlier model was trained from).
- ``torchvision``: every other torchvision classification model,
  ``torchvision.models.list_models(module=torchvision.models)`` (``convnext_tiny``,
  ``efficientnet_b0``, ``swin_t``, ``regnet_y_400mf``, ``mobilenet_v3_small``, ``densenet121``,
  ``vit_b_16``, ...), with ``get_model_weights(name).DEFAULT`` as its ImageNet weights.
- ``timm``: ``timm:<model>`` for any `timm <https://github.com/huggingface/pytorch-image-models>`_
  model (optional extra ``pip install mri_slice_transfer[timm]``), e.g.
  ``timm:vit_small_patch14_dinov2``.

To add a family: give it a name test in :func:`encoder_family`, its canonical spelling in
:func:`encoder_name`, its weights in :func:`imagenet_weights` / :func:`has_pretrained_weights` and its
module in :func:`~mri_slice_transfer.networks.encoders.build_encoder`.
"""

from __future__ import annotations

import difflib
import functools

import torchvision

from mri_slice_transfer.vocabulary import PRETRAINABLE_ENCODERS, Encoder, look_up, names

__all__ = [
    "BUILTIN",
    "TORCHVISION",
    "TIMM",
    "TIMM_PREFIX",
    "FAMILIES",
    "torchvision_encoders",
    "encoder_name",
    "encoder_family",
    "has_pretrained_weights",
    "imagenet_weights",
    "require_timm",
]

BUILTIN = "builtin"
TORCHVISION = "torchvision"
TIMM = "timm"
#: The encoder families, in the order names are looked up.
FAMILIES: tuple[str, ...] = (BUILTIN, TORCHVISION, TIMM)
#: Prefix of timm model names (``timm:vit_small_patch14_dinov2``).
TIMM_PREFIX = "timm:"
#: Weights of the built-in ResNets: ImageNet-1K V1 (kept, so earlier models are reproduced exactly).
_BUILTIN_WEIGHTS = "IMAGENET1K_V1"


@functools.cache
def torchvision_encoders() -> tuple[str, ...]:
    """Torchvision's classification models that are not built-in names (``list_models``)."""
    builtin = set(names(Encoder))
    return tuple(n for n in torchvision.models.list_models(module=torchvision.models) if n not in builtin)


def encoder_name(value: object) -> Encoder | str:
    """The canonical name of an encoder: an :class:`Encoder` member, a torchvision name or ``timm:<model>``.

    Args:
        value: as a user wrote it (case-insensitive; vocabulary aliases accepted).

    Returns:
        the :class:`Encoder` member for built-in names (a ``str`` enum), else the lower-case
        torchvision name or ``"timm:<model>"``.

    Raises:
        ValueError: ``"unknown encoder 'x'; ..."`` with ``"(did you mean 'y'?)"`` for a close spelling.
    """
    if isinstance(value, Encoder):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key.startswith(TIMM_PREFIX) and len(key) > len(TIMM_PREFIX):
            return TIMM_PREFIX + key[len(TIMM_PREFIX) :]
        if key in torchvision_encoders():
            return key
        try:
            return look_up(key, Encoder)
        except ValueError:
            pass
    choices = (*names(Encoder, aliases=True), *torchvision_encoders())
    close = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.6)
    raise ValueError(
        f"encoder must be one of {', '.join(names(Encoder, aliases=True))}, a torchvision classification "
        f"model (torchvision.models.list_models(), e.g. convnext_tiny) or timm:<model>, not {value!r}"
        + (f" (did you mean {close[0]!r}?)" if close else "")
    )


def encoder_family(name: object) -> str:
    """:data:`BUILTIN`, :data:`TORCHVISION` or :data:`TIMM` for an encoder name (see :func:`encoder_name`)."""
    canon = encoder_name(name)
    if isinstance(canon, Encoder):
        return BUILTIN
    return TIMM if canon.startswith(TIMM_PREFIX) else TORCHVISION


def has_pretrained_weights(name: object) -> bool:
    """Whether ``pretrained=True`` means something for this encoder (ImageNet / timm weights exist)."""
    canon = encoder_name(name)
    return canon in PRETRAINABLE_ENCODERS or not isinstance(canon, Encoder)


def imagenet_weights(name: object) -> torchvision.models.WeightsEnum:
    """The torchvision weights of an encoder: ``IMAGENET1K_V1`` for the built-in ResNets, else ``DEFAULT``.

    Raises:
        ValueError: the encoder has no torchvision weights (cnn5, conv3d, timm models).
    """
    canon = encoder_name(name)
    if canon in PRETRAINABLE_ENCODERS:
        return getattr(torchvision.models.get_model_weights(str(canon)), _BUILTIN_WEIGHTS)
    if isinstance(canon, Encoder) or canon.startswith(TIMM_PREFIX):
        raise ValueError(
            f"encoder {str(canon)!r} has no torchvision ImageNet weights; choose one of "
            f"{', '.join(str(e) for e in PRETRAINABLE_ENCODERS)} or a torchvision classification model"
        )
    return torchvision.models.get_model_weights(canon).DEFAULT


def require_timm() -> object:
    """Import timm, or explain which extra installs it.

    Raises:
        ImportError: timm is not installed.
    """
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            "timm:<model> encoders need the optional package timm: pip install 'mri_slice_transfer[timm]' "
            "(or pip install timm)"
        ) from err
    return timm
