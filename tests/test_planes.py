"""Issue 22 item 2: three-plane models (``axis all``): ``MultiPlaneNet`` and everything downstream.

Shapes; a shared encoder is one module; concat fusion is exactly the head on the three single-axis
nets' pooled embeddings; one-plane models are unchanged; bad axis values name the choices; a bundle
trains, evaluates and infers from its record with per-plane feature arrays; slice importance per plane.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_bundle_aggregations import SMALL_MODEL
from test_bundles import bundle_precision, copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.engine.model_record import read
from mri_slice_transfer.interpret.gradcam import GradCAMMap
from mri_slice_transfer.interpret.occlusion import OcclusionMap
from mri_slice_transfer.interpret.slices import plane_slice_importance, write_slice_csv
from mri_slice_transfer.networks import CNN5Encoder, SliceSetNet, build_model, count_parameters
from mri_slice_transfer.networks.planes import MultiPlaneNet
from mri_slice_transfer.vocabulary import Axis, format_axis, parse_axis

SIZE = (8, 9, 6)


def _net(**kw: object) -> MultiPlaneNet:
    torch.manual_seed(0)
    return build_model("cnn5", "all", **{"spatial_size": SIZE, **kw}).eval()


@pytest.mark.parametrize("fusion,width", [("concat", 96), ("attention", 32)])
@pytest.mark.parametrize("plane_encoder", ["shared", "separate"])
def test_shapes(fusion: str, width: int, plane_encoder: str) -> None:
    net = _net(
        aggregation="attention", position_encoding="learned", plane_fusion=fusion, plane_encoder=plane_encoder
    )
    x = torch.randn(3, 1, *SIZE)
    with torch.no_grad():  # one pass: forward = head(fuse(plane embeddings))
        planes = net.plane_embeddings(x)
        fused = net.fuse(list(planes.values()))
        assert fused.shape == (3, width) and net.head(fused).shape == (3, 1)
    assert list(planes) == ["sagittal", "coronal", "axial"] and all(
        e.shape == (3, 32) for e in planes.values()
    )
    assert net.num_slices == {"sagittal": 8, "coronal": 9, "axial": 6}  # each plane its own K
    assert [net.planes[p].position.p.shape[0] for p in net.axes] == [8, 9, 6]


def test_a_shared_encoder_is_one_module_and_stored_once() -> None:
    shared, separate = _net(), _net(plane_encoder="separate")
    encoder = count_parameters(shared.encoder)
    assert count_parameters(separate) - count_parameters(shared) == 2 * encoder
    assert sum(isinstance(m, CNN5Encoder) for m in shared.modules()) == 1
    assert sum(isinstance(m, CNN5Encoder) for m in separate.modules()) == 3
    assert all(shared.planes[p].encoder is shared.encoder for p in shared.axes)
    keys = list(shared.state_dict())
    assert not [k for k in keys if k.startswith("planes.") and ".encoder." in k]
    assert "planes.axial.encoder.blocks.0.conv.weight" in separate.state_dict()


@pytest.mark.parametrize("plane_encoder", ["shared", "separate"])
def test_concat_fusion_is_the_head_on_the_single_axis_nets(plane_encoder: str) -> None:
    net = _net(aggregation="max", position_encoding="learned", plane_encoder=plane_encoder)
    torch.manual_seed(1)
    singles = [SliceSetNet("cnn5", a, "max", "learned", spatial_size=SIZE).eval() for a in net.axes]
    if plane_encoder == "shared":  # the single nets share one encoder too
        for single in singles[1:]:
            single.encoder.load_state_dict(singles[0].encoder.state_dict())
        net.encoder.load_state_dict(singles[0].encoder.state_dict())
    for plane, single in zip(net.axes, singles, strict=True):
        skip = ("head.", "encoder.") if plane_encoder == "shared" else ("head.",)
        net.planes[plane].load_state_dict(
            {k: v for k, v in single.state_dict().items() if not k.startswith(skip)}
        )
    x = torch.randn(2, 1, *SIZE)
    with torch.no_grad():
        fused = torch.cat([s.pooled_embedding(x) for s in singles], dim=1)
        torch.testing.assert_close(net(x), net.head(fused), rtol=0, atol=0)


def test_one_plane_models_are_unchanged() -> None:
    torch.manual_seed(0)
    direct = SliceSetNet("resnet18", "sagittal", "attention", "learned", spatial_size=SIZE)
    torch.manual_seed(0)
    built = build_model("resnet18", "Sagittal", "attention", "learned", spatial_size=SIZE)
    assert type(built) is SliceSetNet and built.axis == "sagittal"
    assert count_parameters(built) == count_parameters(direct)
    assert list(built.state_dict()) == list(direct.state_dict())
    with pytest.raises(ValueError, match="plane_encoder separate: only for several planes"):
        build_model("cnn5", "axial", plane_encoder="separate")


def test_the_vocabulary_parses_every_axis_spelling() -> None:
    assert parse_axis("all") == tuple(Axis) and format_axis("ALL") == "all"
    assert parse_axis("axial, sagittal") == (Axis.SAGITTAL, Axis.AXIAL)  # plane order
    assert format_axis(["axial", "sagittal"]) == "sagittal,axial" and format_axis("Axial") is Axis.AXIAL
    assert build_model("cnn5", "axial,coronal", spatial_size=SIZE).axes == ("coronal", "axial")


@pytest.mark.parametrize(
    "bad,hint",
    [("axal", "did you mean 'axial'"), ("sagittal,coronel", "did you mean 'coronal'"),
     ("axial,axial", "each plane at most once"), ("all,axial", "'all' stands alone"), ("", "not ''")],
)  # fmt: skip
def test_bad_axis_values_name_the_choices(bad: str, hint: str) -> None:
    with pytest.raises(
        ValueError, match=r"axis must be sagittal, coronal, axial, all or a comma-separated"
    ) as err:
        build_model("cnn5", bad)
    assert f"not {bad!r}" in str(err.value) and hint in str(err.value)


def test_slice_importance_per_plane() -> None:
    net = _net(aggregation="mean", position_encoding="learned", plane_fusion="attention")
    x = torch.randn(1, 1, *SIZE)
    results = plane_slice_importance(net, x)
    assert [r.axis for r in results] == ["sagittal", "coronal", "axial"]
    assert [r.importance.shape for r in results] == [(8,), (9,), (6,)]
    with torch.no_grad():
        full = float(net(x))
        # coronal slice 4 dropped by hand: its plane's mean over the other slices
        emb = {p: net.planes[p].embed(x) for p in net.axes}
        pooled = [
            emb[p].mean(1) if p != "coronal" else emb[p][:, [0, 1, 2, 3, 5, 6, 7, 8]].mean(1)
            for p in net.axes
        ]
        without = float(net.head(net.fuse(pooled)))
    assert results[1].output == pytest.approx(full, abs=1e-6)
    assert results[1].importance[4] == pytest.approx(full - without, abs=1e-5)
    assert all(np.abs(r.importance).max() > 0 for r in results)


def test_slice_csv_has_a_plane_column_occlusion_works_and_gradcam_is_refused(tmp_path: Path) -> None:
    net = _net()
    results = plane_slice_importance(net, torch.randn(1, 1, *SIZE))
    table = pd.read_csv(write_slice_csv(results, tmp_path / "slices.csv"))
    assert list(table.columns[:2]) == ["axis", "slice"] and len(table) == 8 + 9 + 6
    assert table.groupby("axis", sort=False).size().to_dict() == {"sagittal": 8, "coronal": 9, "axial": 6}
    with pytest.raises(TypeError, match="Grad-CAM is not supported for a several-plane model"):
        GradCAMMap(net)
    occlusion = OcclusionMap(net, mask_size=4, n_batch=32).model_grid(torch.randn(1, 1, *SIZE))
    assert occlusion.shape == SIZE and torch.isfinite(occlusion).all()  # any forward: works as for one plane


@pytest.fixture(scope="module")
def trained_planes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An AD bundle with a separate-encoder, attention-fused three-plane cnn5 trained one epoch."""
    root = tmp_path_factory.mktemp("planes")
    data = write_tiny_dataset(root / "data", n_per_split=(4, 2, 2))
    bundle = copy_bundle(root / "run")
    options = {**SMALL_MODEL, "axis": "all", "plane_encoder": "separate", "plane_fusion": "attention"}
    train = {"dataset_dir": str(data), "epochs": 1, "batch_size": 2, "input_scale": 0.12}
    run_workflow(str(bundle / "configs" / "train.json"), "train", **{**options, **train})
    return bundle, data


def test_a_three_plane_bundle_trains_evaluates_and_infers_from_its_record(
    trained_planes: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, data = trained_planes
    record = json.loads((bundle / "models" / "model.json").read_text(encoding="utf-8"))
    assert record["axis"] == "all" and record["spatial_size"] == [11, 13, 11]
    assert record["num_slices"] == {"sagittal": 11, "coronal": 13, "axial": 11}
    assert record["network_options"] == {"plane_encoder": "separate", "plane_fusion": "attention"}
    assert read(bundle / "models" / "model.json").network_kwargs()["axis"] == "all"
    quiet = {"progress_bar": False, "batch_size": 2}
    configs = [str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")]
    run_workflow(configs, "eval", dataset_dir=str(data), **quiet)
    evaluated = pd.read_csv(bundle / "eval" / "test_predictions.csv")
    out = tmp_path / "out"
    infer = {"input": str(data / "images"), "output_dir": str(out), **quiet}
    wf = run_workflow(str(bundle / "configs" / "inference.json"), "infer", save_features="true", **infer)
    (csv,) = out.glob("predictions-*.csv")
    pred = pd.read_csv(csv)
    assert len(pred) == 8 and (pred["status"] == "ok").all()
    both = pred.merge(evaluated, on="image", suffixes=("", "_eval"))
    assert len(both) == 2 and np.allclose(both["logit"], both["logit_eval"], atol=1e-5)
    (npz,) = out.glob("features-*.npz")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    shapes = {k: arrays[k].shape for k in arrays if k.startswith("features")}
    assert shapes == {f"features{p}": (8, 32) for p in ("", "_sagittal", "_coronal", "_axial")}
    network = wf.parser.get_parsed_content("network").eval()
    item = wf.parser.get_parsed_content("dataset")[3]
    with torch.no_grad(), bundle_precision(wf):
        planes = network.plane_embeddings(item["image"][None])
        fused = network.pooled_embedding(item["image"][None])
    for plane, emb in planes.items():
        np.testing.assert_allclose(arrays[f"features_{plane}"][3], emb[0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(arrays["features"][3], fused[0].numpy(), rtol=1e-5, atol=1e-5)


def test_interpret_reports_slice_importance_per_plane(
    trained_planes: tuple[Path, Path], tmp_path: Path
) -> None:
    from mri_slice_transfer.cli import main

    bundle, data = trained_planes
    out = tmp_path / "interp"
    argv = ["interpret", str(bundle), "--input", str(data / "images" / "sub-00_T1w.nii"), "--out", str(out)]
    assert main([*argv, "--methods", "slices", "--no-scan-plots"]) == 0
    row = pd.read_csv(out / "interpret.csv").iloc[0]
    assert row["status"] == "ok"
    slices = pd.read_csv(row["slices_csv"])
    assert slices.groupby("axis", sort=False).size().to_dict() == {"sagittal": 11, "coronal": 13, "axial": 11}
    assert (out / "group" / "slices.csv").is_file()
    assert main([*argv, "--methods", "gradcam"]) == 1  # refused with the reason
    assert main([*argv, "--out", str(tmp_path / "default"), "--no-scan-plots"]) == 0  # Grad-CAM left out
    row = pd.read_csv(tmp_path / "default" / "interpret.csv").iloc[0]
    assert row["status"] == "ok" and pd.isna(row.get("gradcam_nii"))
