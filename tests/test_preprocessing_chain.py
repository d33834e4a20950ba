"""The preprocessing chain is written twice: as transforms in the bundle configs (``train.json``'s
``preprocessing``, which ``evaluate.json`` reuses, and ``inference.json``'s) and in Python
(``transforms.get_transforms`` resized by ``engine.with_resize``: ``interpret``, ``bench``; ``api.predict``).
These tests keep the two from drifting: on the same file they give identical tensors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from mri_slice_transfer.api import _transform
from mri_slice_transfer.engine.resize import scaled_size, with_resize
from mri_slice_transfer.transforms import get_inference_transforms, get_train_transforms

REPO = Path(__file__).resolve().parents[1]

#: ``(config file, id of its preprocessing chain)``; evaluate.json uses train.json's.
CHAINS = [("train.json", "preprocessing"), ("inference.json", "preprocessing#transform")]


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small scan off the template grid (3 mm voxels, shifted, oblique), so every step does work."""
    rng = np.random.default_rng(0)
    data = np.zeros((40, 46, 40), np.float32)
    data[6:34, 6:40, 6:34] = rng.uniform(50, 150, (28, 34, 28)).astype(np.float32)
    angle = np.deg2rad(7.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * 3.0
    affine[:3, 3] = [-60.0, -80.0, -50.0]
    path = tmp_path_factory.mktemp("chain") / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _config_chain(bundle: str, config: str, item: str, scale: float):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / config))
    parser["train_input_scale"] = scale
    return parser.get_parsed_content(item)


def _image(chain, path: str) -> torch.Tensor:
    out = chain({"image": path})["image"]
    return out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("bundle", ["adni_ad", "ukbb_brain_age"])
def test_bundle_preprocessing_equals_the_python_chain(scan: str, bundle: str, scale: float) -> None:
    python = _image(with_resize(get_inference_transforms(), scale), scan)
    assert python.shape == (1, *scaled_size(scale)) and python.dtype == torch.float32
    assert torch.equal(_image(with_resize(get_train_transforms(), scale), scan), python)  # bench
    api = _transform(SimpleNamespace(input_scale=scale, spatial_size=scaled_size(scale)), tensors=False)
    assert torch.equal(_image(api, scan), python)  # api.predict
    for config, item in CHAINS:
        assert torch.equal(_image(_config_chain(bundle, config, item, scale), scan), python), config
