"""MONAI model-zoo conformance of both bundles: what the zoo's CI (``ci/verify_bundle.py``) checks.

Metadata against the zoo's schema (``verify_metadata``), versions and changelog, required files,
``check_properties`` of the train / evaluate / inference workflows, ``verify_net_in_out`` and the
TorchScript export (``ckpt_export``) of a trained tiny model, whose outputs equal the eager network's.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from packaging.requirements import Requirement
from packaging.version import Version
from test_api import _train
from test_bundles import FAST, REPO, write_tiny_dataset

import mri_slice_transfer
from mri_slice_transfer.fileio import file_sha256

BUNDLES = ("adni_ad", "ukbb_brain_age")

#: The schema the metadata names; the zoo's newest (its bundles' ``"schema"`` values, model-zoo dfae206).
SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)

_TENSOR = {
    "type": "object",
    "required": ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range"],
    "properties": {
        "num_channels": {"type": "integer"},
        "spatial_shape": {"type": "array", "items": {"type": ["string", "integer"]}},
        "value_range": {"type": "array", "items": {"type": "number"}},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object"},
    },
}
_IO = {"type": "object", "patternProperties": {"^.+$": _TENSOR}}

#: The required keys and types of ``meta_schema_20240725.json`` (not shipped here: ``verify_metadata``
#: would download it; it validates against this file placed where the download would go).
ZOO_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2019-09/schema",
    "type": "object",
    "required": [
        "schema",
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ],  # fmt: skip
    "properties": {
        **{k: {"type": "object"} for k in ("changelog", "required_packages_version", "eval_metrics")},
        "references": {"type": "array", "items": {"type": "string"}},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {"inputs": _IO, "outputs": _IO},
        },
    },
}

#: Sections of a model-zoo bundle README.
README_SECTIONS = (
    "Overview",
    "Data",
    "Training",
    "Performance",
    "System configuration",
    "Limitations",
    "Citation",
)


def _metadata(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_passes_the_zoo_schema_and_version_rules(bundle: str, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(ZOO_SCHEMA), encoding="utf-8")
    meta_file = REPO / "bundles" / bundle / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    meta = _metadata(bundle)
    assert meta["schema"] == SCHEMA_URL
    assert meta["version"] in meta["changelog"]
    for name in ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md"):
        assert (REPO / "bundles" / bundle / name).is_file(), name


@pytest.mark.parametrize("bundle", BUNDLES)
def test_required_packages_are_every_install_requirement_at_a_tested_version(bundle: str) -> None:
    meta = _metadata(bundle)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    own_fields = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}
    listed = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in meta["required_packages_version"].items()}
    assert listed.pop("mri-slice-transfer") == mri_slice_transfer.__version__
    for line in cfg["options"]["install_requires"].strip().splitlines():
        req = Requirement(line.strip())
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        version = meta[own_fields[name]] if name in own_fields else listed.get(name)
        assert version is not None, f"{req.name} missing from required_packages_version"
        assert Version(version) in req.specifier, f"{req.name} {version} is outside {req.specifier}"


def test_metadata_says_what_the_outputs_mean_and_cites_the_paper() -> None:
    ad, age = _metadata("adni_ad"), _metadata("ukbb_brain_age")
    ad_out = json.dumps(ad["network_data_format"]["outputs"]).lower()
    assert "logit" in ad_out and "sigmoid" in ad_out and "p(ad)" in ad_out
    assert "years" in json.dumps(age["network_data_format"]["outputs"])
    for meta in (ad, age):
        assert meta["network_data_format"]["inputs"]["image"]["spacing_mm"] == [2.0, 2.0, 2.0]
        paper = meta["references"][0]
        assert "position encoded slice models" in paper and "ISBI" in paper and "2023" in paper
        assert meta["eval_metrics"]["source"].startswith("synthetic demo, generator v5")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_docs_license_and_large_files(bundle: str) -> None:
    root = REPO / "bundles" / bundle
    readme = (root / "docs" / "README.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", readme, flags=re.M)
    assert [h for h in headings if h in README_SECTIONS] == list(README_SECTIONS)
    terms = (root / "docs" / "data_license.txt").read_text(encoding="utf-8")
    assert ("ADNI" if bundle == "adni_ad" else "UK Biobank") in terms
    assert "not redistributed" in terms and "McConnell Brain Imaging Centre" in terms
    large = yaml.safe_load((root / "large_files.yml").read_text(encoding="utf-8"))["large_files"]
    assert [f["path"] for f in large] == ["models/model.pt"]
    assert {"url", "hash_val", "hash_type"} <= set(large[0])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_workflows_have_the_bundle_properties(bundle: str, tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", n_per_split=(2, 2, 2))
    if bundle == "ukbb_brain_age":
        from test_api import _with_ages

        _with_ages(data)
    configs = REPO / "bundles" / bundle / "configs"
    runs = {
        "train": [str(configs / "train.json")],
        "eval": [str(configs / "train.json"), str(configs / "evaluate.json")],
        "infer": [str(configs / "inference.json")],
    }
    for workflow_type, files in runs.items():
        wf = ConfigWorkflow(
            config_file=files,
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=str(tmp_path / "run"),
            dataset_dir=str(data),
            input=str(data / "images"),
            **FAST,
        )
        wf.initialize()
        assert wf.check_properties() == [], workflow_type


@pytest.fixture(scope="module", params=BUNDLES)
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle copy with a tiny model (cnn5, sagittal, max, learned positions, input scale 0.25)."""
    return _train(tmp_path_factory.mktemp(request.param), request.param)[0]


def test_verify_net_in_out_of_a_trained_model_without_options(trained: Path) -> None:
    """The network the inference config builds for a trained model takes the recorded input grid."""
    record = mri_slice_transfer.load_model(trained).record
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(trained / "configs" / "metadata.json"),
        config_file=str(trained / "configs" / "inference.json"),
        device="cpu",
        bundle_root=str(trained),
        **{"_meta_#network_data_format#inputs#image#spatial_shape": list(record.spatial_size)},
    )


def test_ckpt_export_torchscript_equals_eager(trained: Path, tmp_path: Path) -> None:
    """``ckpt_export`` (traced TorchScript; the networks are not scriptable) of the trained model."""
    model = mri_slice_transfer.load_model(trained)
    size = list(model.record.spatial_size)
    ts_file = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_file),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=str(trained / "configs" / "metadata.json"),
        config_file=str(trained / "configs" / "inference.json"),
        bundle_root=str(trained),
        use_trace=True,
        input_shape=[1, 1, *size],
    )
    exported = torch.jit.load(str(ts_file), map_location="cpu")
    x = torch.randn(3, 1, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager, scripted = model.network(x), exported(x)
    assert scripted.shape == eager.shape == (3, 1)
    torch.testing.assert_close(scripted, eager, rtol=0, atol=1e-5)


def test_make_demo_model_packs_a_trained_run(trained: Path, tmp_path: Path) -> None:
    """``scripts/make_demo_model.py --from RUN --half``: float16 weights + record, loaded without options."""
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "make_demo_model.py"),
        "--from",
        str(trained),
        "--out",
        str(out),
    ]
    done = subprocess.run([*cmd, "--half"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    state = torch.load(out / "model.pt", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert (out / "model.pt").stat().st_size < 0.6 * (trained / "models" / "model.pt").stat().st_size
    assert f"sha256 (large_files.yml hash_val): {file_sha256(out / 'model.pt')}" in done.stdout
    shipped, original = mri_slice_transfer.load_model(out), mri_slice_transfer.load_model(trained)
    assert shipped.record.spatial_size == original.record.spatial_size
    x = torch.randn(2, 1, *shipped.record.spatial_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(shipped.network(x), original.network(x), rtol=0, atol=0.05)
