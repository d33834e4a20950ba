"""Synthetic demo cohorts (AD vs CN, brain age) in template or raw (scanner) space.

:func:`generate_cohort` plans a cohort (ages, diagnoses, sexes, sites, repeat sessions, a subject-level
stratified train/val/test split), renders every scan in parallel (see :mod:`.anatomy` for the model),
and writes NIfTI files plus data lists in the project's format (``docs/data_lists.md``)::

    out/
      images/sub-0001_ses-1_T1w.nii.gz        (+ sub-0001_ses-1_T1w.transform.json in raw space)
      train.csv  val.csv  test.csv             (image paths relative to ``out``)
      participants.csv                         (every scan, split and ground-truth covariates)
      cohort.json                              (the settings; generation resumes if they match)

Files are byte-identical for the same task, space, ``n`` and ``seed``, whatever the number of workers.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mri_slice_transfer.data.anatomy import SITES, ScanParams, render, static_maps, subject_anatomy
from mri_slice_transfer.data.datalist import SPLITS
from mri_slice_transfer.data.raw import raw_geometry, raw_points
from mri_slice_transfer.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from mri_slice_transfer.template import TEMPLATE_AFFINE, TEMPLATE_SHAPE
from mri_slice_transfer.vocabulary import task_spec

__all__ = [
    "SPACES",
    "GENERATOR_VERSION",
    "plan_cohort",
    "datalist_csvs",
    "site_summary",
    "generate_cohort",
    "synthesize_scan",
    "write_nifti",
]

log = logging.getLogger(__name__)

SPACES: tuple[str, ...] = ("template", "raw")
#: Bump when the generated images change, so a resumed cohort is never a mix of versions.
GENERATOR_VERSION = "5"
#: Share of subjects with a second (repeat) session.
REPEAT_FRACTION = 0.2
#: Default split fractions (subjects), stratified by diagnosis (AD task) or age bin (brain age).
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
# Repeating pattern that realises 60/20/20 while interleaving splits along each stratum.
_SPLIT_PATTERN = ("train", "val", "train", "test", "train")
AD_FRACTION = 0.27


def _age_model(task: str, dx: str, rng: np.random.Generator) -> float:
    if not task_spec(task).is_binary:  # brain age, UK Biobank-like: 64 +- 7.5 years, 45..82
        return float(np.clip(rng.normal(64.0, 7.5), 45.0, 82.0))
    mean = 76.0 if dx == "AD" else 73.0  # ADNI-like: AD subjects somewhat older
    return float(np.clip(rng.normal(mean, 6.5), 55.0, 90.0))


def _deal_sites(dx: np.ndarray, rng: np.random.Generator) -> list[str]:
    """A site per subject, balanced by diagnosis: every site gets its share of AD and of CN, +-1 subject.

    The subjects of each diagnosis are shuffled and dealt to the sites in turn (AD first, the CN deal
    continuing where AD stopped, so the site sizes differ by at most one subject too), in a random
    order of sites.
    """
    sites = [str(s) for s in rng.permutation(list(SITES))]
    order = [i for d in ("AD", "CN") for i in rng.permutation(np.flatnonzero(dx == d)).tolist()]
    out = [""] * len(dx)
    for pos, i in enumerate(order):
        out[i] = sites[pos % len(sites)]
    return out


def plan_cohort(task: str, n: int = 100, seed: int = 0) -> pd.DataFrame:
    """Plan ``n`` scans: one row per scan with subject, session, split, covariates and seeds.

    About :data:`REPEAT_FRACTION` of the subjects have a second session 1-2.5 years later (same split).
    For ``adni_ad`` round(27 %) of the subjects are AD; ``brain_age`` subjects are all CN. Sites are
    balanced by diagnosis (each site's share of AD subjects is the cohort's, +-1 subject), so a model
    cannot learn the diagnosis from the site.

    Args:
        task: ``"adni_ad"`` or ``"brain_age"``.
        n: number of scans.
        seed: random seed.

    Returns:
        one row per scan: ``subject_id``, ``session_id``, ``image``, ``split``, ``dx``, ``age``, ``sex``,
        ``site``, ``subject_seed``, ``scan_seed``, ``severity``.
    """
    binary = task_spec(task).is_binary
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng([seed, 0])
    n_sub = max(1, math.ceil(n / (1.0 + REPEAT_FRACTION)))
    n_repeat = n - n_sub
    n_ad = round(AD_FRACTION * n_sub) if binary else 0
    dx = np.array(["AD"] * n_ad + ["CN"] * (n_sub - n_ad))
    rng.shuffle(dx)
    sites = _deal_sites(dx, rng)
    subjects = []
    for i in range(n_sub):
        d = str(dx[i])
        subjects.append(
            {
                "subject_id": f"sub-{i + 1:04d}",
                "dx": d,
                "age": _age_model(task, d, rng),
                "sex": "M" if rng.random() < 0.5 else "F",
                "site": sites[i],
                "subject_seed": int(rng.integers(2**31)),
                "severity": float(np.exp(rng.normal(0.0, 0.3))) if d == "AD" else 0.0,
            }
        )
    repeats = set(rng.choice(n_sub, size=n_repeat, replace=False).tolist()) if n_repeat else set()

    # subject-level split, stratified: shuffle within strata, concatenate, deal out a 60/20/20 pattern
    if binary:
        strata = [s["dx"] for s in subjects]
    else:
        ages = np.array([s["age"] for s in subjects])
        edges = np.quantile(ages, [0.25, 0.5, 0.75]) if n_sub >= 4 else []
        strata = [str(int(np.searchsorted(edges, a))) for a in ages]
    order = []
    for stratum in sorted(set(strata)):
        members = [i for i, s in enumerate(strata) if s == stratum]
        order.extend(rng.permutation(members).tolist())
    for pos, i in enumerate(order):
        subjects[i]["split"] = _SPLIT_PATTERN[pos % len(_SPLIT_PATTERN)]

    rows = []
    for i, s in enumerate(subjects):
        sessions = [(1, 0.0)]
        if i in repeats:
            sessions.append((2, float(rng.uniform(1.0, 2.5))))
        for ses, dt in sessions:
            age = min(s["age"] + dt, 95.0)
            rows.append(
                {
                    "subject_id": s["subject_id"],
                    "session_id": f"ses-{ses}",
                    "image": f"images/{s['subject_id']}_ses-{ses}_T1w.nii.gz",
                    "split": s["split"],
                    "dx": s["dx"],
                    "age": round(age, 2),
                    "sex": s["sex"],
                    "site": s["site"],
                    "subject_seed": s["subject_seed"],
                    "scan_seed": int(rng.integers(2**31)),
                    # AD progresses between sessions
                    "severity": round(s["severity"] * (1.0 + 0.15 * dt), 4) if s["dx"] == "AD" else 0.0,
                }
            )
    return pd.DataFrame(rows)


def _params(row: dict) -> ScanParams:
    return ScanParams(
        age=float(row["age"]),
        dx=str(row["dx"]),
        sex=str(row["sex"]),
        site=str(row["site"]),
        subject_seed=int(row["subject_seed"]),
        scan_seed=int(row["scan_seed"]),
        severity=float(row["severity"]) if row["dx"] == "AD" else 1.0,
    )


def synthesize_scan(
    params: ScanParams, space: str = "template"
) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """Render one scan.

    Returns:
        ``(data, affine, transform)``: int16 voxel data, its voxel-to-world affine, and for raw space the
        transform record written as JSON (``None`` in template space).
    """
    if space == "template":
        ijk = np.indices(TEMPLATE_SHAPE, dtype=np.float64).reshape(3, -1)
        pts = TEMPLATE_AFFINE[:3, :3] @ ijk + TEMPLATE_AFFINE[:3, 3:4]
        data = render(params, pts, resolution=2).reshape(TEMPLATE_SHAPE)
        return _to_int16(data), np.array(TEMPLATE_AFFINE), None
    if space == "raw":
        geo = raw_geometry(params.scan_seed)
        data = np.zeros(geo.shape, np.float32)
        box, pts = raw_points(geo, params)
        if pts.shape[1]:
            data[box] = render(params, pts, resolution=1).reshape(data[box].shape)
        return _to_int16(data), geo.affine, geo.record()
    raise ValueError(f"unknown space {space!r}; choose one of {', '.join(SPACES)}")


def _to_int16(data: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(data), 0, np.iinfo(np.int16).max).astype(np.int16)


def write_nifti(data: np.ndarray, affine: np.ndarray, path: Path, code: int = 1) -> None:
    """Write a NIfTI-1 ``.nii.gz`` deterministically (gzip mtime 0, no file name) and atomically."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(img.to_bytes())
    atomic_write_bytes(path, buf.getvalue())


def _make_scan(row: dict, space: str, out: str) -> str:
    """Worker: render and write one scan (and its transform JSON). Returns the image path."""
    path = Path(out) / row["image"]
    data, affine, transform = synthesize_scan(_params(row), space)
    if transform is not None:
        tpath = path.with_name(path.name.replace(".nii.gz", ".transform.json"))
        atomic_write_json(tpath, transform)
    # code 4 = MNI152 for template-space scans, 1 = scanner for raw scans
    write_nifti(data, affine, path, code=4 if space == "template" else 1)
    return str(path)


def _warm(space: str) -> None:
    static_maps(1 if space == "raw" else 2)
    subject_anatomy(ScanParams(70.0, "CN", "F", next(iter(SITES)), 0, 0))


def _done(row: dict, space: str, out: Path) -> bool:
    path = out / row["image"]
    if not path.is_file():
        return False
    return space != "raw" or path.with_name(path.name.replace(".nii.gz", ".transform.json")).is_file()


def generate_cohort(
    task: str,
    space: str = "template",
    n: int = 100,
    seed: int = 0,
    out: str | PathLike = "demo_cohort",
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate a synthetic cohort of ``n`` scans and its data lists.

    Args:
        task: ``"adni_ad"`` (27 % AD, ages 55-90) or ``"brain_age"`` (healthy, 64 +- 7.5 years, 45-82).
        space: ``"template"`` (91x109x91, 2 mm, MNI152) or ``"raw"`` (1-1.2 mm scanner grids, random pose,
            storage orientation and field of view, with the true transform beside each scan).
        n: number of scans (about 1/6 of them are second sessions of a subject).
        seed: random seed; same ``task``/``space``/``n``/``seed`` give byte-identical files.
        out: output folder (created). If it holds a cohort with the same settings, finished scans are
            kept and only missing ones are made (resume); other settings are refused.
        workers: processes (default ``os.cpu_count()``; 1 = in this process).
        progress: show a tqdm progress bar.

    Returns:
        the output folder.
    """
    binary = task_spec(task).is_binary
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; choose one of {', '.join(SPACES)}")
    out = Path(out).expanduser()
    (out / "images").mkdir(parents=True, exist_ok=True)
    settings = {"generator": "mri_slice_transfer.data.synthetic", "version": GENERATOR_VERSION,
                "task": task, "space": space, "n": int(n), "seed": int(seed)}  # fmt: skip
    meta_path = out / "cohort.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: old.get(k) for k in settings} != settings:
            raise ValueError(
                f"{out} already holds a different cohort "
                f"({', '.join(f'{k}={old.get(k)}' for k in settings)}); "
                "choose another --out folder or delete it"
            )
    plan = plan_cohort(task, n=n, seed=seed)
    meta = dict(settings)
    meta.update(
        {
            "n_subjects": int(plan["subject_id"].nunique()),
            "n_scans": len(plan),
            "split_fractions": dict(zip(SPLITS, SPLIT_FRACTIONS, strict=True)),
            "repeat_fraction": REPEAT_FRACTION,
            "ad_fraction": AD_FRACTION if binary else 0.0,
            "template": "ICBM152 2009a nonlinear symmetric (nilearn), FSL MNI152 2 mm grid",
            "transform_convention": (
                None
                if space == "template"
                else "transform.json 'template_from_raw' maps raw scanner world mm (RAS) to template world mm"
            ),
        }
    )
    atomic_write_json(meta_path, meta)

    rows = plan.to_dict("records")
    todo = [r for r in rows if not _done(r, space, out)]
    if len(todo) < len(rows):
        log.info("resuming: %d of %d scans already in %s", len(rows) - len(todo), len(rows), out)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    _run(todo, space, out, workers, progress)
    _write_lists(plan, task, space, out)
    return out


def _run(todo: Sequence[dict], space: str, out: Path, workers: int, progress: bool) -> None:
    bar = tqdm(total=len(todo), desc=f"demo scans ({space})", unit="scan", disable=not progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for row in todo:
                _make_scan(row, space, str(out))
                bar.update()
            return
        with ProcessPoolExecutor(
            max_workers=min(workers, len(todo)), initializer=_warm, initargs=(space,)
        ) as ex:
            futures = [ex.submit(_make_scan, row, space, str(out)) for row in todo]
            for fut in as_completed(futures):
                fut.result()
                bar.update()
    finally:
        bar.close()


def datalist_csvs(plan: pd.DataFrame, task: str) -> dict[str, str]:
    """The ``train/val/test.csv`` texts of a planned cohort (what :func:`generate_cohort` writes)."""
    if task_spec(task).is_binary:
        cols = ["subject_id", "session_id", "image", "dx", "age", "sex", "site"]
    else:
        cols = ["subject_id", "session_id", "image", "age", "sex", "site"]
    return {
        split: plan.loc[plan["split"] == split, cols].to_csv(
            index=False, float_format="%.2f", lineterminator="\n"
        )
        for split in SPLITS
    }


def site_summary(plan: pd.DataFrame, task: str) -> pd.DataFrame:
    """Site x label counts of a planned cohort (what ``demo-data`` prints).

    Args:
        plan: the output of :func:`plan_cohort` (or ``participants.csv``).
        task: ``"adni_ad"`` (subjects and scans per site and diagnosis, and the AD share of subjects) or
            ``"brain_age"`` (subjects, scans and age per site).

    Returns:
        one row per site plus an ``all`` row.
    """
    subjects = plan.drop_duplicates("subject_id")
    table = pd.DataFrame(index=pd.Index(sorted(plan["site"].unique()), name="site"))
    spec = task_spec(task)
    if spec.is_binary:
        for dx in spec.classes or {}:
            table[f"{dx} subjects"] = subjects[subjects["dx"] == dx].groupby("site").size()
            table[f"{dx} scans"] = plan[plan["dx"] == dx].groupby("site").size()
        table = table.fillna(0).astype(int)
        table.loc["all"] = table.sum()
        table["AD share (subjects)"] = (
            table["AD subjects"] / (table["AD subjects"] + table["CN subjects"])
        ).round(3)
        return table
    table["subjects"] = subjects.groupby("site").size()
    table["scans"] = plan.groupby("site").size()
    table.loc["all"] = [len(subjects), len(plan)]
    ages = pd.concat([plan, plan.assign(site="all")]).groupby("site")["age"]
    table["age mean"] = ages.mean().round(1)
    table["age sd"] = ages.std().round(1)
    return table


def _write_lists(plan: pd.DataFrame, task: str, space: str, out: Path) -> None:
    for split, text in datalist_csvs(plan, task).items():
        atomic_write_text(out / f"{split}.csv", text)
    full = plan.copy()
    anat = [subject_anatomy(_params(r)) for r in plan.to_dict("records")]
    full["head_scale"] = [round(a.head_scale, 4) for a in anat]
    full["ventricle_expansion_mm"] = [round(a.k_vent, 3) for a in anat]
    full["mtl_contraction_mm"] = [round(a.k_mtl, 3) for a in anat]
    full["mtl_gm_loss"] = [round(a.d_mtl, 4) for a in anat]
    full["cortical_gm_loss"] = [round(a.d_cortex, 4) for a in anat]
    if space == "raw":
        full["transform"] = [p.replace(".nii.gz", ".transform.json") for p in plan["image"]]
    atomic_write_text(
        out / "participants.csv", full.to_csv(index=False, float_format="%.4f", lineterminator="\n")
    )
