"""Fast tests of the demo's synthetic anatomy (data/anatomy.py): how age, AD severity, sex, site and the
seeds set a subject's atrophy and a scan's nuisance, the shape of the MTL and ventricle regions and the
direction of their displacements, so that mutation testing of the module (scripts/mutation.sh) does not
need the minute-long cohort tests of tests/test_synthetic.py (docs/testing.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from mri_slice_transfer.data import anatomy as an
from mri_slice_transfer.data.anatomy import ScanParams, scan_acquisition, subject_anatomy
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE, load_template


def _p(**kw) -> ScanParams:
    base = dict(age=65.0, dx="CN", sex="M", site="site-A", subject_seed=7, scan_seed=11, severity=0.5)
    return ScanParams(**{**base, **kw})


def test_ad_severity_adds_its_effect_sizes_to_a_cn_twin_and_cn_ignores_severity() -> None:
    """Same subject seed: AD with severity s adds s * K_*_AD to every atrophy term; CN has none."""
    cn, ad = subject_anatomy(_p()), subject_anatomy(_p(dx="AD"))
    assert ad.k_vent - cn.k_vent == pytest.approx(0.5 * an.K_V_AD)
    assert ad.k_mtl - cn.k_mtl == pytest.approx(0.5 * an.K_H_AD)
    assert ad.d_mtl - cn.d_mtl == pytest.approx(0.5 * an.D_M_AD)
    assert ad.d_cortex - cn.d_cortex == pytest.approx(0.5 * an.D_G_AD)
    cn3 = subject_anatomy(_p(severity=3.0))
    assert (cn3.k_vent, cn3.k_mtl, cn3.d_mtl, cn3.d_cortex) == (cn.k_vent, cn.k_mtl, cn.d_mtl, cn.d_cortex)
    assert ad.head_scale == cn.head_scale and np.array_equal(ad.random_field, cn.random_field)


def test_ten_years_add_the_age_effects_and_extremes_are_clipped() -> None:
    young, old = subject_anatomy(_p(age=75.0)), subject_anatomy(_p(age=85.0))
    assert old.k_vent - young.k_vent == pytest.approx(an.K_V_AGE)
    assert old.k_mtl - young.k_mtl == pytest.approx(an.K_H_AGE)
    assert old.d_mtl - young.d_mtl == pytest.approx(an.D_M_AGE)
    assert old.d_cortex - young.d_cortex == pytest.approx(an.D_G_AGE)
    high = subject_anatomy(_p(age=300.0, dx="AD", severity=5.0))
    assert (high.k_vent, high.k_mtl, high.d_mtl, high.d_cortex) == (an.K_V_MAX, an.K_H_MAX, 1.0, 0.6)
    low = subject_anatomy(_p(age=-300.0))
    assert (low.k_vent, low.k_mtl, low.d_mtl, low.d_cortex) == (an.K_V_MIN, an.K_H_MIN, 0.0, 0.0)


def test_natural_variation_comes_from_the_subject_seed_only() -> None:
    """The subject seed sets head size, natural variation and the random warp; the scan seed does not."""
    a, b = subject_anatomy(_p()), subject_anatomy(_p(scan_seed=99))
    assert a.k_vent == b.k_vent and np.array_equal(a.random_field, b.random_field)
    other = subject_anatomy(_p(subject_seed=8))
    assert other.k_vent != a.k_vent and other.head_scale != a.head_scale
    assert a.random_field.shape == (3, *an.RANDOM_FIELD_GRID) and a.random_field.dtype == np.float32
    fields = np.stack([subject_anatomy(_p(subject_seed=s)).random_field for s in range(20)])
    assert fields.std() == pytest.approx(an.RANDOM_FIELD_SD, rel=0.05)
    # natural variation around the age-65 CN means, with their sds (20 subjects)
    many = [subject_anatomy(_p(subject_seed=s)) for s in range(200)]
    assert np.mean([m.k_vent for m in many]) == pytest.approx(an.K_V0, abs=0.2)
    assert np.std([m.k_vent for m in many]) == pytest.approx(an.K_V_SD, rel=0.15)
    assert np.mean([m.d_cortex for m in many]) == pytest.approx(an.D_G0, abs=0.02)


def test_head_size_depends_on_sex_around_its_mean() -> None:
    m, f, x = (subject_anatomy(_p(sex=s)).head_scale for s in ("M", "F", "X"))
    assert m / f == pytest.approx(1.035 / 0.965) and m / x == pytest.approx(1.035)
    heads = [subject_anatomy(_p(subject_seed=s, sex="X")).head_scale for s in range(300)]
    assert np.std(np.log(heads)) == pytest.approx(an.HEAD_SCALE_SD, rel=0.15)


def test_acquisition_follows_the_site_and_the_scan_seed() -> None:
    """Site sets contrast, intensity scale and noise (+-10 %, +-20 %); bias waves of 200-400 mm."""
    accs = [scan_acquisition(_p(scan_seed=s, site="site-B")) for s in range(100)]
    gamma, scale, noise = an.SITES["site-B"]
    assert all(0.9 * scale <= a.scale <= 1.1 * scale for a in accs)
    assert all(0.8 * noise <= a.noise <= 1.2 * noise for a in accs)
    assert np.mean([np.log(a.gamma / gamma) for a in accs]) == pytest.approx(0.0, abs=0.02)
    assert np.std([np.log(a.gamma / gamma) for a in accs]) == pytest.approx(0.06, rel=0.2)
    wavelengths = np.concatenate([1.0 / np.linalg.norm(a.bias_freq, axis=1) for a in accs])
    assert wavelengths.min() >= 200.0 and wavelengths.max() <= 400.0 and wavelengths.shape == (300,)
    phases = np.concatenate([a.bias_phase for a in accs])
    assert phases.min() >= 0 and phases.max() < 2 * np.pi and phases.max() > 6.0
    amps = np.concatenate([a.bias_amp for a in accs])
    assert amps.std() == pytest.approx(an.BIAS_AMP_SD, rel=0.15) and abs(amps.mean()) < 0.02
    same = scan_acquisition(_p(scan_seed=0, site="site-B", subject_seed=123))
    assert same.scale == accs[0].scale and same.gamma == accs[0].gamma  # the subject seed plays no part


def test_ellipsoid_is_one_inside_and_a_quarter_at_its_radii_along_its_axes() -> None:
    """(1.5 - q)^2 clipped: 1 for q <= 0.5, 0.25 on the surface q = 1, 0 beyond q = 1.5."""
    axis = np.array([0.0, 1.0, -0.45]) / np.linalg.norm([0.0, 1.0, -0.45])
    centre = np.array([10.0, -20.0, 5.0])
    pts = [centre, centre + [6.0, 0, 0], centre + 17.0 * axis, centre + 30.0 * axis]
    e2 = np.cross([1.0, 0, 0], axis)
    pts.append(centre + 5.0 * e2 / np.linalg.norm(e2))
    xyz = np.array(pts, np.float32).T.reshape(3, len(pts), 1, 1)
    out = an._ellipsoid(xyz, centre, (6.0, 17.0, 5.0), axis=(0.0, 1.0, -0.45)).ravel()
    assert out == pytest.approx([1.0, 0.25, 0.25, 0.0, 0.25], abs=1e-5)


def test_mtl_region_covers_hippocampus_amygdala_and_entorhinal_on_both_sides() -> None:
    pts = [(s * x, y, z) for s in (-1, 1) for x, y, z in [(27, -22, -12), (23, -4, -18), (24, -10, -30)]]
    pts += [(0.0, -18.0, 18.0), (27.0, 40.0, -12.0)]  # brain centre, frontal lobe
    xyz = np.array(pts, np.float32).T.reshape(3, len(pts), 1, 1)
    assert an.mtl_region(xyz).ravel().tolist() == [1.0] * 6 + [0.0, 0.0]


def _world_centroid(mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(0)
    return (TEMPLATE_AFFINE @ np.append(ijk, 1.0))[:3]


def test_displacements_pull_from_the_ventricles_and_mtl_so_both_change_size() -> None:
    """The unit bases point (in world mm) towards their region; the subject's field adds k_vent of one,
    minus k_mtl of the other: ventricles expand, the MTL contracts."""
    g_vent, g_mtl = an.displacement_bases()
    t = load_template()
    xyz = an._world(t.shape, t.affine)
    ventricles = an.ventricle_mask(t)
    for g, region in ((g_vent, ventricles), (g_mtl, an.mtl_region(xyz) > 0.5)):
        assert g.shape == (3, *TEMPLATE_SHAPE) and np.linalg.norm(g, axis=0).max() == pytest.approx(1.0)
        strong = np.linalg.norm(g, axis=0) > 0.3
        for side in (-1, 1):  # each hemisphere towards its own part of the region
            part = strong & ((xyz[0] * side) > 0)
            target = _world_centroid(region & ((xyz[0] * side) > 0))
            towards = (target.reshape(3, 1) - xyz[:, part]) * g[:, part]
            assert (towards.sum(0) > 0).mean() > 0.8
    assert 5_000 < ventricles.sum() * 8 < 60_000  # mm^3: lateral + third ventricles only
    lo, hi = np.argwhere(ventricles).min(0), np.argwhere(ventricles).max(0)
    world_lo, world_hi = (TEMPLATE_AFFINE @ np.append(lo, 1))[:3], (TEMPLATE_AFFINE @ np.append(hi, 1))[:3]
    assert np.all(np.abs([world_lo[0], world_hi[0]]) < 30) and world_lo[2] > -5 - 2 and world_hi[2] < 35
    anat = subject_anatomy(_p())
    anat = an.Anatomy(2.0, 3.0, 1.5, 0.0, 0.0, np.zeros_like(anat.random_field))
    np.testing.assert_allclose(an.displacement_field(anat), 3.0 * g_vent - 1.5 * g_mtl, atol=1e-6)


def test_random_warp_is_a_smooth_upsampling_of_the_control_points() -> None:
    """A constant control grid gives that constant everywhere; the field follows each control point."""
    up = an._upsample_field(np.full(an.RANDOM_FIELD_GRID, 2.5, np.float32), TEMPLATE_SHAPE)
    assert up.shape == TEMPLATE_SHAPE and np.allclose(up, 2.5, atol=1e-5)
    coarse = np.zeros(an.RANDOM_FIELD_GRID, np.float32)
    coarse[0, 0, 0] = 1.0
    up = an._upsample_field(coarse, TEMPLATE_SHAPE)
    assert up[0, 0, 0] > 0.5 and abs(up[-1, -1, -1]) < 1e-3
    anat = subject_anatomy(_p())
    zero = an.Anatomy(1.0, 0.0, 0.0, 0.0, 0.0, anat.random_field)
    u = an.displacement_field(zero)
    for c in range(3):
        np.testing.assert_allclose(u[c], an._upsample_field(anat.random_field[c], TEMPLATE_SHAPE), atol=1e-6)


def test_head_size_scales_about_the_brain_centre_and_only_brain_points_are_kept() -> None:
    """A head 10 % larger shows the template at c + (x - c) / 1.1; points far from the brain are dropped."""
    c = an.BRAIN_CENTRE
    far = [[0, 0, 500.0], [0, 200.0, 0]]
    points = np.array([c + [11.0, 0, 0], c + [0, -22.0, 0], c + [0, 0, 33.0], *far]).T
    anat = an.Anatomy(1.1, 0.0, 0.0, 0.0, 0.0, np.zeros((3, *an.RANDOM_FIELD_GRID), np.float32))
    keep, src = an.source_points(points, anat, np.zeros((3, *TEMPLATE_SHAPE), np.float32))
    assert keep.tolist() == [0, 1, 2]
    np.testing.assert_allclose(src.T, [c + [10.0, 0, 0], c + [0, -20.0, 0], c + [0, 0, 30.0]])
    u = np.zeros((3, *TEMPLATE_SHAPE), np.float32)
    u[1] = 4.0
    _, moved = an.source_points(points, anat, u)
    np.testing.assert_allclose(moved - src, [[0.0] * 3, [4.0] * 3, [0.0] * 3], atol=1e-6)


def test_rendered_scan_is_zero_outside_the_brain_and_scaled_by_the_site() -> None:
    """Background exactly 0; brain intensities in scanner units of the site; same parameters, same scan."""
    t = load_template()
    xyz = an._world(t.shape, t.affine).reshape(3, -1)[:, ::97]
    inside = t.mask.reshape(-1)[::97]
    a = an.render(_p(site="site-B"), xyz)
    far = np.linalg.norm(xyz - an.BRAIN_CENTRE.reshape(3, 1), axis=0) > 110  # well outside any head
    assert far.sum() > 1000 and np.all(a[far] == 0) and np.mean(a[inside] > 0) > 0.95
    np.testing.assert_array_equal(an.render(_p(site="site-B"), xyz), a)
    c = an.render(_p(site="site-C"), xyz)
    ratio = np.median(c[inside & (a > 0) & (c > 0)]) / np.median(a[inside & (a > 0) & (c > 0)])
    assert 1.3 < ratio < 2.4  # 1300 / 700 with +-10 % scan scale and a different contrast
    other_noise = an.render(_p(site="site-B"), xyz, rng_stream=4)
    assert not np.array_equal(other_noise, a) and np.array_equal(other_noise == 0, a == 0)


def _two_mm_weights(n: int) -> np.ndarray:
    """(n, n // 2 + 1) linear weights of a 1 mm axis whose even voxels sit on consecutive 2 mm voxels."""
    w = np.zeros((n, n // 2 + 1))
    for a in range(n):
        w[a, a // 2] += 0.5 if a % 2 else 1.0
        if a % 2:
            w[a, a // 2 + 1] += 0.5
    return w


def test_one_mm_maps_carry_the_smooth_two_mm_factors_over_by_world_position() -> None:
    """On a 1 mm grid (raw-space scans) the thinning maps use the 2 mm "near CSF" and MTL factors
    interpolated linearly at each voxel's world position (the nearest edge value outside the 2 mm grid),
    with the same formulas as on the 2 mm grid: w_cortex = gm near (I_GM - I_CSF),
    w_mtl = clip(gm + wm / 2, 0, 1) mtl (I_GM - I_CSF)."""
    near2, mtl2 = an._smooth_factors_2mm()
    i0 = np.array([32, 52, 30])  # 2 mm voxel at world (26, -22, -12): the left hippocampus' edge
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # x flipped like the template: 1 mm voxel (2, 0, 0) = 2 mm i0 + 1
    affine[:3, 3] = (TEMPLATE_AFFINE @ np.append(i0, 1.0))[:3]
    rng = np.random.default_rng(0)
    shape = (5, 5, 5)
    gm, wm = rng.uniform(0, 1, shape).astype(np.float32), rng.uniform(0, 1, shape).astype(np.float32)
    tpl = an.Template(rng.uniform(0, 1, shape), gm, wm, rng.uniform(size=shape) > 0.5, affine)
    maps = an._static_maps(tpl)
    w = _two_mm_weights(5)
    block = tuple(slice(i, i + 3) for i in i0)
    near, mtl = (np.einsum("ia,jb,kc,abc->ijk", w, w, w, f[block]) for f in (near2, mtl2))
    assert mtl.max() - mtl.min() > 0.1 and near.max() - near.min() > 0.1  # both vary here
    scale = an.I_GM - an.I_CSF
    np.testing.assert_allclose(maps.w_cortex, gm * near * scale, atol=1e-6)
    np.testing.assert_allclose(maps.w_mtl, np.clip(gm + 0.5 * wm, 0, 1) * mtl * scale, atol=1e-6)
    assert (gm + 0.5 * wm > 1).any() and maps.w_mtl.dtype == maps.w_cortex.dtype == np.float32
    assert maps.t1.dtype == np.float32 and np.array_equal(maps.t1, tpl.t1.astype(np.float32))
    assert maps.mask.dtype == np.float32 and np.array_equal(maps.mask, tpl.mask.astype(np.float32))
    assert maps.affine is affine
    # a 1 mm voxel beyond the 2 mm grid's edge (x = 95 mm, past its 90 mm) takes the edge value
    out = affine.copy()
    out[:3, 3] = (95.0, -22.0, -12.0)
    one = an._static_maps(an.Template(*(a[:1, :1, :1] for a in (tpl.t1, gm, wm, tpl.mask)), out))
    assert near2[0, 52, 30] > 0.5
    np.testing.assert_allclose(one.w_cortex.ravel(), gm[0, 0, 0] * near2[0, 52, 30] * scale, atol=1e-6)


def test_two_mm_maps_use_the_smooth_factors_as_they_are() -> None:
    """On the template grid itself no interpolation: the factors of _smooth_factors_2mm, voxel for voxel."""
    t = load_template()
    near, mtl = an._smooth_factors_2mm()
    maps = an._static_maps(t)
    scale = an.I_GM - an.I_CSF
    np.testing.assert_allclose(maps.w_cortex, t.gm * near * scale, atol=1e-6)
    np.testing.assert_allclose(maps.w_mtl, np.clip(t.gm + 0.5 * t.wm, 0, 1) * mtl * scale, atol=1e-6)
    assert maps.mask.sum() == t.mask.sum() and maps.affine is t.affine


def test_an_ad_twin_renders_darker_in_the_mtl_than_its_cn_twin() -> None:
    """Same seeds: over the MTL region the AD scan is darker than its CN twin (grey matter gives way to CSF
    and the region contracts), by more than the noise."""
    t = load_template()
    xyz = an._world(t.shape, t.affine)
    region = an.mtl_region(xyz) > 0.5
    pts = xyz[:, region].astype(float)
    cn, ad = (an.render(_p(dx=dx, severity=1.0), pts) for dx in ("CN", "AD"))
    assert region.sum() > 500 and np.mean(ad) < 0.95 * np.mean(cn), (
        np.mean(cn),
        np.mean(ad),
    )  # 0.89 measured


def test_ventricle_mask_is_the_large_csf_components_of_the_central_box_down_to_its_lower_edge() -> None:
    """Lateral + third ventricles: the two connected CSF components over 500 mm^3 inside the box |x| < 30,
    -45 < y < 30, -5 < z < 35 mm (the small ones, e.g. of the choroid fissures, left out); they reach the
    box's lower edge (z = -4 mm on the 2 mm grid)."""
    from scipy import ndimage

    mask = an.ventricle_mask(load_template())
    labels, n = ndimage.label(mask)
    sizes = sorted(ndimage.sum(mask, labels, range(1, n + 1)) * 8.0)
    assert n == 2 and sizes == [621 * 8.0, 1827 * 8.0]
    z = (TEMPLATE_AFFINE @ np.c_[np.argwhere(mask), np.ones(mask.sum())].T)[2]
    assert (z.min(), z.max()) == (-4.0, 28.0)


def _render_by_hand(p: ScanParams, points: np.ndarray) -> np.ndarray:
    """The documented pipeline on the 2 mm maps: source point of each subject point, brain where the template
    mask interpolates above 0.5, T1 minus the cortical and MTL thinning (clipped at 0), sampled trilinearly,
    then ``(value ** gamma) * bias``, Rician noise of stream 3 and the site's scale."""
    from scipy import ndimage

    anat, acq, maps = subject_anatomy(p), scan_acquisition(p), an.static_maps(2)
    keep, src = an.source_points(points, anat, an.displacement_field(anat))
    ijk = (np.linalg.inv(maps.affine) @ np.vstack([src, np.ones(src.shape[1])]))[:3]
    inside = ndimage.map_coordinates(maps.mask, ijk, order=1) > 0.5
    keep, ijk = keep[inside], ijk[:, inside]
    thinned = maps.t1 - anat.d_cortex * maps.w_cortex - anat.d_mtl * maps.w_mtl
    value = np.clip(ndimage.map_coordinates(thinned, ijk, order=1), 0.0, None)
    bias = np.exp(
        acq.bias_amp @ np.cos(2 * np.pi * acq.bias_freq @ points[:, keep] + acq.bias_phase[:, None])
    )
    value = (value**acq.gamma * bias).astype(np.float32)
    rng = np.random.default_rng([p.scan_seed, 3])
    n1, n2 = (rng.standard_normal(value.shape, dtype=np.float32) for _ in range(2))
    out = np.zeros(points.shape[1], np.float32)
    out[keep] = np.sqrt((value + acq.noise * n1) ** 2 + (acq.noise * n2) ** 2) * acq.scale
    return out


def test_render_is_the_thinned_template_at_the_warped_source_with_contrast_bias_and_noise() -> None:
    """An extreme AD scan (maximal MTL and cortical loss; inside the brain mask the thinned T1 stays above
    0.13), rendered by default on the 2 mm maps, equals the pipeline written out."""
    p = _p(dx="AD", age=95.0, severity=3.0, site="site-C")
    anat = subject_anatomy(p)
    assert (anat.d_mtl, anat.d_cortex) == (1.0, 0.6)
    t = load_template()
    points = an._world(t.shape, t.affine).reshape(3, -1)[:, ::53].astype(np.float64)
    out = an.render(p, points)
    assert np.isfinite(out).all() and out.min() == 0.0
    np.testing.assert_allclose(out, _render_by_hand(p, points), rtol=1e-5, atol=1e-3)


def test_an_older_twin_has_a_darker_cortex() -> None:
    """Cortical grey matter gives way to CSF with age (sulci widen): at 90 the cortex is darker than at 50."""
    maps, t = an.static_maps(2), load_template()
    points = an._world(t.shape, t.affine)[:, maps.w_cortex > 0.15].astype(np.float64)
    young, old = (an.render(_p(age=age), points) for age in (50.0, 90.0))
    assert points.shape[1] > 10_000 and np.mean(old) < 0.97 * np.mean(young)  # 0.92 measured


def test_scan_params_are_written_as_a_plain_dict() -> None:
    assert _p().to_dict() == dict(
        age=65.0, dx="CN", sex="M", site="site-A", subject_seed=7, scan_seed=11, severity=0.5
    )


def test_mtl_region_has_the_documented_volume_position_and_orientation_on_each_side() -> None:
    """The three ellipsoids per hemisphere (hippocampus tilted up posteriorly, amygdala, entorhinal) pinned by
    their soft volume (mm^3), centroid (mm) and covariance (mm^2) on the template grid, mirrored left / right:
    a centre or radius moved by 1 mm, or the hippocampus' tilt changed, moves these."""
    t = load_template()
    xyz = an._world(t.shape, t.affine)
    region = an.mtl_region(xyz).astype(np.float64)
    assert an.mtl_region(xyz).dtype == np.float32
    for side in (-1, 1):
        w = (region * ((xyz[0] * side) > 0)).reshape(-1)
        centroid = xyz.reshape(3, -1) @ w / w.sum()
        d = xyz.reshape(3, -1) - centroid[:, None]
        cov = (d * w) @ d.T / w.sum()
        assert w.sum() * 8 == pytest.approx(4071.7, abs=0.5)
        np.testing.assert_allclose(centroid, [side * 25.219, -14.517, -18.423], atol=0.01)
        expected = [[11.152, -side * 13.731, side * 9.392], [-side * 13.731, 89.29, -46.187]]
        np.testing.assert_allclose(cov[:2], expected, atol=0.01)
        np.testing.assert_allclose(cov[2], [side * 9.392, -46.187, 68.268], atol=0.01)


def test_a_subject_is_drawn_from_stream_1_of_its_seed() -> None:
    """Six standard normals of ``default_rng([subject_seed, 1])`` (head size, ventricles, MTL, MTL grey
    matter, cortex, spare), then the random warp's control points: the demo cohort of a seed is fixed, and
    apart from the acquisition's stream 2 of the scan seed."""
    rng = np.random.default_rng([7, 1])
    z = rng.standard_normal(6)
    field = rng.standard_normal((3, *an.RANDOM_FIELD_GRID)) * an.RANDOM_FIELD_SD
    anat = subject_anatomy(_p(age=75.0))
    assert anat.head_scale == pytest.approx(1.035 * np.exp(an.HEAD_SCALE_SD * z[0]), rel=1e-12)
    assert anat.k_vent == pytest.approx(an.K_V0 + an.K_V_AGE + an.K_V_SD * z[1], rel=1e-12)
    assert anat.k_mtl == pytest.approx(an.K_H0 + an.K_H_AGE + an.K_H_SD * z[2], rel=1e-12)
    assert anat.d_mtl == pytest.approx(an.D_M0 + an.D_M_AGE + an.D_M_SD * z[3], rel=1e-12)
    assert anat.d_cortex == pytest.approx(an.D_G0 + an.D_G_AGE + an.D_G_SD * z[4], rel=1e-12)
    np.testing.assert_array_equal(anat.random_field, field.astype(np.float32))
