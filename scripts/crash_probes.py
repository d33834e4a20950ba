#!/usr/bin/env python
"""Lost-work probes (issue 20): kill -9, truncated / corrupt files and concurrent runs on a tiny bundle.

Trains a tiny cnn5 AD bundle on a small synthetic demo cohort (the configs of ``bundles/adni_ad`` copied
into a work folder, so nothing in the repository is written) and checks, one probe at a time, that no
work is lost and nothing unsafe passes silently:

- kill -9 mid-training, then ``--resume true``: weights bit-identical to an uninterrupted run;
- kill -9 during a checkpoint write (the process kills itself with half the temporary file written):
  the previous checkpoint is intact, the temporary file is swept by the resumed run, weights identical;
- kill -9 during ``mri-slice-transfer prepare``, then the same command again: finished scans are
  skipped, the interrupted one is redone, every scan ends ``ok``;
- two trainings started together into one ``bundle_root``: one refuses (lock), the other finishes;
- a fresh training into a trained ``bundle_root``: refused without ``--overwrite true``;
- truncated / corrupt (same-size random bytes) ``model.pt`` into evaluate and inference and
  ``checkpoint.pt`` into resume: non-zero exit with one error line (no traceback) naming the file.

It prints one line per probe, ``survived`` or ``NOT SURVIVED`` with the evidence, and exits 1 if any
probe was not survived. About 3 minutes on an idle 2-core CPU (172 s measured), longer under load.

Usage::

    python scripts/crash_probes.py [--work /tmp/crash_probes] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, also in the child processes (PYTHONPATH below)
EPOCHS = 4
TINY = [
    "--encoder", "cnn5", "--pretrained", "false", "--demo_n", "32", "--demo_epochs", str(EPOCHS),
    "--demo_input_scale", "0.25", "--demo_batch_size", "4", "--progress_bar", "false",
    "--cache_num_workers", "1", "--precise_bn_batches", "0",
]  # fmt: skip
INFER = ["--encoder", "cnn5", "--pretrained", "false", "--input_scale", "0.25"]

#: Runs ``monai.bundle`` after wrapping ``torch.save``: the 2nd write of ``checkpoint.pt`` writes half
#: its temporary file, then the process kills itself with SIGKILL (a kill -9 in the middle of a write).
KILL_IN_CHECKPOINT_WRITE = """
import os, runpy, signal, sys, torch
real_save, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if os.path.basename(str(f)).startswith(".checkpoint.pt."):
        calls.append(f)
        if len(calls) == 2:
            data = open(f, "rb").read()
            open(f, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


class Probes:
    """The work folder, the environment of the child processes and an uninterrupted reference run."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            MRI_SLICE_TRANSFER_CACHE=str(work / "cache"),
            OMP_NUM_THREADS="1",
        )
        self.reference: Path | None = None

    def bundle(self, name: str, like: Path | None = None) -> Path:
        """A fresh copy of the adni_ad configs (or of the bundle ``like``, outputs included)."""
        dst = self.work / name
        shutil.rmtree(dst, ignore_errors=True)
        if like is None:
            shutil.copytree(REPO / "bundles" / "adni_ad" / "configs", dst / "configs")
        else:
            shutil.copytree(like, dst)
        return dst

    def cmd(self, bundle: Path, *configs: str, extra: tuple[str, ...] = ()) -> list[str]:
        files = [str(bundle / "configs" / c) for c in configs or ("train.json",)]
        cfg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
        tiny = INFER if configs == ("inference.json",) else TINY
        return [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg, *tiny, *extra]

    def run(self, cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def trained_reference(self) -> Path:
        if self.reference is None:
            ref = self.bundle("reference")
            proc = self.run(self.cmd(ref))
            if proc.returncode != 0:
                raise SystemExit(
                    f"the reference training failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
                )
            self.reference = ref
        return self.reference


def wait_for(cond: Callable[[], bool], timeout: float = 300, proc: subprocess.Popen | None = None) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(0.05)
    return False


def load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    """Whether two bundles hold bit-identical ``model.pt`` and checkpoint model weights."""
    import torch

    for name, pick in (("model.pt", lambda s: s), ("checkpoint.pt", lambda s: s["model"])):
        x, y = pick(load(a / "models" / name)), pick(load(b / "models" / name))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def epochs_done(bundle: Path) -> list[int]:
    path = bundle / "eval" / "val_metrics.json"
    return [r["epoch"] for r in json.loads(path.read_text(encoding="utf-8"))] if path.is_file() else []


def temp_files(bundle: Path) -> list[str]:
    return sorted(p.name for p in (bundle / "models").glob(".checkpoint.pt.*"))


def probe_kill_mid_training(pr: Probes) -> tuple[bool, str]:
    ref = pr.trained_reference()
    b = pr.bundle("kill_mid_training")
    proc = pr.start(pr.cmd(b), b.parent / "kill_mid_training.log")
    wait_for(lambda: (b / "models" / "checkpoint.pt").is_file(), proc=proc)
    time.sleep(0.7)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = epochs_done(b)
    res = pr.run(pr.cmd(b, extra=("--resume", "true")))
    ok = res.returncode == 0 and epochs_done(b) == list(range(1, EPOCHS + 1)) and same_weights(ref, b)
    return ok, f"killed after epoch {done[-1] if done else 0} of {EPOCHS}; resume exit {res.returncode}, " + (
        "weights identical to the uninterrupted run" if ok else "weights or epochs differ"
    )


def probe_kill_during_checkpoint_write(pr: Probes) -> tuple[bool, str]:
    ref = pr.trained_reference()
    b = pr.bundle("kill_in_checkpoint_write")
    cmd = pr.cmd(b)
    killed = pr.run([sys.executable, "-c", KILL_IN_CHECKPOINT_WRITE, *cmd[3:]])
    left = temp_files(b)
    from mri_slice_transfer.engine.checkpoint import load_weights

    per_epoch = load(ref / "models" / "checkpoint.pt")["trainer"]["iteration"] // EPOCHS
    try:  # the checkpoint of epoch 1, readable and complete
        intact = load_weights(b / "models" / "checkpoint.pt")["trainer"]["iteration"] == per_epoch
    except Exception:  # noqa: BLE001 - any failure means the previous checkpoint was not kept
        intact = False
    res = pr.run(pr.cmd(b, extra=("--resume", "true")))
    swept = not temp_files(b)
    ok = (
        killed.returncode == -signal.SIGKILL
        and intact
        and res.returncode == 0
        and swept
        and same_weights(ref, b)
    )
    return ok, (
        f"killed (exit {killed.returncode}) with {len(left)} partial temporary file(s); epoch-1 checkpoint "
        f"{'intact' if intact else 'NOT intact'}; resume exit {res.returncode}, temporary file "
        f"{'swept' if swept else 'still there'}, weights {'identical' if ok else 'checked'}"
    )


def probe_kill_during_prepare(pr: Probes) -> tuple[bool, str]:
    raw = pr.work / "raw"
    mst = [sys.executable, "-m", "mri_slice_transfer"]
    gen = pr.run(
        [
            *mst,
            "demo-data",
            "--space",
            "raw",
            "--n",
            "3",
            "--out",
            str(raw),
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    if gen.returncode != 0:
        return False, f"could not generate raw demo scans: {gen.stderr[-500:]}"
    out = pr.work / "prepared"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*mst, "prepare", str(raw / "images"), "--out", str(out), "--no-progress", "--threads", "1"]
    proc = pr.start(cmd, pr.work / "prepare_killed.log")
    wait_for(lambda: len(list(out.glob("sub-*_T1w.json"))) >= 1, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob("sub-*_T1w.json")))
    res = pr.run(cmd)
    import pandas as pd

    manifest = pd.read_csv(out / "manifest.csv") if (out / "manifest.csv").is_file() else pd.DataFrame()
    statuses = manifest["status"].tolist() if "status" in manifest else []
    skipped = res.stdout.count("skipped") + res.stderr.count("skipped")
    ok = res.returncode == 0 and len(statuses) == 3 and set(statuses) <= {"ok", "skipped"} and skipped > 0
    return (
        ok,
        f"killed with {finished} of 3 scans finished; rerun exit {res.returncode}, statuses {statuses}, "
        + ("finished scans skipped" if skipped else "nothing skipped"),
    )


def probe_two_trainings(pr: Probes) -> tuple[bool, str]:
    b = pr.bundle("two_trainings")
    logs = [b.parent / f"two_trainings_{i}.log" for i in (1, 2)]
    procs = [pr.start(pr.cmd(b), log) for log in logs]  # started together
    codes = [p.wait() for p in procs]
    texts = [log.read_text(encoding="utf-8", errors="replace") for log in logs]
    refused = [i for i in (0, 1) if codes[i] != 0]
    said = [ln for i in refused for ln in texts[i].splitlines() if "RunLockedError" in ln]
    ok = sorted(codes)[0] == 0 and len(refused) == 1 and bool(said)
    ok = ok and epochs_done(b) == list(range(1, EPOCHS + 1)) and not (b / "models" / "train.lock").exists()
    first = said[-1].split(": ", 1)[-1][:150] if said else "no lock message"
    return ok, f"exit codes {codes}; the refused run said: {first}"


def probe_fresh_run_over_trained(pr: Probes) -> tuple[bool, str]:
    b = pr.bundle("fresh_over_trained", like=pr.trained_reference())
    before = (b / "models" / "model.pt").read_bytes()
    res = pr.run(pr.cmd(b))
    kept = (b / "models" / "model.pt").read_bytes() == before and epochs_done(b) == list(range(1, EPOCHS + 1))
    said = "--overwrite true" in res.stdout + res.stderr
    ok = res.returncode != 0 and kept and said
    return ok, f"exit {res.returncode}, model and metrics {'kept' if kept else 'CHANGED'}, " + (
        "error says --resume true / --overwrite true" if said else "no advice"
    )


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # random bytes inside the largest tensor record, same size
        import struct
        import zipfile

        with zipfile.ZipFile(path) as zf:
            info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        data[start : start + 16] = os.urandom(16)
        path.write_bytes(bytes(data))


def probe_broken_file(pr: Probes, file: str, how: str, job: str) -> tuple[bool, str]:
    b = pr.bundle(f"{how}_{file}_{job}".replace(".", "_").replace(" ", "_"), like=pr.trained_reference())
    target = b / "models" / file
    damage(target, how)
    if job == "evaluate":
        cmd = pr.cmd(b, "train.json", "evaluate.json")
    elif job == "inference":
        images = next((pr.work / "cache" / "demo").glob("adni_ad_template_n32_*")) / "images"
        out = str(b / "eval" / "predictions.csv")
        cmd = pr.cmd(b, "inference.json", extra=("--input_dir", str(images), "--predictions_csv", out))
    else:
        cmd = pr.cmd(b, extra=("--resume", "true", "--demo_epochs", str(EPOCHS + 1)))
    res = pr.run(cmd)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR WeightFileError: ")]
    named = len(errors) == 1 and str(target) in errors[0]
    short = "Traceback" not in res.stderr
    ok = res.returncode != 0 and named and short
    detail = errors[0].split(": ", 1)[-1].replace(str(b), "<bundle>")[:150] if errors else res.stderr[-300:]
    how_said = "one error line" if short else "a traceback"
    return (
        ok,
        f"exit {res.returncode}; {how_said}, {'naming the file' if named else 'file not named'}: {detail}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, bundles)")
    args = parser.parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="crash_probes_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pr = Probes(work)
    probes: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
        ("kill -9 mid-training, then --resume true", lambda: probe_kill_mid_training(pr)),
        ("kill -9 during a checkpoint write, then resume", lambda: probe_kill_during_checkpoint_write(pr)),
        ("kill -9 during prepare, then rerun", lambda: probe_kill_during_prepare(pr)),
        ("two trainings into one bundle_root", lambda: probe_two_trainings(pr)),
        ("fresh training into a trained bundle_root", lambda: probe_fresh_run_over_trained(pr)),
    ]
    for file, job in (("model.pt", "evaluate"), ("model.pt", "inference"), ("checkpoint.pt", "resume")):
        for how in ("truncated", "random bytes in"):
            probes.append(
                (f"{how} {file} into {job}", lambda f=file, h=how, j=job: probe_broken_file(pr, f, h, j))
            )
    failed = 0
    t0 = time.time()
    for name, probe in probes:
        try:
            ok, detail = probe()
        except Exception as err:  # noqa: BLE001 - a probe that breaks is reported, the others still run
            ok, detail = False, f"probe error {type(err).__name__}: {err}"
        failed += not ok
        print(f"{name:<50} {'survived' if ok else 'NOT SURVIVED'}  ({detail})", flush=True)
    took = time.time() - t0
    print(f"{len(probes) - failed} of {len(probes)} probes survived in {took:.0f} s (work folder {work})")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
