"""Subject and session of a scan from its path: BIDS entities, UK Biobank and ADNI folder names.

One small parser instead of pybids: pybids indexes a whole dataset into SQLite (SQLAlchemy, bids
validator schema) to answer questions we need two entities of; here every rule is one regular
expression, works on a single path (also outside a BIDS dataset, e.g. ``prepare``'s inputs) and needs
only the standard library, so the command line and ``prepare`` import it for free.

Rules, first match wins for each entity:

1. **BIDS**: ``key-label`` pairs of the file name (``sub-01_ses-bl_run-2_T1w.nii.gz``: split at ``_``,
   each part ``[a-zA-Z]+-[a-zA-Z0-9]+``), then ``sub-*`` / ``ses-*`` folders of the path.
2. **UK Biobank** (field 20252, T1 structural images): a folder ``<eid>_20252_<instance>_<array>``
   gives subject ``<eid>`` and session ``<instance>`` (``<instance>r<array>`` for an array index other
   than 0); the file name after ``T1`` becomes a ``desc`` label, so ``T1.nii.gz``, ``T1_brain.nii.gz``
   and ``T1_brain_to_MNI.nii.gz`` of one folder keep different names (``desc-brain``,
   ``desc-brainToMNI``).
3. **ADNI**: a subject folder ``ddd_S_dddd`` (ADNI's PTID, e.g. ``002_S_0295``) gives subject
   ``ADNI002S0295`` (clinica's BIDS spelling); a date folder ``YYYY-MM-DD...`` below it gives session
   ``YYYYMMDD``.

:func:`join_key` is how ids are matched against a clinical table: ``sub-ADNI002S0295``,
``ADNI002S0295`` and ADNIMERGE's ``002_S_0295`` are one subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path, PurePath

from mri_slice_transfer.vocabulary import IMAGE_SUFFIXES, NIFTI_SUFFIXES

__all__ = [
    "SPACE",
    "ScanEntities",
    "bids_t1w_files",
    "derivative_name",
    "join_key",
    "scan_entities",
]

#: ``space-<label>_res-<label>`` of prepared scans: the ICBM152 2009a nonlinear symmetric T1 (what
#: ``prepare`` registers to, :mod:`mri_slice_transfer.template`) on the FSL MNI152 2 mm grid
#: (91 x 109 x 91); ``res-2`` means that grid, not TemplateFlow's 2 mm grid of the 2009 templates.
SPACE = "space-MNI152NLin2009aSym_res-2"

_ENTITY = re.compile(r"(?P<key>[a-zA-Z]+)-(?P<label>[a-zA-Z0-9]+)")
_UKB_FOLDER = re.compile(r"(?P<eid>\d+)_20252_(?P<instance>\d+)_(?P<array>\d+)")
_ADNI_PTID = re.compile(r"(?P<site>\d{3})_S_(?P<rid>\d{4})")
_DATE = re.compile(r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})")


@dataclass(frozen=True)
class ScanEntities:
    """What a scan's path says about it (labels without their ``sub-``/``ses-`` prefixes).

    Attributes:
        subject: subject label (``"01"``, ``"1234567"``, ``"ADNI002S0295"``) or ``""``.
        session: session label or ``""``.
        run: BIDS ``run`` label or ``""``.
        acq: BIDS ``acq`` label or ``""``.
        desc: a variant of the image (UK Biobank ``brain``, ``brainToMNI``) or ``""``.
    """

    subject: str = ""
    session: str = ""
    run: str = ""
    acq: str = ""
    desc: str = ""

    @property
    def subject_id(self) -> str:
        """``sub-<subject>`` (the BIDS ``participant_id``), or ``""`` when unknown."""
        return f"sub-{self.subject}" if self.subject else ""

    @property
    def session_id(self) -> str:
        """``ses-<session>`` (the BIDS ``session_id``), or ``""`` when unknown."""
        return f"ses-{self.session}" if self.session else ""


def _stem(name: str) -> str:
    """File name without its scan ending (``.nii.gz``, ``.mgz``, ...)."""
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _bids(path: PurePath) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in _stem(path.name).split("_"):
        m = _ENTITY.fullmatch(part)
        if m and m["key"] in ("sub", "ses", "run", "acq"):
            found.setdefault(m["key"], m["label"])
    for part in reversed(path.parts[:-1]):
        m = _ENTITY.fullmatch(part)
        if m and m["key"] in ("sub", "ses"):
            found.setdefault(m["key"], m["label"])
    return found


def _ukb(path: PurePath) -> dict[str, str]:
    for part in reversed(path.parts[:-1]):
        m = _UKB_FOLDER.fullmatch(part)
        if m:
            session = m["instance"] if m["array"] == "0" else f"{m['instance']}r{m['array']}"
            words = _stem(path.name).split("_")
            words = words[1:] if words[0] == "T1" else words
            label = "".join(w if i == 0 else w[:1].upper() + w[1:] for i, w in enumerate(words))
            return {"sub": m["eid"], "ses": session, "desc": re.sub(r"[^A-Za-z0-9]", "", label)}
    return {}


def _adni(path: PurePath) -> dict[str, str]:
    parts = path.parts[:-1]
    for i in range(len(parts) - 1, -1, -1):
        m = _ADNI_PTID.fullmatch(parts[i])
        if m:
            found = {"sub": f"ADNI{m['site']}S{m['rid']}"}
            for below in parts[i + 1 :]:
                d = _DATE.match(below)
                if d:
                    found["ses"] = f"{d['y']}{d['m']}{d['d']}"
                    break
            return found
    return {}


def scan_entities(path: str | PathLike) -> ScanEntities:
    """Subject, session (and run, acq, desc) of a scan from its path; see the module docstring.

    Args:
        path: the scan file (or DICOM folder), absolute or relative.

    Returns:
        the entities; ``subject`` is ``""`` when no rule matched.
    """
    p = PurePath(path)
    found = _bids(p)
    if "sub" not in found:
        found = {**(_ukb(p) or _adni(p)), **found}
    return ScanEntities(
        subject=found.get("sub", ""),
        session=found.get("ses", ""),
        run=found.get("run", ""),
        acq=found.get("acq", ""),
        desc=found.get("desc", ""),
    )


def derivative_name(entities: ScanEntities, suffix: str = "T1w") -> str | None:
    """BIDS-derivative relative name (no extension) of a prepared scan, from its entities.

    Args:
        entities: from :func:`scan_entities`.
        suffix: the BIDS suffix.

    Returns:
        ``sub-X/ses-Y/anat/sub-X_ses-Y[_acq-A][_run-R][_desc-D]_space-..._res-2_T1w`` (no ``ses`` parts
        without a session), or None when the subject is unknown.
    """
    if not entities.subject:
        return None
    parts = [entities.subject_id, entities.session_id]
    parts += [
        f"{k}-{v}" for k, v in (("acq", entities.acq), ("run", entities.run), ("desc", entities.desc)) if v
    ]
    folder = "/".join(x for x in (entities.subject_id, entities.session_id, "anat") if x)
    return f"{folder}/{'_'.join(x for x in parts if x)}_{SPACE}_{suffix}"


def bids_t1w_files(folder: str | PathLike) -> list[Path]:
    """The T1-weighted NIfTI files of a BIDS dataset: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, sorted.

    Args:
        folder: the dataset's root.

    Returns:
        the files (empty when ``folder`` is not a BIDS dataset).
    """
    root = Path(folder)
    found: set[Path] = set()
    for pattern in ("sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*"):
        found.update(p for p in root.glob(pattern) if p.name.lower().endswith(NIFTI_SUFFIXES))
    return sorted(found)


def join_key(value: object) -> str:
    """How a subject or session id is matched against a clinical table.

    Case, a ``sub-``/``ses-`` prefix and characters other than letters and digits are ignored, and an
    ADNI PTID is spelled as :func:`scan_entities` spells it, so ``sub-ADNI002S0295``, ``ADNI002S0295``
    and ``002_S_0295`` give one key, and so do ``ses-20060418`` and ``2006-04-18``.

    Args:
        value: an id as written in a data list, a BIDS table or a clinical table.

    Returns:
        the key (``""`` for an empty id).
    """
    text = str(value).strip()
    text = _ADNI_PTID.sub(lambda m: f"ADNI{m['site']}S{m['rid']}", text)
    text = re.sub(r"^(sub|ses)-", "", text, flags=re.IGNORECASE)
    return re.sub(r"[^0-9a-z]", "", text.casefold())
