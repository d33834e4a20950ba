"""Where a model looks (``mri_slice_transfer.interpret``, ``mri-slice-transfer interpret``).

Slice positions in MNI space; a slice the network ignores gets zero importance; Grad-CAM of the 3D-CNN;
the command on a tiny trained bundle writes template-grid NIfTIs (shape and affine), PNGs, CSVs and group
maps, and reports a broken scan as a row while the others are processed.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_bundles import write_tiny_dataset

from mri_slice_transfer.cli import main
from mri_slice_transfer.engine.io import atomic_torch_save
from mri_slice_transfer.engine.model_record import training_record
from mri_slice_transfer.engine.network import build_network
from mri_slice_transfer.engine.resize import scaled_size
from mri_slice_transfer.fileio import atomic_write_json, file_sha256
from mri_slice_transfer.interpret.geometry import slice_mni_coordinates, to_template_grid
from mri_slice_transfer.interpret.gradcam import GradCAMMap
from mri_slice_transfer.interpret.slices import slice_importance
from mri_slice_transfer.networks import Conv3DNet, SliceSetNet
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE, load_template

#: The tiny bundle's input scale: an 11 x 13 x 11 grid.
SCALE = 0.12


def test_slice_positions_are_the_template_affine_at_full_scale_and_slab_centres_below() -> None:
    z = slice_mni_coordinates("axial", 91)
    assert z[0] == -72.0 and z[-1] == 108.0 and np.allclose(np.diff(z), 2.0)
    x = slice_mni_coordinates("sagittal", 91)  # voxel i runs right to left: x decreases
    assert x[0] == 90.0 and x[-1] == -90.0


def test_scaled_slices_and_maps_go_back_to_where_the_area_resize_took_them_from() -> None:
    from monai.transforms import Resize

    # a volume whose value is its MNI y coordinate, area-resized as the demo does (input scale 0.5)
    y_mm = TEMPLATE_AFFINE[1, 1] * np.arange(109, dtype=np.float32) + TEMPLATE_AFFINE[1, 3]
    ramp = np.broadcast_to(y_mm[None, :, None], TEMPLATE_SHAPE)
    small = Resize(scaled_size(0.5), mode="area")(torch.as_tensor(ramp.copy())[None])[0]
    assert np.allclose(
        slice_mni_coordinates("coronal", scaled_size(0.5)[1]), small[0, :, 0].numpy(), atol=1e-4
    )
    back = to_template_grid(small)
    assert back.shape == TEMPLATE_SHAPE
    error = (back - ramp)[:, 5:-5]  # linear data, away from the edges
    assert abs(error.mean()) < 0.01 and np.abs(error).max() <= 1.0  # no shift; within 1 mm


class _Overwrite(torch.nn.Module):
    """Stands in for the positional encoding: replaces slice ``index``'s features by ``value``."""

    def __init__(self, index: int, value: torch.Tensor) -> None:
        super().__init__()
        self.index, self.value = index, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, self.index] = self.value
        return x


def _ignoring_net(aggregation: str, ignored: int) -> SliceSetNet:
    """A random cnn5 net whose slice ``ignored`` gets the embedding -1000 (all 32 values), whatever it shows.

    Max pooling never picks it; attention (key = identity, query = ones) gives it the score
    -32000 / sqrt(32), so a weight of exp(-5657) = 0.
    """
    torch.manual_seed(0)
    net = SliceSetNet("cnn5", "axial", aggregation, "none", spatial_size=(8, 9, 6)).eval()
    linear = net.post_embed[-1]  # 64 -> 32, after the (here replaced) positional encoding
    features = torch.linalg.pinv(linear.weight.detach()) @ (torch.full((32,), -1000.0) - linear.bias.detach())
    net.position = _Overwrite(ignored, features)
    if aggregation == "attention":
        with torch.no_grad():
            net.aggregate.key.weight.copy_(torch.eye(32))
            net.aggregate.key.bias.zero_()
            net.aggregate.query.fill_(1.0)
    return net


@pytest.mark.parametrize("aggregation", ["attention", "max"])
def test_a_slice_the_network_ignores_gets_zero_importance(aggregation: str) -> None:
    net, ignored = _ignoring_net(aggregation, ignored=2), 2
    x = torch.randn(1, 1, 8, 9, 6)
    changed = x.clone()
    changed[..., ignored] = 5.0 * torch.randn(8, 9)
    with torch.no_grad():
        assert torch.allclose(net(x), net(changed), atol=1e-5)  # it does ignore the slice
    result = slice_importance(net, x)
    assert result.importance.shape == (6,) and result.output == pytest.approx(float(net(x).detach()))
    assert abs(result.importance[ignored]) < 1e-5
    assert np.abs(result.importance).max() > 1e-3  # the other slices do matter
    if aggregation == "attention":
        assert result.attention[ignored] < 1e-6 and result.attention.sum() == pytest.approx(1.0)
    else:
        assert result.attention is None


def test_gradcam_of_the_3d_cnn_is_a_brain_map_on_the_template_grid() -> None:
    torch.manual_seed(0)
    net = Conv3DNet()
    x = torch.randn(1, 1, 12, 14, 12)
    cam = GradCAMMap(net)
    assert cam.layer == "blocks.4"
    m = cam(x)
    assert m.shape == TEMPLATE_SHAPE and m.max() == pytest.approx(1.0) and m.min() >= 0.0
    assert not m[~load_template().mask].any()
    with pytest.raises(ValueError, match="must be a module of Conv3DNet, not 'nope'"):
        GradCAMMap(net, layer="nope")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle folder with a random attention cnn5 at input scale 0.12 and its complete record."""
    torch.manual_seed(0)
    net = build_network(
        encoder="cnn5", axis="coronal", aggregation="attention", position_encoding="learned",
        pretrained="false", num_outputs=1, spatial_size=scaled_size(SCALE),
    )  # fmt: skip
    models = tmp_path_factory.mktemp("bundle") / "adni_ad" / "models"
    atomic_torch_save(net.state_dict(), models / "model.pt")
    metrics = {"val_balanced_accuracy": 0.5, "val_threshold_logit": 0.0}
    rec = training_record(
        net, "adni_ad", 1, "val_balanced_accuracy", metrics, file_sha256(models / "model.pt"), SCALE
    )
    atomic_write_json(models / "model.json", rec.to_json())
    return models.parent


def _check_nifti(path: str | Path) -> np.ndarray:
    img = nib.load(path)
    assert img.shape == TEMPLATE_SHAPE and np.array_equal(img.affine, TEMPLATE_AFFINE)
    assert img.header.get_sform(coded=True)[1] == 4  # MNI152
    return np.asarray(img.dataobj)


def test_interpret_command_writes_template_grid_maps_and_reports_a_broken_scan(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    data = write_tiny_dataset(tmp_path / "data", n_per_split=(0, 0, 3))
    (data / "images" / "sub-99_T1w.nii.gz").write_bytes(b"not a nifti")  # sorted between the others
    out = tmp_path / "out"
    argv = ["interpret", str(tiny_bundle), "--input", str(data / "images"), "--out", str(out)]
    assert main([*argv, "--methods", "slices,gradcam,occlusion", "--occlusion-mask", "4"]) == 0
    rows = pd.read_csv(out / "interpret.csv", keep_default_na=False)
    assert rows["status"].tolist() == ["ok", "ok", "ok", "error"]
    bad = rows.iloc[3]
    assert "sub-99_T1w.nii.gz" in bad["error"] and bad["gradcam_nii"] == ""
    for _, row in rows.iloc[:3].iterrows():
        folder = out / row["name"]
        gradcam = _check_nifti(row["gradcam_nii"])
        assert 0.0 <= gradcam.min() and gradcam.max() <= 1.0
        assert np.isfinite(_check_nifti(row["occlusion_nii"])).all()
        slices = pd.read_csv(row["slices_csv"])
        assert list(slices["slice"]) == list(range(scaled_size(SCALE)[1]))  # coronal: K = y size
        assert slices["attention"].sum() == pytest.approx(1.0, abs=1e-4)
        assert {p.name for p in folder.glob("*.png")} == {"slices.png", "gradcam.png", "occlusion.png"}
    group = out / "group"
    assert np.allclose(
        _check_nifti(group / "gradcam.nii.gz"), np.mean([_check_nifti(p) for p in rows["gradcam_nii"][:3]], 0)
    )
    assert {p.name for p in group.iterdir()} >= {"gradcam.png", "occlusion.png", "slices.csv", "slices.png"}


def test_interpret_command_refuses_unknown_methods_and_a_folder_without_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "interpret",
                str(tmp_path),
                "--input",
                str(tmp_path),
                "--out",
                str(tmp_path),
                "--methods",
                "gradcam,lrp",
            ]
        )
    assert "not 'gradcam,lrp'" in capsys.readouterr().err
    assert main(["interpret", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert f"{tmp_path / 'models' / 'model.pt'}: no trained model" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("encoder", "layer"), [("mobilenet_v3_small", "features"), ("regnet_y_400mf", "trunk_output")]
)
def test_gradcam_of_a_torchvision_encoder_uses_its_last_feature_map(encoder: str, layer: str) -> None:
    from mri_slice_transfer.interpret.gradcam import gradcam_unsupported

    torch.manual_seed(0)
    net = build_network(encoder=encoder, axis="axial", pretrained="false", spatial_size=(46, 54, 46))
    cam = GradCAMMap(net)
    assert cam.layer == f"encoder.backbone.{layer}" and gradcam_unsupported(net) is None
    m = cam(torch.randn(1, 1, 46, 54, 46))
    assert m.shape == TEMPLATE_SHAPE and m.max() == pytest.approx(1.0) and m.min() >= 0.0


def test_default_methods_skip_gradcam_where_there_is_no_default_layer_but_named_gradcam_is_refused() -> None:
    from mri_slice_transfer.interpret.gradcam import gradcam_unsupported
    from mri_slice_transfer.interpret.run import _check_methods

    vit = build_network(encoder="vit_b_16", axis="axial", pretrained="false", spatial_size=(8, 8, 2))
    assert "--gradcam-layer" in str(gradcam_unsupported(vit))
    assert _check_methods(None, vit, None) == ("slices",)
    with pytest.raises(ValueError, match="methods: gradcam: no Grad-CAM target layer known"):
        _check_methods(["gradcam"], vit, None)
    assert _check_methods(["slices", "gradcam"], vit, "encoder.backbone.conv_proj") == ("slices", "gradcam")
