"""Fast unit tests of normalisation (transforms/intensity.py) and resampling (transforms/spatial.py) on
in-memory images: the z-score formula and its errors, the grid-matching rules, the anti-alias sigma, the
background rule and the output meta, so that mutation testing of those modules (scripts/mutation.sh)
runs in minutes (docs/testing.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from mri_slice_transfer.errors import ScanError
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE
from mri_slice_transfer.transforms import spatial
from mri_slice_transfer.transforms.intensity import NormalizeBraind, normalize_brain
from mri_slice_transfer.transforms.spatial import (
    ResampleToTemplated,
    exact_index_map,
    lattice_index_map,
    resample_to_template,
)

# --- normalisation ------------------------------------------------------------------------------


def test_brain_zscore_uses_every_non_zero_voxel_of_all_channels_and_the_population_std() -> None:
    """Negative voxels are brain too; mean and population std over both channels; 0 stays exactly 0."""
    x = torch.tensor([[[[0.0, -2.0], [4.0, 0.0]]], [[[6.0, 0.0], [0.0, 12.0]]]])  # [C=2, 1, 2, 2]
    values = np.array([-2.0, 4.0, 6.0, 12.0])
    expected = np.zeros((2, 1, 2, 2))
    expected[x.numpy() != 0] = (values - values.mean()) / values.std()
    out = normalize_brain(x)
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    assert torch.equal(out[x == 0], torch.zeros(4))


def test_normalisation_of_a_metatensor_keeps_affine_meta_and_history() -> None:
    img = MetaTensor(torch.tensor([[[[0.0, 1.0, 3.0]]]]), affine=torch.diag(torch.tensor([2.0, 2, 2, 1])))
    img.meta["filename_or_obj"] = "/d/a.nii"
    img.applied_operations = [{"class": "Resample"}]
    out = normalize_brain(img)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "/d/a.nii"
    assert torch.equal(out.affine, img.affine) and out.applied_operations == [{"class": "Resample"}]
    assert out.as_tensor().flatten().tolist() == [0.0, -1.0, 1.0]
    out.affine[0, 0] = 5.0  # a copy: changing the output does not change the input
    assert img.affine[0, 0] == 2.0


@pytest.mark.parametrize(
    "values,problem",
    [
        ([0.0, 0.0], "no non-zero voxel on the MNI152 2 mm template grid after resampling"),
        ([0.0, 7.0, 7.0], "all 2 non-zero voxels on the template grid have the same value (7)"),
    ],
)
def test_an_empty_or_constant_brain_is_a_scan_error_naming_the_file(values, problem: str) -> None:
    img = MetaTensor(torch.tensor([[[values]]]))
    img.meta["filename_or_obj"] = "/d/bad.nii"
    with pytest.raises(ScanError) as info:
        normalize_brain(img)
    assert info.value.path == "/d/bad.nii" and info.value.problem.startswith(problem)
    assert "mri-slice-transfer prepare" in info.value.problem
    with pytest.raises(ScanError) as info:
        normalize_brain(torch.tensor([[[values]]]))
    assert info.value.path is None
    with pytest.raises(ScanError) as info:
        normalize_brain(MetaTensor(torch.tensor([[[values]]])))  # a MetaTensor without a file name
    assert info.value.path is None


def test_normalisation_errors_say_what_to_do() -> None:
    with pytest.raises(ScanError) as info:
        normalize_brain(torch.zeros(1, 2, 2, 2))
    assert info.value.problem == (
        "no non-zero voxel on the MNI152 2 mm template grid after resampling: the image lies outside "
        "template space, so the scan is probably not in MNI space. Register it to MNI space first, "
        "e.g. with `mri-slice-transfer prepare`."
    )
    with pytest.raises(ScanError) as info:
        normalize_brain(torch.full((1, 2, 2, 2), 3.0))
    assert info.value.problem == (
        "all 8 non-zero voxels on the template grid have the same value (3), so the image cannot be "
        "normalised; check the file holds a T1 image registered to MNI space "
        "(e.g. `mri-slice-transfer prepare`)."
    )
    assert normalize_brain(torch.tensor([[[[1.0, 3.0]]]], dtype=torch.float64)).dtype == torch.float32


def test_normalise_dict_transform_normalises_each_key_and_may_skip_missing_ones() -> None:
    data = {"a": torch.tensor([[[[1.0, 3.0]]]]), "b": torch.tensor([[[[2.0, 6.0]]]]), "c": "x"}
    out = NormalizeBraind(["a", "b"])(data)
    assert out["a"].flatten().tolist() == [-1.0, 1.0] and out["b"].flatten().tolist() == [-1.0, 1.0]
    assert out["c"] == "x" and data["a"].flatten().tolist() == [1.0, 3.0]
    assert NormalizeBraind(["a", "z"], allow_missing_keys=True)(data)["a"].flatten().tolist() == [-1.0, 1.0]
    with pytest.raises(KeyError):
        NormalizeBraind(["z"])(data)


# --- resampling ---------------------------------------------------------------------------------

RAS_2MM = np.array([[2.0, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
MNI_1MM = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])


def test_grid_matching_finds_flips_permutations_strides_and_refuses_the_rest() -> None:
    """Template voxel j along each axis is source voxel step * j + offset along source_axis."""
    assert lattice_index_map(TEMPLATE_AFFINE) == [(0, 1, 0), (1, 1, 0), (2, 1, 0)]
    assert exact_index_map(RAS_2MM) == [(0, -1, 90), (1, 1, 0), (2, 1, 0)]  # x stored the other way
    pir = np.array([[0, 0, -2.0, 90], [-2.0, 0, 0, 90], [0, -2.0, 0, 108], [0, 0, 0, 1]])  # P-I-R storage
    mapping = exact_index_map(pir)
    assert sorted(p for p, _, _ in mapping) == [0, 1, 2]
    for j in [(0, 0, 0), (90, 108, 90), (17, 43, 5)]:  # the map agrees with the affines
        source = np.linalg.inv(pir) @ TEMPLATE_AFFINE @ np.array([*j, 1.0])
        for a, (p, step, offset) in enumerate(mapping):
            assert source[p] == pytest.approx(step * j[a] + offset)
    assert (
        lattice_index_map(MNI_1MM) == [(0, 2, 0), (1, 2, 0), (2, 2, 0)] and exact_index_map(MNI_1MM) is None
    )
    shifted = TEMPLATE_AFFINE.copy()
    shifted[0, 3] += 2e-4 * 2  # 2e-4 voxel: beyond the 1e-4 tolerance
    assert lattice_index_map(shifted) is None and lattice_index_map(shifted, tol=3e-4) is not None
    tilted = TEMPLATE_AFFINE.copy()
    tilted[1, 0] = 2e-6  # tiny shear: 2e-6 / 2 mm * 90 voxels = 9e-5 voxel at the far edge
    assert lattice_index_map(tilted) is not None
    tilted[1, 0] = 4e-6  # 1.8e-4 voxel: too far
    assert lattice_index_map(tilted) is None
    shear = np.eye(4)
    shear[0, 1] = 1.0  # integer entries, but template axes x and y both step along source axis 0
    assert lattice_index_map(TEMPLATE_AFFINE @ np.linalg.inv(shear)) is None


def test_anti_alias_sigma_follows_the_template_derivation_rule() -> None:
    """sigma = sqrt((2 / spacing)^2 - 1) / 2 source voxels per axis; 0 at 2 mm or coarser."""
    affine = np.diag([1.0, 0.5, 3.0, 1.0])
    sigma = spatial._anti_alias_sigma(affine)
    np.testing.assert_allclose(sigma, [np.sqrt(3) / 2, np.sqrt(15) / 2, 0.0])


def _img(data: np.ndarray, affine: np.ndarray, **meta) -> MetaTensor:
    img = MetaTensor(
        torch.from_numpy(np.array(data, np.float32)[None]), affine=torch.from_numpy(np.array(affine))
    )
    img.meta.update(meta)
    return img


def test_resampled_image_has_the_template_affine_shape_and_the_path_in_its_meta() -> None:
    data = np.zeros(TEMPLATE_SHAPE, np.float32)
    data[10, 20, 30] = 5.0
    out = resample_to_template(_img(data[::-1].copy(), RAS_2MM, filename_or_obj="a.nii"))
    assert out.meta["resample_path"] == "exact" and out.meta["filename_or_obj"] == "a.nii"
    assert out[0, 10, 20, 30] == 5.0 and float(out.sum()) == 5.0  # the RAS copy lands on the same voxel
    np.testing.assert_array_equal(out.affine.numpy(), TEMPLATE_AFFINE)
    np.testing.assert_array_equal(out.meta["original_affine"], RAS_2MM)
    assert out.meta["spatial_shape"].tolist() == list(TEMPLATE_SHAPE) and out.dtype == torch.float32
    kept = resample_to_template(_img(data, TEMPLATE_AFFINE, original_affine=np.eye(4)))
    np.testing.assert_array_equal(kept.meta["original_affine"], np.eye(4))  # the loader's is kept


def test_template_voxels_outside_the_scan_are_zero_on_every_path() -> None:
    """A small field of view: zero-padding on the exact path; no overlap at all gives a blank image."""
    small = _img(np.full((5, 6, 7), 3.0), TEMPLATE_AFFINE)
    out = resample_to_template(small)[0].numpy()
    assert out[:5, :6, :7].min() == 3.0 and float(out.sum()) == 3.0 * 5 * 6 * 7
    far = TEMPLATE_AFFINE.copy()
    far[:3, 3] += 1000.0
    assert float(resample_to_template(_img(np.ones((5, 6, 7)), far)).abs().sum()) == 0.0
    far[0, 3] += 0.5  # not on the lattice: the interpolated path, also blank
    blank = resample_to_template(_img(np.ones((5, 6, 7)), far))
    assert blank.meta["resample_path"] == "interpolated" and float(blank.abs().sum()) == 0.0


def test_half_voxel_shift_interpolates_and_keeps_the_background_at_zero() -> None:
    """Trilinear sampling halfway between voxels averages them; where most neighbours are background
    (support < 0.5) the output is exactly 0."""
    affine = TEMPLATE_AFFINE.copy()
    affine[2, 3] -= 1.0  # source z voxel centres half a template voxel lower
    data = np.zeros((20, 20, 20), np.float32)
    data[5:15, 5:15, 5:15] = 10.0
    data[5:15, 5:15, 10] = 30.0
    out = resample_to_template(_img(data, affine), anti_alias=False)
    assert out.meta["resample_path"] == "interpolated"
    z = out[0, 8, 8, :20].numpy()
    # template z = j sits at source z = j + 0.5: voxels j and j + 1 averaged
    assert z[9] == pytest.approx(20.0) and z[10] == pytest.approx(20.0) and z[7] == pytest.approx(10.0)
    assert (
        z[4] == pytest.approx(5.0, rel=1e-5) and z[14] == pytest.approx(5.0, rel=1e-5) and z[3] == 0.0
    )  # support exactly 0.5 is kept, 0 is background
    nearest = resample_to_template(_img(data, affine), mode="nearest")[0, 8, 8, :20].numpy()
    assert set(np.unique(nearest)) <= {0.0, 10.0, 30.0}
    corner = TEMPLATE_AFFINE.copy()
    corner[:3, 3] -= 1.0  # half a voxel along x, y and z: at the cube's corners 1 of 8 neighbours is brain
    out = resample_to_template(_img(data, corner), anti_alias=False)[0].numpy()
    assert out[out != 0].min() >= 5.0  # support < 0.5 (a value of 1.25 or 2.5): set to 0


def test_resampling_refuses_bad_modes_plain_tensors_and_wrong_dimensions() -> None:
    with pytest.raises(ValueError, match=r"mode must be one of \('bilinear', 'nearest'\), got 'cubic'"):
        resample_to_template(_img(np.ones((2, 2, 2)), TEMPLATE_AFFINE), mode="cubic")
    with pytest.raises(TypeError, match="needs a monai.data.MetaTensor .* \\(got Tensor\\)"):
        resample_to_template(torch.ones(1, 2, 2, 2))
    with pytest.raises(
        ValueError, match=r"expected a channel-first \[C, X, Y, Z\] image, got shape \(2, 2, 2\)"
    ):
        resample_to_template(MetaTensor(torch.ones(2, 2, 2)))
    with pytest.raises(ValueError, match="mode must be one of"):
        ResampleToTemplated("image", mode="cubic")
    d = ResampleToTemplated(["image", "seg"], mode="nearest", allow_missing_keys=True)
    out = d({"image": _img(np.ones((2, 2, 2)), TEMPLATE_AFFINE), "id": 1})
    assert out["image"].shape == (1, *TEMPLATE_SHAPE) and out["id"] == 1


# Sources stored z-first (source axis 0 = world z), their voxel centres 0.3 mm off the template's, so the
# interpolated path runs: OVERHANG, 1 mm along z and 4 mm along x and y, overhangs the template on every side;
# SUBMM, 0.5 mm along z, too; INSIDE, 1 mm along z, lies inside the template grid, non-zero up to its edges.
OVERHANG = np.array([[0.0, 4, 0, -110.3], [0, 0, 4, -150.3], [1, 0, 0, -92.3], [0, 0, 0, 1]])
SUBMM = np.array([[0.0, 4, 0, -110.3], [0, 0, 4, -150.3], [0.5, 0, 0, -92.3], [0, 0, 0, 1]])
INSIDE = np.array([[0.0, 4, 0, -40.3], [0, 0, 4, -60.3], [1, 0, 0, -20.3], [0, 0, 0, 1]])
SOURCES = {
    "overhang": (OVERHANG, (221, 56, 65)),
    "submm": (SUBMM, (441, 56, 65)),
    "inside": (INSIDE, (60, 20, 25)),
}


def _reference(data: np.ndarray, affine: np.ndarray, mode: str, sigma: np.ndarray) -> np.ndarray:
    """The interpolated path's definition on the whole (uncropped) source with scipy: Gaussian pre-filter
    (0 outside the image), trilinear (or nearest) sampling at every template voxel centre with 0 beyond the
    image's edges, background where the source's non-zero mask interpolates below 0.5."""
    vox = np.linalg.inv(affine) @ TEMPLATE_AFFINE
    pos = vox[:3, :3] @ np.indices(TEMPLATE_SHAPE).reshape(3, -1) + vox[:3, 3:4]
    if mode == "nearest":
        return ndimage.map_coordinates(data, pos, order=0, mode="grid-constant").reshape(TEMPLATE_SHAPE)
    src = ndimage.gaussian_filter(data, sigma, mode="constant", truncate=3.0) if np.any(sigma > 0) else data
    out = ndimage.map_coordinates(src, pos, order=1, mode="grid-constant")
    support = ndimage.map_coordinates((data != 0).astype(np.float32), pos, order=1, mode="grid-constant")
    return np.where(support >= 0.5, out, 0.0).reshape(TEMPLATE_SHAPE)


@pytest.mark.parametrize(
    "source,mode,anti_alias",
    [
        ("overhang", "bilinear", True),
        ("overhang", "bilinear", False),
        ("overhang", "nearest", True),
        ("submm", "bilinear", True),
        ("inside", "bilinear", True),
        ("inside", "nearest", True),
    ],
)
def test_interpolated_path_equals_its_definition_on_the_uncropped_source(
    source: str, mode: str, anti_alias: bool
) -> None:
    """The crop to the template's reach (plus the filter's margin) changes nothing, also at the template's
    edges and for sub-millimetre voxels; the pre-filter runs along the fine source axis only, only for
    bilinear with anti_alias, and sees 0 beyond the image's edges."""
    affine, shape = SOURCES[source]
    data = np.random.default_rng(0).uniform(1.0, 11.0, shape).astype(np.float32)
    sigma = spatial._anti_alias_sigma(affine) if (anti_alias and mode == "bilinear") else np.zeros(3)
    out = resample_to_template(_img(data, affine), mode=mode, anti_alias=anti_alias)
    assert out.meta["resample_path"] == "interpolated"
    expected = _reference(data, affine, mode, sigma)
    assert np.count_nonzero(expected) > 10_000
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=2e-3 if mode == "bilinear" else 0)


def test_a_source_two_voxels_thick_is_interpolated_and_one_far_away_on_either_side_is_blank() -> None:
    """Two source voxels along an axis are enough to interpolate between; an image 1 m off the template
    grid, on the positive or the negative side, gives a blank image."""
    thin = np.ones((2, 20, 25), np.float32)
    out = resample_to_template(_img(thin, INSIDE))  # z from -20.3 to -19.3 mm: the template plane z = -20
    assert out.meta["resample_path"] == "interpolated" and float(out.sum()) > 0
    for side in (1000.0, -1000.0):
        far = INSIDE.copy()
        far[:3, 3] += side
        assert float(resample_to_template(_img(np.ones((60, 20, 25)), far)).abs().sum()) == 0.0


def test_dict_transform_passes_mode_and_anti_alias_on_and_refuses_a_missing_key() -> None:
    """Defaults: bilinear with anti-aliasing, a missing key is an error; the options reach every key."""
    data = np.random.default_rng(1).uniform(1.0, 11.0, SOURCES["inside"][1]).astype(np.float32)
    img = _img(data, INSIDE)
    for kwargs in ({}, {"anti_alias": False}, {"mode": "nearest"}):
        out = ResampleToTemplated("image", **kwargs)({"image": img})["image"]
        torch.testing.assert_close(out, resample_to_template(img, **kwargs), rtol=0, atol=0)
    with pytest.raises(KeyError):
        ResampleToTemplated("seg")({"image": img})


def test_anti_alias_sigma_reads_each_source_axis_from_its_affine_column() -> None:
    """A permuted anisotropic affine: the voxel size of source axis p is the norm of column p, not row p."""
    np.testing.assert_allclose(spatial._anti_alias_sigma(OVERHANG), [np.sqrt(3) / 2, 0.0, 0.0])


def test_exact_index_map_passes_its_tolerance_on() -> None:
    shifted = TEMPLATE_AFFINE.copy()
    shifted[0, 3] += 2e-4 * 2  # 2e-4 voxel off the lattice
    assert exact_index_map(shifted) is None
    assert exact_index_map(shifted, tol=3e-4) == [(0, 1, 0), (1, 1, 0), (2, 1, 0)]
