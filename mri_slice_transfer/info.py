"""Versions, compute device, and where files live (what ``mri-slice-transfer info`` prints)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

from mri_slice_transfer import __version__
from mri_slice_transfer.paths import CACHE_ENV_VAR, cache_dir, torch_weights_dir

__all__ = ["collect_info", "format_info"]

_PACKAGES = (
    "torch",
    "torchvision",
    "monai",
    "pytorch-ignite",
    "nibabel",
    "SimpleITK",
    "pandas",
    "nilearn",
    "numpy",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect_info() -> dict[str, Any]:
    """Gather versions, device facts and paths into a JSON-serialisable dict."""
    cuda = torch.cuda.is_available()
    device: dict[str, Any] = {
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16_fast": _cpu_has_amx(),
        "default_device": "cuda" if cuda else "cpu",
    }
    weights_dir = torch_weights_dir()
    return {
        "mri_slice_transfer": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "device": device,
        "paths": {
            "cache_dir": str(cache_dir(create=False)),
            "cache_dir_env_var": CACHE_ENV_VAR,
            "torch_home_weights_dir": str(weights_dir),
            "imagenet_weights_present": sorted(p.name for p in weights_dir.glob("*.pth"))
            if weights_dir.is_dir()
            else [],
        },
    }


def _cpu_has_amx() -> bool:
    """True if the CPU advertises AMX (fast bf16 matrix units) in /proc/cpuinfo (Linux only)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def format_info(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`collect_info`'s output."""
    lines = [f"mri_slice_transfer {info['mri_slice_transfer']} (python {info['python']})"]
    lines.append(f"platform: {info['platform']}")
    lines.append("packages:")
    lines += [f"  {k:<15} {v}" for k, v in info["packages"].items()]
    d = info["device"]
    lines.append("device:")
    lines.append(f"  default        {d['default_device']}")
    lines.append(f"  cuda devices   {', '.join(d['cuda_devices']) or 'none'}")
    lines.append(f"  cpu            {d['cpu']} x{d['cpu_count']} (torch threads {d['torch_threads']})")
    lines.append(f"  cpu bf16 (AMX) {'yes' if d['cpu_bf16_fast'] else 'no'}")
    p = info["paths"]
    lines.append("paths:")
    lines.append(f"  cache          {p['cache_dir']}  (override with ${p['cache_dir_env_var']})")
    lines.append(f"  weights        {p['torch_home_weights_dir']}  (override with $TORCH_HOME)")
    present = ", ".join(p["imagenet_weights_present"]) or "none (pretrained='auto' falls back to random init)"
    lines.append(f"  weight files   {present}")
    return "\n".join(lines)
