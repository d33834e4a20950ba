"""Synthetic demo cohorts: determinism, subject-level splits, anatomical signal, raw-space transforms."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from mri_slice_transfer.cli import main
from mri_slice_transfer.data.anatomy import ScanParams, _world
from mri_slice_transfer.data.datalist import read_split_datalists
from mri_slice_transfer.data.synthetic import (
    datalist_csvs,
    generate_cohort,
    plan_cohort,
    site_summary,
    synthesize_scan,
)
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("task", ["adni_ad", "brain_age"])
def test_plan_split_is_subject_level_and_stratified(task):
    plan = plan_cohort(task, n=120, seed=3)
    assert len(plan) == 120
    assert plan["image"].is_unique
    per_subject = plan.groupby("subject_id")["split"].nunique()
    assert (per_subject == 1).all()  # repeated sessions stay in their subject's split
    n_sub = plan["subject_id"].nunique()
    assert 0.1 < (plan["session_id"] == "ses-2").sum() / n_sub < 0.3
    subjects = plan.drop_duplicates("subject_id")
    frac = subjects["split"].value_counts(normalize=True)
    assert (
        abs(frac["train"] - 0.6) < 0.05 and abs(frac["val"] - 0.2) < 0.05 and abs(frac["test"] - 0.2) < 0.05
    )
    if task == "adni_ad":
        assert abs((subjects["dx"] == "AD").mean() - 0.27) < 0.01
        ad_share = subjects.groupby("split")["dx"].apply(lambda d: (d == "AD").mean())
        assert ad_share.between(0.15, 0.4).all()  # stratified by diagnosis
        assert (
            subjects.loc[subjects.dx == "AD", "age"].mean() > subjects.loc[subjects.dx == "CN", "age"].mean()
        )
        assert subjects["age"].between(55, 90).all()
    else:
        assert (subjects["dx"] == "CN").all()
        assert subjects["age"].between(45, 82).all()
    second = plan[plan.session_id == "ses-2"].set_index("subject_id")["age"]
    first = plan[plan.session_id == "ses-1"].set_index("subject_id")["age"]
    assert (second > first.loc[second.index]).all()


@pytest.mark.parametrize("n", [60, 200])
def test_sites_are_balanced_by_diagnosis(n):
    for seed in range(5):
        subjects = plan_cohort("adni_ad", n=n, seed=seed).drop_duplicates("subject_id")
        ad_fraction = (subjects["dx"] == "AD").mean()
        for site, group in subjects.groupby("site"):
            balanced = ad_fraction * len(group)
            assert abs((group["dx"] == "AD").sum() - balanced) <= 1, (n, seed, site, len(group), balanced)
        assert subjects["site"].value_counts().agg(np.ptp) <= 1  # and the sites are the same size


def test_generation_is_deterministic_and_lists_are_valid(tmp_path, capsys):
    a = generate_cohort("adni_ad", "template", n=6, seed=7, out=tmp_path / "a", workers=1, progress=False)
    b = generate_cohort("adni_ad", "template", n=6, seed=7, out=tmp_path / "b", workers=2, progress=False)
    fa, fb = _files(a), _files(b)
    assert len([k for k in fa if k.endswith(".nii.gz")]) == 6
    assert {"train.csv", "val.csv", "test.csv", "participants.csv", "cohort.json"} <= set(fa)
    assert fa == fb  # byte-identical, whatever the number of workers

    img = nib.load(a / "images" / "sub-0001_ses-1_T1w.nii.gz")
    assert img.shape == TEMPLATE_SHAPE and np.allclose(img.affine, TEMPLATE_AFFINE)
    assert img.get_data_dtype() == np.int16 and np.asarray(img.dataobj).max() > 0

    frames = read_split_datalists(a, "adni_ad")  # the generated lists pass the checker
    assert sum(len(f) for f in frames.values()) == 6
    subjects = [set(f["subject_id"]) for f in frames.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])

    # resume: same settings keep the files; other settings are refused
    generate_cohort("adni_ad", "template", n=6, seed=7, out=a, workers=1, progress=False)
    assert _files(a) == fa
    with pytest.raises(ValueError, match="different cohort"):
        generate_cohort("adni_ad", "template", n=6, seed=8, out=a, workers=1, progress=False)

    # the demo-data command (resuming here: nothing to render) prints the site x diagnosis counts
    assert (
        main(["demo-data", "--n", "6", "--seed", "7", "--out", str(a), "--workers", "1", "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "site x diagnosis" in printed
        and site_summary(plan_cohort("adni_ad", 6, 7), "adni_ad").to_string() in printed
    )
    assert _files(a) == fa

    other = plan_cohort("adni_ad", n=6, seed=8).iloc[0].to_dict()
    params = ScanParams(**{k: other[k] for k in ("age", "dx", "sex", "site", "subject_seed", "scan_seed")})
    data = synthesize_scan(params, "template")[0]
    assert not np.array_equal(data, np.asarray(img.dataobj))  # another seed, another scan


def _ventricle_ml(img: np.ndarray) -> float:
    """CSF-like (dark) voxels inside a central box around the lateral ventricles, in ml."""
    x, y, z = _world(TEMPLATE_SHAPE, TEMPLATE_AFFINE)
    box = (np.abs(x) < 30) & (y > -45) & (y < 30) & (z > -5) & (z < 35)
    brain = img > 0
    return float(((img < 0.6 * np.median(img[brain])) & brain & box).sum() * 8e-3)


def _scan(age, dx, subject_seed, scan_seed=11, sex="F", site="site-A"):
    p = ScanParams(age=age, dx=dx, sex=sex, site=site, subject_seed=subject_seed, scan_seed=scan_seed)
    return synthesize_scan(p, "template")[0].astype(np.float32)


def test_ventricles_grow_with_age_and_ad_same_subject():
    young, old, old_ad = (_scan(60, "CN", 5), _scan(82, "CN", 5), _scan(82, "AD", 5))
    v = [_ventricle_ml(i) for i in (young, old, old_ad)]
    assert v[0] < v[1] < v[2], v
    assert v[2] > 1.1 * v[1]


def test_ventricles_differ_between_groups_across_subjects():
    ages = [58, 66, 74, 82, 90]
    cn = [_ventricle_ml(_scan(a, "CN", 100 + i, scan_seed=200 + i)) for i, a in enumerate(ages)]
    ad = [_ventricle_ml(_scan(a, "AD", 300 + i, scan_seed=400 + i)) for i, a in enumerate(ages)]
    assert np.mean(ad) > np.mean(cn), (cn, ad)
    # natural variation is large (as in real cohorts), so look at the pooled trend with age
    assert np.corrcoef(ages + ages, cn + ad)[0, 1] > 0.3, (cn, ad)


def test_raw_space_transform_maps_back_to_template(tmp_path):
    out = generate_cohort("brain_age", "raw", n=2, seed=1, out=tmp_path / "raw", workers=1, progress=False)
    parts = pd.read_csv(out / "participants.csv")
    meta = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert meta["space"] == "raw"
    for row in parts.to_dict("records"):
        img = nib.load(out / row["image"])
        record = json.loads((out / row["transform"]).read_text(encoding="utf-8"))
        assert np.allclose(img.affine, record["raw_affine"], atol=1e-6)
        assert "".join(nib.aff2axcodes(img.affine)) == record["orientation"]
        raw = np.asarray(img.dataobj, dtype=np.float32)
        # resample the raw scan onto the template grid with the true transform
        m = np.linalg.inv(img.affine) @ np.array(record["raw_from_template"]) @ TEMPLATE_AFFINE
        ijk = np.indices(TEMPLATE_SHAPE, dtype=np.float64).reshape(3, -1)
        back = ndimage.map_coordinates(raw, m[:3, :3] @ ijk + m[:3, 3:4], order=1).reshape(TEMPLATE_SHAPE)
        params = ScanParams(
            age=row["age"], dx=row["dx"], sex=row["sex"], site=row["site"],
            subject_seed=row["subject_seed"], scan_seed=row["scan_seed"],
        )  # fmt: skip
        ref = synthesize_scan(params, "template")[0].astype(np.float32)
        sel = (ref > 0) | (back > 0)
        assert np.corrcoef(ref[sel], back[sel])[0, 1] > 0.9
        # a landmark: the template-space brain centre lands inside the raw brain
        centre = np.linalg.inv(img.affine) @ np.array(record["raw_from_template"]) @ [0.0, -18.0, 18.0, 1.0]
        assert raw[tuple(np.round(centre[:3]).astype(int))] > 0


@pytest.mark.parametrize("task", ["adni_ad", "brain_age"])
def test_committed_demo_lists_match_the_generator(task):
    """data_lists/<task>/ holds the lists of `demo-data --task <task> --n 100 --seed 0` (no rendering)."""
    root = Path(__file__).resolve().parents[1] / "data_lists" / task
    for split, text in datalist_csvs(plan_cohort(task, n=100, seed=0), task).items():
        assert (root / f"{split}.csv").read_text(encoding="utf-8") == text, f"regenerate {root / split}.csv"
