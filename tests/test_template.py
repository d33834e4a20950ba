import nibabel as nib
import numpy as np

from mri_slice_transfer import template


def test_template_grid_constants():
    assert template.TEMPLATE_SHAPE == (91, 109, 91)
    expected = np.array([[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)
    np.testing.assert_array_equal(template.TEMPLATE_AFFINE, expected)
    # voxel (45, 63, 36) is the world origin (anterior commissure) on the FSL grid
    np.testing.assert_allclose(template.TEMPLATE_AFFINE @ [45, 63, 36, 1], [0, 0, 0, 1])


def test_load_template_on_grid_and_cached():
    tpl = template.load_template()
    assert tpl.shape == template.TEMPLATE_SHAPE
    np.testing.assert_array_equal(tpl.affine, template.TEMPLATE_AFFINE)
    assert tpl.mask.dtype == bool
    brain_ml = tpl.mask.sum() * 8 / 1000
    assert 1200 < brain_ml < 2100, brain_ml  # ICBM152 2009a brain mask volume, ml
    # T1 is brain-extracted: zero outside the mask, brighter white matter than grey matter
    assert np.all(tpl.t1[~tpl.mask] == 0)
    assert tpl.t1[tpl.wm > 0.9].mean() > tpl.t1[tpl.gm > 0.9].mean()
    # the cached file is a NIfTI on the grid, with the MNI sform code
    img = nib.load(template.template_nifti("t1"))
    assert img.shape == template.TEMPLATE_SHAPE
    assert int(img.header["sform_code"]) == 4
    # the left hemisphere (world x < 0) sits at high i: the grid's first axis runs right -> left
    left = tpl.mask[60:].sum()
    right = tpl.mask[:31].sum()
    assert abs(left - right) / (left + right) < 0.05


def test_cache_dir_env_override(tmp_path, monkeypatch):
    from mri_slice_transfer.paths import cache_dir

    monkeypatch.setenv("MRI_SLICE_TRANSFER_CACHE", str(tmp_path / "c"))
    assert cache_dir("x") == tmp_path / "c" / "x"
    assert (tmp_path / "c" / "x").is_dir()
