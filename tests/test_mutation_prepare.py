"""Fast tests of the prepare QC: registration flags (prepare/registration.py, with the optimiser
stubbed) and the QC pictures and overview page (prepare/qc.py).

tests/test_prepare.py runs real registrations (minutes); these tests check the rules a researcher
reads in the prepare manifest and qc.html in about a second, so that mutation testing
(scripts/mutation.sh) can select them (docs/testing.md).
"""

from __future__ import annotations

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from mri_slice_transfer.prepare import registration as reg  # noqa: E402
from mri_slice_transfer.prepare.qc import qc_png, write_overview  # noqa: E402

# --- registration flags -------------------------------------------------------------------------


class _NoOptimiser:
    """Stands in for the SimpleITK registration method of the start-rotation search."""

    def __init__(self, *args) -> None:
        self.turns = []

    def SetMovingInitialTransform(self, turn) -> None:  # noqa: N802 - SimpleITK's spelling
        self.turns.append(turn)

    def SetInitialTransform(self, tx, inPlace: bool = True) -> None:  # noqa: N802, N803
        pass

    def Execute(self, fixed, moving) -> None:  # noqa: N802
        pass


def _moving() -> sitk.Image:
    img = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 1, (30, 36, 30)).astype(np.float32))
    img.SetSpacing((3.0, 3.0, 3.0))
    return img


def _register(monkeypatch, scales=(1.0, 1.0, 1.0), first: float = 0.9, retry: float | None = None):
    """register_to_template with the optimiser stubbed: the first result correlates ``first``, the one
    from the best start rotation ``retry`` (its matrix is scaled by 1.01 to tell them apart)."""
    calls = []

    def fake_register(fixed, small, start, dof, turn=None):
        calls.append(turn is not None)
        m = np.diag(scales) * (1.01 if turn is not None else 1.0)
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(tuple(m.ravel()))
        return affine, -0.5 if turn is None else -0.6

    def fake_correlation(small, transform) -> float:
        matrix = np.array(transform.GetMatrix()).reshape(3, 3)
        return first if np.isclose(matrix[0, 0], scales[0]) else retry

    monkeypatch.setattr(reg, "_register", fake_register)
    monkeypatch.setattr(reg, "_correlation", fake_correlation)
    monkeypatch.setattr(reg, "_method", _NoOptimiser)
    return reg.register_to_template(_moving(), dof=9), calls


@pytest.mark.parametrize(
    "scales,flagged",
    [
        ((1.0, 1.0, 1.4), True),  # one axis too large is enough
        ((0.7, 1.0, 1.0), True),  # one axis too small is enough
        ((0.75, 1.0, 1.35), False),  # the bounds themselves are plausible
        ((0.76, 1.2, 1.34), False),
    ],
)
def test_qc_flags_a_scale_outside_0_75_1_35_on_any_axis(monkeypatch, scales, flagged: bool) -> None:
    """The per-axis scales are the transform's singular values; one implausible axis flags the scan."""
    result, _ = _register(monkeypatch, scales)
    assert sorted(result.scales) == pytest.approx(sorted(scales))
    assert result.flagged is flagged and result.metric == -0.5 and result.dof == 9
    if flagged:
        assert result.flags == [
            f"implausible scaling {', '.join(f'{s:.2f}' for s in result.scales)}; check the QC image"
        ]


def test_qc_keeps_a_good_first_registration_without_trying_start_rotations(monkeypatch) -> None:
    """A correlation of exactly 0.65 is good enough: no retry, no flag."""
    result, calls = _register(monkeypatch, first=0.65)
    assert calls == [False] and result.correlation == 0.65 and result.flags == []


def test_qc_retries_from_start_rotations_and_keeps_the_better_registration(monkeypatch) -> None:
    """A poor first registration (0.5) is redone from the best start rotation; a better retry replaces it."""
    result, calls = _register(monkeypatch, first=0.5, retry=0.8)
    assert calls == [False, True]
    assert result.correlation == 0.8 and result.metric == -0.6 and result.flags == []
    assert np.diag(np.array(result.transform.GetMatrix()).reshape(3, 3)) == pytest.approx([1.01] * 3)


def test_qc_flags_a_poor_match_that_the_retry_does_not_improve(monkeypatch) -> None:
    """Retry worse (0.4) than the first result (0.5): the first is kept and flagged with its correlation."""
    result, calls = _register(monkeypatch, first=0.5, retry=0.4)
    assert calls == [False, True] and result.correlation == 0.5 and result.metric == -0.5
    assert result.flags == ["poor match with the template (correlation 0.50 < 0.65); check the QC image"]
    nan, _ = _register(monkeypatch, first=float("nan"), retry=float("nan"))
    assert nan.flagged and "correlation nan < 0.65" in nan.flags[0]  # NaN is poor, not good


def test_start_rotations_are_45_to_180_degrees_about_each_axis() -> None:
    """15 start rotations: +-45, +-90 and 180 degrees about x, y and z."""
    rotations = reg._rotations()
    degrees = [45, -45, 90, -90, 180]
    assert [axis for axis, _ in rotations] == [tuple(a) for a in np.eye(3).tolist() for _ in range(5)]
    assert [round(float(np.rad2deg(angle))) for _, angle in rotations] == degrees * 3


def test_registration_refuses_unknown_degrees_of_freedom() -> None:
    with pytest.raises(ValueError, match=r"dof must be one of \(6, 9, 12\), not 7"):
        reg.register_to_template(_moving(), dof=7)


def _affine(matrix, translation, center) -> sitk.AffineTransform:
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(np.asarray(matrix, float).ravel()))
    tx.SetTranslation(tuple(translation))
    tx.SetCenter(tuple(center))
    return tx


def test_composed_transform_maps_points_as_the_two_in_turn() -> None:
    """_compose(outer, inner)(x) == outer(inner(x)) with centres, rotations and scales."""
    rotation = sitk.VersorRigid3DTransform()
    rotation.SetCenter((10.0, -4.0, 7.0))
    rotation.SetRotation((0.0, 0.0, 1.0), 0.7)
    rotation.SetTranslation((1.0, 2.0, 3.0))
    inner = _affine([[1.1, 0.1, 0], [0, 0.9, 0.2], [0, 0, 1.2]], (5.0, -3.0, 2.0), (1.0, 2.0, 3.0))
    composed = reg._compose(rotation, inner)
    alone = reg._compose(None, rotation)
    for x in [(0.0, 0.0, 0.0), (30.0, -20.0, 15.0), (-7.0, 11.0, 40.0)]:
        assert composed.TransformPoint(x) == pytest.approx(rotation.TransformPoint(inner.TransformPoint(x)))
        assert alone.TransformPoint(x) == pytest.approx(rotation.TransformPoint(x))


def test_ras_matrix_of_a_transform_maps_ras_points_as_the_transform_maps_lps_points() -> None:
    """The manifest's 4x4 matrix: template RAS mm -> scan RAS mm (LPS with x and y negated)."""
    tx = _affine([[0.9, 0.2, 0], [-0.1, 1.1, 0.05], [0, 0.1, 1.0]], (3.0, -6.0, 9.0), (12.0, -8.0, 5.0))
    ras = reg.transform_to_ras_matrix(tx)
    assert ras[3].tolist() == [0.0, 0.0, 0.0, 1.0]
    flip = np.array([-1.0, -1.0, 1.0])
    for lps in [(0.0, 0.0, 0.0), (20.0, -30.0, 10.0), (-5.0, 15.0, -25.0)]:
        expected = np.array(tx.TransformPoint(lps)) * flip
        assert ras[:3, :3] @ (np.array(lps) * flip) + ras[:3, 3] == pytest.approx(expected)


def test_correlation_with_the_template_is_1_for_the_template_and_0_for_a_blank_scan() -> None:
    """QC correlation: the template T1 against itself is 1; a constant scan gives 0, not NaN."""
    t1, _, _ = reg.template_images()
    identity = sitk.AffineTransform(3)
    assert reg._correlation(t1, identity) == pytest.approx(1.0)
    assert reg._correlation(t1 * 0 + 3.0, identity) == 0.0
    shifted = sitk.AffineTransform(3)
    shifted.SetTranslation((8.0, 0.0, 0.0))
    assert 0.0 < reg._correlation(t1, shifted) < 0.99


def test_correlation_is_over_the_brain_mask_with_zero_outside_the_scan() -> None:
    """A scan covering only part of the template: outside its field of view it counts as 0, and only
    voxels of the template brain mask count (computed here directly on the shared 2 mm grid)."""
    t1, mask, _ = reg.template_images()
    part = sitk.RegionOfInterest(t1, [60, 70, 50], [15, 20, 25])  # same grid, smaller field of view
    a, m = sitk.GetArrayFromImage(t1), sitk.GetArrayFromImage(mask) > 0
    cover = np.zeros(a.shape, bool)
    cover[25:75, 20:90, 15:75] = True  # (z, y, x) array order
    expected = np.corrcoef(np.where(cover, a, 0.0)[m], a[m])[0, 1]
    assert reg._correlation(part, sitk.AffineTransform(3)) == pytest.approx(expected, rel=1e-5)
    coarse = sitk.BinShrink(t1, [2, 2, 2])  # 4 mm voxels, the same physical space
    assert reg._correlation(coarse, sitk.AffineTransform(3)) > 0.8  # a scan on its own grid


# --- QC pictures and qc.html --------------------------------------------------------------------


def test_qc_png_outline_is_red_for_a_flagged_scan_and_green_otherwise(tmp_path) -> None:
    """The template outline is drawn in red on a flagged scan and in green on a good one."""
    import matplotlib.image as mpimg

    data = np.zeros((20, 24, 20), np.float32)
    mask = np.zeros(data.shape, bool)
    mask[5:15, 6:18, 5:15] = True
    data[4:16, 5:19, 4:16] = 100.0
    colours = {}
    for flagged in (False, True):
        path = qc_png(data, mask, tmp_path / f"{flagged}.png", title="s1", flagged=flagged)
        rgb = mpimg.imread(path)[..., :3]
        red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.4) & (rgb[..., 2] < 0.4)
        green = (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.4) & (rgb[..., 2] < 0.6)
        colours[flagged] = (int(red.sum()), int(green.sum()))
    assert colours[True][0] > 50 and colours[True][1] == 0
    assert colours[False][1] > 50 and colours[False][0] == 0
    assert not list(tmp_path.glob("*.tmp*"))
    rgb = mpimg.imread(qc_png(data, mask, tmp_path / "default.png"))[..., :3]  # not flagged by default
    assert not ((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.4) & (rgb[..., 2] < 0.4)).any()


def test_qc_png_views_cut_through_the_mask_centre_and_scale_to_the_brain(tmp_path, monkeypatch) -> None:
    """Sagittal, coronal (left on the left) and axial planes through the centre of the mask's bounding
    box; grey levels from 0 to the 99.5th percentile inside the mask."""
    import matplotlib.axes

    shown = []
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, img, **kw: shown.append((img, kw)))
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 10, (12, 16, 14)).astype(np.float32)
    data[0, 0, 0] = 1000.0  # outside the mask: does not set the grey scale
    mask = np.zeros(data.shape, bool)
    mask[4:9, 10:15, 2:13] = True  # bounding-box centre (6, 12, 7)
    qc_png(data, mask, tmp_path / "q.png")
    expected = [data[6, :, :].T, data[::-1, 12, :].T, data[::-1, :, 7].T]
    assert len(shown) == 3
    for (img, kw), want in zip(shown, expected, strict=True):
        np.testing.assert_array_equal(img, want)
        assert kw["vmin"] == 0 and kw["vmax"] == pytest.approx(np.percentile(data[mask], 99.5))


def test_qc_overview_lists_errors_then_flagged_then_ok_and_counts_them(tmp_path) -> None:
    """qc.html: error cards first, then flagged, ok, skipped (with their earlier verdict); a summary line."""
    (tmp_path / "qc").mkdir()
    png = tmp_path / "qc" / "b.png"
    png.write_bytes(b"png")
    rows = [
        {"input": "/d/a.nii", "status": "ok", "metric": 0.8123, "qc": str(png)},
        {"input": "/d/b.nii", "status": "flagged", "metric": float("nan"), "note": "implausible <scaling>"},
        {"input": "/d/c.nii", "status": "error", "error": "not 3D", "qc": str(tmp_path / "missing.png")},
        {"input": "/d/d.nii", "status": "skipped", "quality": "flagged"},
        {"input": "/d/e.nii", "status": "skipped"},
        {"input": "/d/0.nii", "status": None},
        {"input": "/d/f.nii", "status": "error", "quality": "ok", "error": "bad"},  # quality: skipped only
        {"input": "/d/g.nii", "status": "custom"},  # an unknown status goes last
    ]
    page = write_overview(rows, tmp_path / "out" / "qc.html").read_text(encoding="utf-8")
    order = [page.index(f"{name}.nii") for name in "cfbd0aeg"]
    assert order == sorted(order)  # error, flagged (b before d), ok (0 before a), skipped, others
    assert "<h1>Prepared scans: 2 error, 2 flagged, 2 ok, 1 skipped, 1 custom</h1>" in page
    assert page.startswith(
        "<!doctype html><meta charset=utf-8><title>prepare QC</title><style>"
        "body{font-family:sans-serif;background:#111;color:#ddd}"
        ".card{display:inline-block;vertical-align:top;border:3px solid;margin:4px;padding:4px;width:560px}"
        ".card img{width:100%}.msg{font-size:12px;white-space:pre-wrap}</style>"
    )
    assert (
        "</h1><p>Each image shows the prepared scan with the template brain outline; it should follow the "
        "brain's edge. Errors and flagged registrations come first.</p><div class" in page
    )
    assert page.count('</div></div>\n<div class="card"') == len(rows) - 1  # one card per line
    assert (
        '<b style="color:#2a2">skipped</b> e.nii <br><div class=msg></div>' in page
    )  # no metric, image, text
    assert (
        '<b style="color:#c00">error</b> c.nii' in page and '<b style="color:#d60">flagged</b> d.nii' in page
    )
    assert '<b style="color:#2a2">ok</b> a.nii metric 0.812<br><a href="../qc/b.png">' in page
    assert "implausible &lt;scaling&gt;" in page and "metric nan" not in page
    assert "<div class=msg>not 3D</div>" in page and "missing.png" not in page


def test_qc_png_outline_is_drawn_on_the_voxels_it_outlines_in_every_view(tmp_path, monkeypatch) -> None:
    """The brain-mask outline is cut and flipped like the image: with a mask made from the image itself,
    each view's outline array equals its image thresholded (a mirrored or strided outline would show a
    registration error that is not there, or hide one that is)."""
    import matplotlib.axes

    shown, outlined = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, img, **kw: shown.append(img))
    monkeypatch.setattr(matplotlib.axes.Axes, "contour", lambda ax, m, **kw: outlined.append(m))
    data = np.zeros((14, 16, 12), np.float32)
    data[2:7, 3:13, 2:10] = 5.0  # a lopsided "brain": only on the low-x side, so a flip moves it
    data[2:4, 3:6, 2:4] = 9.0
    mask = data > 1.0
    qc_png(data, mask, tmp_path / "q.png")
    assert len(shown) == len(outlined) == 3
    for img, m in zip(shown, outlined, strict=True):
        np.testing.assert_array_equal(m > 0.5, img > 1.0)
