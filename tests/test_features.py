"""Issue 22 item 7: ``inference.json --save_features true`` writes each scan's pooled embedding.

The NPZ rows follow the predictions CSV, the features are the network's ``pooled_embedding`` of the
same preprocessed input, an unreadable scan gets a NaN row, and the default (off) writes nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_brain_age_conv3d import CONV3D, _with_ages
from test_bundle_aggregations import SMALL_MODEL
from test_bundles import bundle_precision, copy_bundle, run_workflow, write_tiny_dataset

from mri_slice_transfer.engine import FeatureWriter
from mri_slice_transfer.networks.conv3d import Conv3DNet
from mri_slice_transfer.networks.slice_set import SliceSetNet


def test_pooled_embedding_is_what_the_head_reads() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 9, 6)
    net = SliceSetNet("cnn5", "axial", "attention", spatial_size=(8, 9, 6)).eval()
    with torch.no_grad():
        emb = net.pooled_embedding(x)
        assert emb.shape == (2, 32)
        torch.testing.assert_close(net.head(emb), net(x), rtol=0, atol=0)


def test_conv3d_features_match_its_forward_pass() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16, 16)
    cnn = Conv3DNet().eval()
    captured = []
    writer = FeatureWriter(cnn, "unused.npz")
    writer.layer.register_forward_pre_hook(lambda m, a: captured.append(a[0].flatten(1)))
    with torch.no_grad():
        out = cnn(x)
        torch.testing.assert_close(captured[0], cnn.pooled_embedding(x), rtol=0, atol=0)
        torch.testing.assert_close(cnn.classifier(captured[0][..., None, None, None]).flatten(1), out)


def test_features_of_other_networks_are_a_clear_error() -> None:
    net = torch.nn.Linear(3, 1)
    with pytest.raises(TypeError, match="save_features: features are written for .*not Linear"):
        FeatureWriter(net, "f.npz")
    FeatureWriter(net, "f.npz", enabled="false")  # off: any network


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cnn5 slice-set bundle trained one epoch on tiny data; returns (bundle, scans folder)."""
    root = tmp_path_factory.mktemp("features")
    data = write_tiny_dataset(root / "data", n_per_split=(4, 2, 2))
    bundle = copy_bundle(root / "run")
    train = {"dataset_dir": str(data), "epochs": 1, "batch_size": 2}
    run_workflow(str(bundle / "configs" / "train.json"), "train", **SMALL_MODEL, **train)
    scans = root / "scans"
    scans.mkdir()
    for p in sorted((data / "images").glob("*.nii"))[:3]:
        shutil.copy(p, scans / p.name)
    (scans / "sub-05_T1w.nii.gz").write_bytes(b"this is not a NIfTI file")
    return bundle, scans


def test_inference_writes_features_in_prediction_order(
    small_bundle: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, scans = small_bundle
    out = tmp_path / "out"
    infer = {"input": str(scans), "output_dir": str(out), "batch_size": 3, "progress_bar": False}
    wf = run_workflow(str(bundle / "configs" / "inference.json"), "infer", save_features="true", **infer)
    (csv,) = out.glob("predictions-*.csv")
    (npz_path,) = out.glob("features-*.npz")
    assert npz_path.stem.removeprefix("features-") == csv.stem.removeprefix("predictions-")  # run name
    pred = pd.read_csv(csv, keep_default_na=False)
    with np.load(npz_path) as z:  # no pickle: plain string arrays
        npz = {k: z[k] for k in z.files}
    assert sorted(npz) == ["features", "image", "session_id", "subject_id"]
    feats = npz["features"]
    assert feats.dtype == np.float32 and feats.shape == (len(pred), 32) == (4, 32)
    for key in ("image", "subject_id", "session_id"):
        assert npz[key].tolist() == pred[key].astype(str).tolist()
    ok = (pred["status"] == "ok").to_numpy()
    assert ok.sum() == 3 and "sub-05" in pred.loc[~ok, "image"].item()
    assert np.isnan(feats[~ok]).all() and np.isfinite(feats[ok]).all()

    network = wf.parser.get_parsed_content("network").eval()  # the loaded weights
    dataset = wf.parser.get_parsed_content("dataset")
    with torch.no_grad(), bundle_precision(wf):
        for i in np.flatnonzero(ok):
            item = dataset[int(i)]
            assert item["image_path"] == pred["image"][i]
            expected = network.pooled_embedding(item["image"][None]).numpy()[0]
            np.testing.assert_allclose(feats[i], expected, rtol=1e-5, atol=1e-5)


def test_features_are_off_by_default(small_bundle: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, scans = small_bundle
    out = tmp_path / "out"
    infer = {"input": str(scans), "output_dir": str(out), "progress_bar": False}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", **infer)
    assert len(list(out.glob("predictions-*.csv"))) == 1
    assert not list(tmp_path.rglob("*.npz"))


def test_brain_age_conv3d_writes_its_penultimate_features(tmp_path: Path) -> None:
    data = _with_ages(write_tiny_dataset(tmp_path / "data", n_per_split=(4, 2, 2)))
    bundle = copy_bundle(tmp_path / "run", "ukbb_brain_age")
    train = {"dataset_dir": str(data), "epochs": 1, "batch_size": 2, "demo_input_scale": 0.1}
    run_workflow(str(bundle / "configs" / "train.json"), "train", **{**CONV3D, **train})
    out_csv, out_npz = tmp_path / "pred.csv", tmp_path / "feats.npz"
    infer = {"input": str(data / "images"), "predictions_csv": str(out_csv), "features_npz": str(out_npz)}
    config = str(bundle / "configs" / "inference.json")
    wf = run_workflow(config, "infer", save_features=True, batch_size=2, **{**CONV3D, **infer})
    pred = pd.read_csv(out_csv)
    with np.load(out_npz) as z:
        images, feats = z["image"], z["features"]
    assert images.tolist() == pred["image"].tolist() and feats.shape == (8, 64)
    network = wf.parser.get_parsed_content("network").eval()
    item = wf.parser.get_parsed_content("dataset")[5]
    with torch.no_grad(), bundle_precision(wf):
        expected = network.pooled_embedding(item["image"][None]).numpy()[0]
    np.testing.assert_allclose(feats[5], expected, rtol=1e-5, atol=1e-5)


def test_every_ranks_per_plane_features_are_gathered_with_the_fused_ones(tmp_path: Path, monkeypatch) -> None:
    # under torchrun each rank scores its share; rank 0 must write the per-plane arrays of every rank,
    # in the same input order as the fused features (not only its own rows)
    from mri_slice_transfer.engine import features as features_module
    from mri_slice_transfer.networks.planes import MultiPlaneNet

    net = MultiPlaneNet(encoder="cnn5", axis="all", spatial_size=(8, 10, 8))
    writer = FeatureWriter(net, str(tmp_path / "f.npz"))
    planes = list(writer.plane_rows)

    def rank_share(rank: int, scans: int) -> list:
        ids = {k: [f"{k}{rank}-{j}" for j in range(scans)] for k in features_module.ID_KEYS}
        rows = [np.full(3, 10 * rank + j, np.float32) for j in range(scans)]
        plane_rows = {p: [np.full(32, 10 * rank + j + 0.5, np.float32) for j in range(scans)] for p in planes}
        return [ids, rows, 3, plane_rows]

    monkeypatch.setattr(features_module, "gather_shards", lambda items: [rank_share(0, 2), rank_share(1, 1)])
    with np.load(writer.write()) as saved:
        assert saved["features"][:, 0].tolist() == [0, 10, 1]  # scans 0, 1, 2 dealt to ranks 0, 1, 0
        for plane in planes:
            assert saved[f"features_{plane}"][:, 0].tolist() == [0.5, 10.5, 1.5]
