"""Data-path transforms: orientation / spacing / FOV handling, bit-exactness, normalisation, bad inputs.

Synthetic phantoms are defined in world (RAS+ mm) coordinates and sampled on each test grid, so the
expected position on the template grid is known independently of the code under test.
"""

from __future__ import annotations

from functools import lru_cache

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor, PersistentDataset
from monai.transforms import Compose

from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE
from mri_slice_transfer.transforms import (
    LoadScand,
    NormalizeBraind,
    ResampleToTemplated,
    exact_index_map,
    find_scan_error,
    get_inference_transforms,
    get_train_transforms,
    get_transforms,
    load_scan_tensor,
    resample_to_template,
)

# ----------------------------------------------------------------------------------------------------
# phantom: a "brain" ellipsoid (value 100) with an asymmetric marker (value 1000): a 10 mm cube with
# arms towards world +x (short), +y (long) and +z (medium). Boundaries avoid even mm values so that no
# 2 mm lattice point sits on one (exact-path comparisons are then free of ties).
BRAIN_CENTRE = np.array([0.0, -18.0, 18.0])
BRAIN_RADII = np.array([70.0, 90.0, 65.0])
CUBE = np.array([20.0, -30.0, 30.0])  # marker cube centre, world mm
# boxes as (low, high) corners in world mm, disjoint
MARKER_BOXES = [
    (CUBE - 5.0, CUBE + 5.0),
    (CUBE + [5.0, -4.5, -4.5], CUBE + [13.0, 4.5, 4.5]),  # +x arm, 8 mm
    (CUBE + [-4.5, 5.0, -4.5], CUBE + [4.5, 29.0, 4.5]),  # +y arm, 24 mm
    (CUBE + [-4.5, -4.5, 5.0], CUBE + [4.5, 4.5, 19.0]),  # +z arm, 14 mm
]


def _marker_world_com() -> np.ndarray:
    vols = np.array([np.prod(hi - lo) for lo, hi in MARKER_BOXES])
    centres = np.array([(lo + hi) / 2 for lo, hi in MARKER_BOXES])
    return (vols[:, None] * centres).sum(0) / vols.sum()


def _to_template_voxel(world: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(TEMPLATE_AFFINE) @ np.append(world, 1.0))[:3]


def grid_world(affine: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """World x, y, z (mm, float32 arrays of ``shape``) of every voxel centre of a grid."""
    idx = [
        np.arange(n, dtype=np.float32).reshape([-1 if a == b else 1 for b in range(3)])
        for a, n in enumerate(shape)
    ]
    a = affine.astype(np.float32)
    return [a[r, 0] * idx[0] + a[r, 1] * idx[1] + a[r, 2] * idx[2] + a[r, 3] for r in range(3)]


def phantom(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Phantom sampled at the voxel centres of a grid (float32 array of ``shape``)."""
    x, y, z = grid_world(affine, shape)
    (cx, cy, cz), (rx, ry, rz) = BRAIN_CENTRE, BRAIN_RADII
    out = np.where(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0, 100.0, 0.0)
    out = out.astype(np.float32)
    lo_all = np.min([lo for lo, _ in MARKER_BOXES], 0)
    hi_all = np.max([hi for _, hi in MARKER_BOXES], 0)
    cand = np.nonzero(
        (x > lo_all[0])
        & (x < hi_all[0])
        & (y > lo_all[1])
        & (y < hi_all[1])
        & (z > lo_all[2])
        & (z < hi_all[2])
    )
    pts = np.stack([np.broadcast_to(c, out.shape)[cand] for c in (x, y, z)], -1)
    inside = np.zeros(len(pts), bool)
    for lo, hi in MARKER_BOXES:
        inside |= np.all((pts > lo) & (pts < hi), axis=-1)
    out[tuple(c[inside] for c in cand)] = 1000.0
    return out


@lru_cache(maxsize=1)
def phantom_on_template() -> np.ndarray:
    return phantom(TEMPLATE_AFFINE, TEMPLATE_SHAPE)


_AXES = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def _rot(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def make_affine(codes: str, spacing: float, shape: tuple[int, int, int], rotation=None) -> np.ndarray:
    """Affine with voxel axes ``codes`` (e.g. "PIR"), centre voxel at the template's centre voxel."""
    cols = np.array([_AXES[c] for c in codes], dtype=np.float64).T * spacing
    if rotation is not None:
        cols = rotation @ cols
    centre_world = TEMPLATE_AFFINE[:3, :3] @ np.array([45.0, 54.0, 45.0]) + TEMPLATE_AFFINE[:3, 3]
    aff = np.eye(4)
    aff[:3, :3] = cols
    aff[:3, 3] = centre_world - cols @ ((np.array(shape) - 1) / 2.0)
    return aff


def save(path, data: np.ndarray, affine: np.ndarray, dtype=np.int16) -> str:
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    nib.save(img, str(path))
    return str(path)


OBLIQUE = _rot(0, 20.0) @ _rot(2, 20.0)  # 20 deg about x and about z
# FSL MNI152_T1_1mm / UK Biobank T1_brain_to_MNI grid: 182 x 218 x 182, 1 mm, LAS; its voxel centres
# include every 2 mm template centre (the "strided" path).
UKB_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
# (name, axis codes or explicit affine, voxel size mm, shape, rotation, expected resampling path)
CASES = [
    ("fsl_2mm_LAS", "LAS", 2.0, (91, 109, 91), None, "exact"),
    ("ras_2mm", "RAS", 2.0, (91, 109, 91), None, "exact"),
    ("lps_2mm_bigfov", "LPS", 2.0, (101, 121, 97), None, "exact"),
    ("pir_2mm", "PIR", 2.0, (115, 95, 99), None, "exact"),
    ("oblique_2mm", "RAS", 2.0, (99, 115, 99), OBLIQUE, "interpolated"),
    ("ukb_1mm_LAS", UKB_AFFINE, 1.0, (182, 218, 182), None, "strided"),
    ("ras_1mm_smallfov", "RAS", 1.0, (120, 150, 120), None, "interpolated"),
    ("lps_1mm", "LPS", 1.0, (130, 160, 130), None, "interpolated"),
    ("pir_1mm_odd", "PIR", 1.0, (151, 121, 131), None, "strided"),
    ("oblique_1mm", "LPS", 1.0, (140, 170, 140), OBLIQUE, "interpolated"),
    ("ras_1p5mm", "RAS", 1.5, (121, 145, 121), None, "interpolated"),
    ("las_1p5mm", "LAS", 1.5, (110, 130, 100), None, "interpolated"),
    ("lps_1p5mm", "LPS", 1.5, (121, 145, 121), None, "interpolated"),
    ("pir_1p5mm", "PIR", 1.5, (140, 110, 120), None, "interpolated"),
    ("oblique_1p5mm", "PIR", 1.5, (150, 120, 130), OBLIQUE, "interpolated"),
]
assert np.allclose(make_affine("LAS", 2.0, (91, 109, 91)), TEMPLATE_AFFINE)  # the FSL grid is the template


def _marker_com(vol: np.ndarray) -> np.ndarray:
    """Centre of mass (template voxels) of the marker: intensity above the brain level (100), near it.

    Linear in intensity, so blurring (anti-aliasing) and trilinear interpolation do not move it.
    """
    c = np.round(_to_template_voxel(CUBE)).astype(int)
    box = tuple(slice(max(v - 20, 0), v + 21) for v in c)
    w = np.clip(vol[box] - 100.0, 0.0, None)
    idx = np.indices(w.shape).reshape(3, -1) + np.array([b.start for b in box])[:, None]
    return (idx * w.reshape(-1)).sum(1) / w.sum()


@pytest.mark.parametrize("name,codes,spacing,shape,rotation,how", CASES, ids=[c[0] for c in CASES])
def test_marker_lands_on_same_template_voxel(tmp_path, name, codes, spacing, shape, rotation, how):
    affine = codes if isinstance(codes, np.ndarray) else make_affine(codes, spacing, shape, rotation)
    exact = how == "exact"
    path = save(tmp_path / f"{name}.nii", phantom(affine, shape), affine)

    d = ResampleToTemplated("image")(LoadScand("image")({"image": path}))
    img = d["image"]
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    assert tuple(img.shape) == (1, *TEMPLATE_SHAPE)
    np.testing.assert_array_equal(img.affine.numpy(), TEMPLATE_AFFINE)
    assert img.meta["filename_or_obj"] == path
    assert img.meta["resample_path"] == how
    vol = img[0].numpy()

    expected_on_template = phantom_on_template()
    if exact:
        # every template voxel inside the source FOV is copied bit-exactly; outside it is 0
        src_vox = grid_world(np.linalg.inv(affine) @ TEMPLATE_AFFINE, TEMPLATE_SHAPE)
        inside = np.ones(TEMPLATE_SHAPE, bool)
        for v, n in zip(src_vox, shape, strict=True):
            inside &= (v > -0.5) & (v < n - 0.5)
        np.testing.assert_array_equal(vol, np.where(inside, expected_on_template, 0.0))
        # the marker's centre of mass is exactly that of the marker sampled on the template grid
        expected_com, tol = _marker_com(expected_on_template), 1e-6
    else:
        # ... within one voxel of inv(TEMPLATE_AFFINE) @ (world centre of mass)
        expected_com, tol = _to_template_voxel(_marker_world_com()), 1.0
    com = _marker_com(vol)
    np.testing.assert_allclose(com, expected_com, atol=tol)
    # the asymmetric shape keeps its orientation: arms point to world +x (= -i), +y (= +j), +z (= +k)
    offset = com - _to_template_voxel(CUBE)
    expected_offset = expected_com - _to_template_voxel(CUBE)
    assert np.all(np.sign(offset) == np.sign(expected_offset)), (offset, expected_offset)
    np.testing.assert_allclose(offset, expected_offset, atol=max(tol, 0.5))
    # and overlaps the marker sampled directly on the template grid
    got, want = vol > 550.0, expected_on_template > 550.0
    dice = 2 * (got & want).sum() / (got.sum() + want.sum())
    assert dice > (0.999 if exact else 0.7), dice
    # background stays exactly 0 outside the brain ellipsoid (no bleeding from the pre-filter)
    far = (
        sum(
            ((c - m) / (r + 6.0)) ** 2
            for c, m, r in zip(
                grid_world(TEMPLATE_AFFINE, TEMPLATE_SHAPE), BRAIN_CENTRE, BRAIN_RADII, strict=True
            )
        )
        > 1
    )
    assert np.all(vol[far] == 0.0)


def test_exact_path_is_bit_exact_for_template_grid_and_ras_storage(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=TEMPLATE_SHAPE).astype(np.float32)
    las = save(tmp_path / "las.nii.gz", data, TEMPLATE_AFFINE, dtype=np.float32)
    ras_affine = TEMPLATE_AFFINE.copy()
    ras_affine[0, 0], ras_affine[0, 3] = 2.0, -90.0  # stored RAS: x flipped, same world positions
    ras = save(tmp_path / "ras.nii.gz", data[::-1], ras_affine, dtype=np.float32)
    assert exact_index_map(ras_affine) == [(0, -1, 90), (1, 1, 0), (2, 1, 0)]
    chain = [LoadScand("image"), ResampleToTemplated("image")]
    for path in (las, ras):
        d = {"image": path}
        for t in chain:
            d = t(d)
        assert d["image"].meta["resample_path"] == "exact"
        assert np.array_equal(d["image"][0].numpy(), data)


def test_strided_path_equals_interpolation(tmp_path):
    """The 1 mm MNI grid takes the strided shortcut; it must match the general anti-aliased trilinear path."""
    rng = np.random.default_rng(5)
    shape = (182, 218, 182)
    data = np.zeros(shape, np.float32)
    data[30:150, 30:190, 20:160] = rng.uniform(10, 100, size=(120, 160, 140))
    img = MetaTensor(torch.from_numpy(data[None]), affine=torch.from_numpy(UKB_AFFINE))
    strided = resample_to_template(img)
    assert strided.meta["resample_path"] == "strided"
    shifted = UKB_AFFINE.copy()
    shifted[:3, 3] += 1e-3  # a sub-tolerance shift would still be strided; 1e-3 mm forces interpolation
    interpolated = resample_to_template(MetaTensor(img.as_tensor(), affine=torch.from_numpy(shifted)))
    assert interpolated.meta["resample_path"] == "interpolated"
    a, b = strided[0].numpy(), interpolated[0].numpy()
    assert np.array_equal(a != 0, b != 0)
    np.testing.assert_allclose(a, b, atol=0.1)  # 1e-3 voxel shift of data changing by < 90 per voxel


def test_normalisation_brain_zscore_background_zero(tmp_path):
    rng = np.random.default_rng(1)
    data = np.zeros(TEMPLATE_SHAPE, np.float32)
    data[20:70, 20:90, 20:70] = rng.uniform(50, 150, size=(50, 70, 50))
    path = save(tmp_path / "brain.nii.gz", data, TEMPLATE_AFFINE, dtype=np.float32)
    out = get_transforms()({"image": path})["image"]
    assert out.dtype == torch.float32 and tuple(out.shape) == (1, *TEMPLATE_SHAPE)
    x = out[0].numpy().astype(np.float64)
    brain = data != 0
    assert abs(x[brain].mean()) < 1e-5 and abs(x[brain].std() - 1.0) < 1e-5
    assert np.all(x[~brain] == 0.0)
    # same result through every public entry point
    t = load_scan_tensor(path)
    assert type(t) is torch.Tensor and torch.equal(t, out.as_tensor())
    assert torch.equal(get_train_transforms()({"image": path})["image"], out)
    assert torch.equal(get_inference_transforms()({"image": path})["image"], out)


def test_extra_keys_and_dataset_error_unwrapping(tmp_path):
    good = save(
        tmp_path / "ok.nii.gz", np.arange(np.prod(TEMPLATE_SHAPE)).reshape(TEMPLATE_SHAPE), TEMPLATE_AFFINE
    )
    ds = Dataset([{"image": good, "label": 1, "id": "s1"}], transform=get_transforms(extra_keys=("label",)))
    item = ds[0]
    assert item["label"].dtype == torch.float32 and item["id"] == "s1"
    # the chain is deterministic, so MONAI's caching datasets can cache all of it
    for cached in (
        CacheDataset(
            [{"image": good}], transform=get_transforms(), cache_rate=1.0, num_workers=0, progress=False
        ),
        PersistentDataset([{"image": good}], transform=get_transforms(), cache_dir=tmp_path / "persist"),
    ):
        assert torch.equal(cached[0]["image"], item["image"])
    missing = str(tmp_path / "nope.nii.gz")
    ds = Dataset([{"image": missing}], transform=get_transforms())
    with pytest.raises(ScanError) as info:  # ScanCompose lets the ScanError through a Dataset
        ds[0]
    assert info.value.path == missing
    # a plain MONAI Compose wraps it in RuntimeError("applying transform ..."); find_scan_error digs it out
    plain = Compose(get_transforms().transforms)
    with pytest.raises(RuntimeError) as info:
        plain({"image": missing})
    assert not isinstance(info.value, ScanError)
    err = find_scan_error(info.value)
    assert isinstance(err, ScanError) and err.path == missing
    assert find_scan_error(RuntimeError("unrelated")) is None
    # a DataLoader worker turns it into RuntimeError("Caught ScanError in DataLoader worker ..."): still found
    loader = DataLoader(Dataset([{"image": missing}], transform=get_transforms()), num_workers=1)
    with pytest.raises(RuntimeError) as info:
        next(iter(loader))
    err = find_scan_error(info.value)
    assert isinstance(err, ScanError) and err.path == missing and "not found" in err.problem


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(2)
    vol = rng.uniform(1, 100, size=(20, 22, 18)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    nan = vol.copy()
    nan[3, 4, 5] = np.nan
    return {
        "missing": (str(tmp_path / "missing.nii.gz"), "not found"),
        "corrupt": (str(corrupt), "NIfTI"),
        "2d": (save(tmp_path / "flat.nii.gz", vol[:, :, 0], aff, np.float32), "2D"),
        "4d_3vol": (save(tmp_path / "fmri.nii.gz", np.stack([vol] * 3, -1), aff, np.float32), "3 volumes"),
        "nan": (save(tmp_path / "nan.nii.gz", nan, aff, np.float32), "NaN"),
        "zeros": (save(tmp_path / "zeros.nii.gz", np.zeros_like(vol), aff, np.float32), "all zeros"),
        "not_nifti": (str(corrupt).replace(".nii.gz", ".png"), "supported formats"),
    }


@pytest.mark.parametrize("case", ["missing", "corrupt", "2d", "4d_3vol", "nan", "zeros", "not_nifti"])
def test_bad_inputs_raise_scan_error_with_file_and_problem(tmp_path, case):
    bad = _bad_inputs(tmp_path)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG fake")
    path, problem = bad[case]
    with pytest.raises(ScanError) as info:
        LoadScand("image")({"image": path})
    assert path in str(info.value) and problem in str(info.value), str(info.value)
    assert info.value.path == path
    # the chain lets the same ScanError through (not MONAI's RuntimeError wrapper)
    with pytest.raises(ScanError) as info:
        get_transforms()({"image": path})
    assert path in str(info.value) and problem in str(info.value)


def test_4d_with_one_volume_is_squeezed(tmp_path):
    vol = np.random.default_rng(3).uniform(1, 100, size=(20, 22, 18)).astype(np.float32)
    path = save(tmp_path / "one.nii.gz", vol[..., None], np.diag([2.0, 2.0, 2.0, 1.0]), np.float32)
    img = LoadScand("image")({"image": path})["image"]
    assert tuple(img.shape) == (1, 20, 22, 18)
    np.testing.assert_array_equal(img[0].numpy(), vol)


def test_scan_outside_template_space_says_run_prepare(tmp_path):
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [1000.0, 1000.0, 1000.0]  # far away from MNI space
    data = np.random.default_rng(4).uniform(1, 100, size=(30, 30, 30))
    path = save(tmp_path / "scanner_space.nii.gz", data, aff, np.float32)
    with pytest.raises(ScanError) as info:
        get_transforms()({"image": path})
    assert path in str(info.value) and "MNI" in str(info.value) and "prepare" in str(info.value)


def test_normalize_brain_keeps_metadata():
    x = MetaTensor(
        torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]]), affine=2 * torch.eye(4), meta={"filename_or_obj": "a"}
    )
    out = NormalizeBraind("image")({"image": x})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a"
    assert torch.equal(out.affine, x.affine)
    brain = out.as_tensor()[x.as_tensor() != 0].double()
    assert out[0, 0, 0, 0] == 0 and abs(float(brain.mean())) < 1e-6
    assert abs(float(brain.std(unbiased=False)) - 1) < 1e-6
