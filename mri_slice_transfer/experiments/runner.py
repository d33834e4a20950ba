"""Run an experiment grid through a MONAI bundle: one folder per run, resumable, failures recorded.

Each run is the command a user would type, in a subprocess::

    python -m monai.bundle run --config_file bundles/<b>/configs/train.json --bundle_root bundles/<b> \\
        --ckpt_dir <run>/models --output_dir <run>/eval --encoder resnet18 --axis axial ... --seed 0
    python -m monai.bundle run --config_file "['<...>/train.json','<...>/evaluate.json']" <same overrides>

Layout of ``<out>/runs/<run_id>/`` (the names are in :mod:`.run_folder`):

- ``config.json``: the model settings, the seed, the bundle overrides (as JSON) and both commands;
- ``train.log``, ``evaluate.log``: everything the two commands printed (each attempt appended);
- ``models/model.pt`` (best epoch on validation), ``models/checkpoint.pt`` (last epoch, for resume);
- ``eval/val_metrics.csv|json`` (every epoch), TensorBoard events, ``eval/test_metrics.json`` and
  ``eval/test_predictions.csv`` (one row per test scan);
- ``run_info.json``: written by the train command: how the encoder was initialised;
- ``train.done``: training finished (a rerun goes straight to evaluation);
- ``done.json``: the run's results, written atomically last. A run with it is finished and skipped
  on a rerun; any other run is (re)done: training resumes from ``checkpoint.pt`` when there is one;
- ``failed.json``: the error and the log tail of the last failed attempt (the grid goes on).

Runs whose encoder starts from self-supervised pretraining (``init`` ``ssl``) depend on a
*pretraining stage* (:class:`PretrainStage`): ``configs/pretrain.json`` run once per encoder, axis and
seed into ``<out>/pretrain/<stage_id>/`` (``models/encoder.pt``, ``pretrain.log``, ``done.json``), on
the training list (+ unlabeled scans) only; its leakage guard refuses validation and test scans. A
finished stage is skipped on a rerun; a failed one fails the runs that need it. Runs planned with a
``skip`` reason (e.g. ImageNet weights absent) are reported as ``status: skipped`` and not run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mri_slice_transfer.experiments.bootstrap import bootstrap_from_predictions, headline_metric
from mri_slice_transfer.experiments.presets import ModelConfig
from mri_slice_transfer.experiments.run_folder import (
    DONE,
    RUNS,
    RunFiles,
    RunInfo,
    TrainMarker,
    read_marker,
    write_marker,
)
from mri_slice_transfer.vocabulary import Init, task_spec

__all__ = [
    "PlannedRun",
    "PretrainStage",
    "Runner",
    "RunFailed",
    "GridError",
    "BundleRunner",
    "plan_runs",
    "run_grid",
    "collect_run_result",
    "collect_robustness",
    "find_bundle",
    "bundle_task",
    "log_tail",
]

#: Overrides that point into the run folder; they do not make two runs different.
PATH_KEYS = ("bundle_root", "ckpt_dir", "output_dir")
#: Folder of the pretraining stages under the grid folder.
PRETRAIN = "pretrain"
#: The robustness stage's output folder and log, in a run folder.
ROBUSTNESS_DIR = "robustness"
ROBUSTNESS_LOG = "robustness.log"
#: What a pretraining stage printed, in its folder.
PRETRAIN_LOG = "pretrain.log"
#: Only for run folders trained before ``run_info.json`` existed (see :func:`_encoder_init`).
_LEGACY_INIT_RE = re.compile(r"encoder initialisation: (.+?)\s*$")
_EPOCH_TIME_RE = re.compile(r"epoch \d+/\d+: .*?([\d.]+) s$", re.MULTILINE)
_ERROR_RE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*)$")


class GridError(RuntimeError):
    """A problem with the grid as a whole (bad bundle, runs made with other settings, ...)."""


class RunFailed(RuntimeError):
    """One stage of one run failed.

    Args:
        message: what failed (e.g. ``"train exited with code 1: ValueError: ..."``).
        log: the log file of the failed stage, if any.
    """

    def __init__(self, message: str, log: Path | None = None) -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class PretrainStage:
    """One self-supervised pretraining (``configs/pretrain.json``), shared by the runs that start from it.

    Attributes:
        stage_id: folder name under ``<out>/pretrain``.
        overrides: pretrain bundle overrides besides the folder paths (encoder, axis, seed, data, epochs).
        encoder_file: the encoder weights file the stage writes (``<stage>/models/encoder.pt``).
    """

    stage_id: str
    overrides: dict[str, Any]
    encoder_file: str


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid.

    Attributes:
        config: the model settings.
        seed: the seed.
        overrides: bundle overrides besides the run-folder paths (settings, seed, data, epochs, extras).
        run_id: folder name under ``<out>/runs``.
        row: index of the configuration in the grid (table order).
        pretrain: the pretraining stage this run's encoder starts from (None: none).
        skip: why the run is not run (``""``: it is run); it is reported as ``status: skipped``.
        robustness: severities of the robustness stage (``"2"``: the middle one; ``""``: no stage).
    """

    config: ModelConfig
    seed: int
    overrides: dict[str, Any]
    run_id: str
    row: int = 0
    pretrain: PretrainStage | None = None
    skip: str = ""
    robustness: str = ""


class Runner(Protocol):
    """What :func:`run_grid` needs to run one run; :class:`BundleRunner` is the real one.

    Tests inject a fake that writes the same files without training.
    """

    def train(self, run: PlannedRun, run_dir: Path, resume: bool) -> None:
        """Train into ``run_dir`` (``models/``, ``eval/``, ``train.log``); raise on failure."""

    def evaluate(self, run: PlannedRun, run_dir: Path) -> None:
        """Write ``eval/test_metrics.json`` and ``eval/test_predictions.csv``; raise on failure."""

    def count_parameters(self, run: PlannedRun) -> int | None:
        """Parameter count of the run's network (None if unknown)."""

    def commands(self, run: PlannedRun, run_dir: Path) -> dict[str, list[str]]:
        """The command lines of the stages (for ``config.json`` and ``--dry-run``)."""

    def robustness(self, run: PlannedRun, run_dir: Path) -> None:
        """Write ``robustness/robustness.csv`` (the best model under the robustness overlay)."""

    def pretrain(self, stage: PretrainStage, stage_dir: Path) -> None:
        """Pretrain ``stage`` into ``stage_dir`` (writes ``stage.encoder_file``); raise on failure."""


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder from a path or a name under ``./bundles`` or the source tree's ``bundles/``.

    Raises:
        GridError: naming every place looked at.
    """
    cand = Path(name_or_path).expanduser()
    places = [cand, Path.cwd() / "bundles" / str(name_or_path)]
    places.append(Path(__file__).resolve().parents[2] / "bundles" / str(name_or_path))
    for p in places:
        if (p / "configs" / "train.json").is_file():
            return p.resolve()
    raise GridError(
        f"bundle {str(name_or_path)!r} not found (looked for configs/train.json in "
        + ", ".join(str(p) for p in places)
        + ")"
    )


def bundle_task(bundle: Path) -> str:
    """The ``task`` of a bundle's ``configs/train.json``."""
    cfg = bundle / "configs" / "train.json"
    try:
        task = json.loads(cfg.read_text(encoding="utf-8"))["task"]
    except (OSError, ValueError, KeyError) as err:
        raise GridError(f"{cfg}: cannot read the bundle's task ({err})") from err
    return str(task)


def plan_runs(
    configs: Sequence[ModelConfig],
    seeds: Sequence[int],
    base_overrides: Mapping[str, Any] | None = None,
    strict_pretrained: bool = False,
    weights_for: Callable[[ModelConfig, int], str] | None = None,
) -> list[PlannedRun]:
    """Every configuration x seed as a :class:`PlannedRun` (configuration-major order).

    Args:
        configs: the table rows.
        seeds: the seeds.
        base_overrides: overrides for every run (data folders, epochs, user extras).
        strict_pretrained: ask for ImageNet weights with ``pretrained=true`` (a run fails without them)
            instead of ``"auto"`` (falls back to random init; ``results.csv`` records ``encoder_init``).
        weights_for: the encoder weights file of a row whose ``init`` is ``ssl`` or ``file``, per seed
            (:func:`mri_slice_transfer.experiments.transfer.plan_transfer` gives it).

    Raises:
        GridError: two configurations with the same run id, or an ``ssl`` / ``file`` row without
            ``weights_for``.
    """
    runs = []
    seen: set[str] = set()
    for row, raw in enumerate(configs):
        c = raw.normalised()
        if c.key() in seen:
            raise GridError(f"configuration {c.key()} appears twice in the grid")
        seen.add(c.key())
        settings: dict[str, Any] = {"encoder": c.encoder, "position_encoding": c.position_encoding}
        if not c.is_conv3d:
            settings.update(axis=c.axis, aggregation=c.aggregation)
        settings["pretrained"] = _pretrained_setting(c, strict_pretrained, weights_for)
        if c.train_fraction != 1.0:
            settings["train_fraction"] = c.train_fraction
        for seed in seeds:
            overrides = {**settings, **dict(base_overrides or {}), "seed": int(seed)}
            if weights_for is not None and c.init in (Init.SSL, Init.FILE):
                overrides["pretrained"] = weights_for(c, int(seed))
            runs.append(PlannedRun(c, int(seed), overrides, f"{c.key()}_seed{int(seed)}", row))
    return runs


def _pretrained_setting(
    c: ModelConfig, strict: bool, weights_for: Callable[[ModelConfig, int], str] | None
) -> str:
    """The ``pretrained`` override of a (normalised) row; ``ssl`` / ``file`` rows get theirs per seed."""
    if c.init in (Init.SSL, Init.FILE):
        if weights_for is None:
            raise GridError(f"configuration {c.key()}: init {c.init!r} needs a weights file (weights_for)")
        return ""
    if c.pretrained:
        return "true" if strict else "auto"
    return "false"


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def log_tail(path: Path, n: int = 30) -> str:
    """The last ``n`` lines of a log file ('' if it does not exist)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _error_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        m = _ERROR_RE.match(line)
        if m:
            return m.group(1).strip()
    return ""


@dataclass
class BundleRunner:
    """Runs each stage with ``python -m monai.bundle run`` in a subprocess.

    Attributes:
        bundle: the bundle folder (``configs/train.json``, ``configs/evaluate.json``).
        python: the interpreter (default: this one).
        timeout: seconds per stage (None: no limit).
        env: extra environment variables for the subprocesses.
        echo: print the commands as they start.
    """

    bundle: Path
    python: str = sys.executable
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    echo: bool = False
    _param_cache: dict[str, int | None] = field(default_factory=dict, repr=False)

    def _paths(self, run_dir: Path) -> dict[str, str]:
        return {
            "bundle_root": str(self.bundle),
            "ckpt_dir": str(RunFiles.of(run_dir).models),
            "output_dir": str(RunFiles.of(run_dir).eval_dir),
        }

    def _bundle_command(self, config_file: str, values: Mapping[str, Any]) -> list[str]:
        """``python -m monai.bundle run --config_file FILE`` with ``--key value`` per entry of ``values``."""
        cmd = [self.python, "-m", "monai.bundle", "run", "--config_file", config_file]
        for key, value in values.items():
            cmd += [f"--{key}", _flag_value(value)]
        return cmd

    def _cmd(self, config_file: str, run: PlannedRun, run_dir: Path, extra: Mapping[str, Any]) -> list[str]:
        values = {**self._paths(run_dir), "progress_bar": False, **run.overrides, **extra}
        return self._bundle_command(config_file, values)

    def commands(self, run: PlannedRun, run_dir: Path) -> dict[str, list[str]]:
        """The train and evaluate command lines of ``run`` (and its robustness stage's, if it has one)."""
        cfg = self.bundle / "configs"
        both = json.dumps([str(cfg / "train.json"), str(cfg / "evaluate.json")])
        cmds = {
            "train": self._cmd(str(cfg / "train.json"), run, run_dir, {}),
            "evaluate": self._cmd(both, run, run_dir, {}),
        }
        if run.robustness:
            three = json.dumps(
                [str(cfg / name) for name in ("train.json", "evaluate.json", "robustness.json")]
            )
            extra = {"output_dir": str(run_dir / ROBUSTNESS_DIR), "perturb_severities": run.robustness}
            cmds["robustness"] = self._cmd(three, run, run_dir, extra)
        return cmds

    def _run(self, stage: str, cmd: list[str], log: Path, env_extra: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env, **dict(env_extra or {}))
        if self.echo:
            print("    $ " + shlex.join(cmd), flush=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"\n=== {stage} started {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n")
            fh.flush()
            try:
                proc = subprocess.run(
                    cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=self.timeout, check=False
                )
            except subprocess.TimeoutExpired:
                raise RunFailed(f"{stage} timed out after {self.timeout:g} s (see {log})", log) from None
        if proc.returncode != 0:
            reason = _error_line(log_tail(log, 200)) or f"exit code {proc.returncode}"
            raise RunFailed(f"{stage} failed: {reason} (see {log})", log)

    def train(self, run: PlannedRun, run_dir: Path, resume: bool) -> None:
        """Train (``resume=True`` continues from ``models/checkpoint.pt``; else a broken run is replaced).

        The train command writes ``run_info.json`` (how the encoder was initialised) into ``run_dir``.
        """
        cmd = self.commands(run, run_dir)["train"]
        cmd += ["--resume", "true"] if resume else ["--overwrite", "true"]
        from mri_slice_transfer.engine.run_info import RUN_INFO_ENV

        files = RunFiles.of(run_dir)
        files.run_info.unlink(missing_ok=True)
        self._run("train", cmd, files.train_log, {RUN_INFO_ENV: str(files.run_info)})

    def evaluate(self, run: PlannedRun, run_dir: Path) -> None:
        """Score the best model on the test split."""
        self._run("evaluate", self.commands(run, run_dir)["evaluate"], RunFiles.of(run_dir).evaluate_log)

    def robustness(self, run: PlannedRun, run_dir: Path) -> None:
        """Re-score the best model on the test split under ``robustness.json`` at ``run.robustness``."""
        self._run("robustness", self.commands(run, run_dir)["robustness"], run_dir / ROBUSTNESS_LOG)

    def pretrain_command(self, stage: PretrainStage, stage_dir: Path) -> list[str]:
        """The command line of a pretraining stage (``configs/pretrain.json``)."""
        values = {
            "bundle_root": str(self.bundle),
            "ckpt_dir": str(Path(stage.encoder_file).parent),
            "output_dir": str(stage_dir / "eval"),
            "progress_bar": False,
            **stage.overrides,
        }
        return self._bundle_command(str(self.bundle / "configs" / "pretrain.json"), values)

    def pretrain(self, stage: PretrainStage, stage_dir: Path) -> None:
        """Pretrain into ``stage_dir`` (resuming from its checkpoint when there is one)."""
        resume = (Path(stage.encoder_file).parent / "pretrain_checkpoint.pt").is_file()
        cmd = self.pretrain_command(stage, stage_dir)
        cmd += ["--resume", "true"] if resume else ["--overwrite", "true"]
        self._run("pretrain", cmd, stage_dir / PRETRAIN_LOG)

    def count_parameters(self, run: PlannedRun) -> int | None:
        """Build the run's ``network_def`` from the bundle config (no weights loaded) and count it."""
        overrides = {k: v for k, v in run.overrides.items() if k != "seed"}
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in self._param_cache:
            from monai.bundle import ConfigParser

            parser = ConfigParser()
            parser.read_config(str(self.bundle / "configs" / "train.json"))
            parser.update({**overrides, "bundle_root": str(self.bundle), "pretrained": False})
            net = parser.get_parsed_content("network_def")
            self._param_cache[key] = int(sum(p.numel() for p in net.parameters()))
        return self._param_cache[key]


def _comparable(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps({k: v for k, v in overrides.items() if k not in PATH_KEYS}, default=str))


def _check_settings(runs: Sequence[PlannedRun], runs_dir: Path) -> list[str]:
    """Runs whose folder was made with other settings (so resuming would mix two experiments)."""
    problems = []
    for run in runs:
        stored = read_marker(RunFiles.of(runs_dir / run.run_id).config)
        if stored is None:
            continue
        before, now = _comparable(stored.get("overrides", {})), _comparable(run.overrides)
        if before != now:
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            detail = ", ".join(
                f"{k}: {before.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r}" for k in diff
            )
            problems.append(f"{runs_dir / run.run_id}: made with other settings ({detail})")
    return problems


def collect_run_result(
    task: str, run: PlannedRun, run_dir: Path, n_bootstrap: int = 1000, bootstrap_seed: int = 0
) -> dict[str, Any]:
    """Read a finished run's files into one flat result row.

    Validation metrics are those of the best epoch (the one ``model.pt`` holds: first epoch with the
    best key metric); test metrics come from ``eval/test_metrics.json``, their 95 % bootstrap
    confidence intervals from ``eval/test_predictions.csv`` (resampling subjects), the encoder
    initialisation actually used from ``run_info.json``.

    Raises:
        RunFailed: a result file is missing or unreadable.
    """
    from mri_slice_transfer.engine.metrics import metrics_threshold

    files = RunFiles.of(run_dir)
    row: dict[str, Any] = {}
    try:
        epochs = json.loads(files.val_metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFailed(f"no validation metrics ({files.val_metrics}: {err})") from err
    spec = task_spec(task)
    key = f"val_{spec.key_metric}"
    best: dict[str, Any] | None = None
    for r in epochs:
        v = r.get(key)
        if v is not None and spec.better(float(v), None if best is None else best[key]):
            best = r
    row["epochs_run"] = max((int(r.get("epoch", 0)) for r in epochs), default=0)
    row["best_epoch"] = int(best["epoch"]) if best else None
    for k, v in (best or {}).items():
        if k.startswith("val_"):
            row[k] = v
    try:
        test = json.loads(files.test_metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFailed(f"no test metrics ({files.test_metrics}: {err})") from err
    for k, v in test.items():
        row[f"test_{k}" if not k.startswith("test_") else k] = v
    threshold = metrics_threshold(test)  # AD: the threshold the test metrics used
    row.update(
        bootstrap_from_predictions(task, files.test_predictions, n_bootstrap, bootstrap_seed, threshold)
    )
    row["encoder_init"] = _encoder_init(files)
    row["seconds_per_epoch"] = _seconds_per_epoch(files.train_log)
    return row


def collect_robustness(task: str, csv: Path) -> dict[str, Any]:
    """The key metric under each perturbation and how much worse it is than clean, from ``robustness.csv``.

    Columns: ``robust_<perturbation>_s<severity>`` (the metric), ``robust_drop_<perturbation>`` (how much
    worse than clean: clean - perturbed when higher is better, perturbed - clean for errors; averaged
    over the severities run) and ``robust_drop_mean`` (averaged over the perturbations).

    Raises:
        RunFailed: the file is missing or has no key-metric column.
    """
    import pandas as pd

    spec = task_spec(task)
    try:
        table = pd.read_csv(csv)
        values = pd.to_numeric(table[spec.key_metric], errors="coerce")
    except (OSError, ValueError, KeyError) as err:
        raise RunFailed(f"no robustness results ({csv}: {err})") from err
    row: dict[str, Any] = {}
    drops = []
    for kind, part in table.assign(_v=values).groupby("perturbation", sort=False):
        clean = part.loc[part["severity"] == 0, "_v"]
        worse = []
        for _, r in part[part["severity"] > 0].iterrows():
            row[f"robust_{kind}_s{int(r['severity'])}"] = r["_v"]
            if len(clean):
                diff = float(r["_v"]) - float(clean.iloc[0])
                worse.append(diff if spec.lower_is_better else -diff)
        row[f"robust_drop_{kind}"] = sum(worse) / len(worse) if worse else math.nan
        drops.append(row[f"robust_drop_{kind}"])
    row["robust_drop_mean"] = sum(drops) / len(drops) if drops else math.nan
    return row


def _seconds_per_epoch(log: Path) -> float:
    """Median seconds per training epoch from the train log's epoch lines (NaN without any)."""
    times = sorted(float(m.group(1)) for m in _EPOCH_TIME_RE.finditer(log_tail(log, 100000)))
    return times[len(times) // 2] if times else math.nan


def _encoder_init(files: RunFiles) -> str:
    """How the run's encoder was initialised: from ``run_info.json``; in run folders whose training
    finished before that file existed (resumed after an interruption), from the train log's last
    ``encoder initialisation:`` line; else ``"unknown"``."""
    info = RunInfo.read(files.run_info)
    if info is not None:
        return info.encoder_init
    init = "unknown"
    for line in log_tail(files.train_log, 100000).splitlines():
        m = _LEGACY_INIT_RE.search(line)
        if m:
            init = m.group(1)
    return init


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _base_row(task: str, run: PlannedRun, run_dir: Path) -> dict[str, Any]:
    c = run.config.normalised()
    data = run.overrides.get("dataset_dir") or run.overrides.get("datalist_dir")
    return {
        "run_id": run.run_id,
        "row": run.row,
        "task": task,
        "model": c.label(),
        "encoder": c.encoder,
        "axis": c.axis or "-",
        "aggregation": c.aggregation or "-",
        "position_encoding": c.position_encoding,
        "pretrained": c.pretrained,
        "init": c.init,
        "train_fraction": c.train_fraction,
        "pretrained_override": run.overrides.get("pretrained"),
        "seed": run.seed,
        "data": str(data) if data else "demo (synthetic)",
        "run_dir": str(run_dir),
    }


@dataclass
class _Pretraining:
    """Runs each pretraining stage once per grid (skipped when ``<out>/pretrain/<id>/done.json`` exists).

    Attributes:
        out_dir: the grid folder.
        runner: runs the stage.
        say: progress output.
        redo: delete a stage's folder and redo it (once per grid call).
        failures: the error of each stage that failed in this call (its other runs fail at once).
    """

    out_dir: Path
    runner: Runner
    say: Callable[[str], None]
    redo: bool = False
    failures: dict[str, str] = field(default_factory=dict)
    _redone: set[str] = field(default_factory=set)

    def ensure(self, stage: PretrainStage) -> None:
        """Make sure ``stage.encoder_file`` is written by a finished stage; ``RunFailed`` otherwise."""
        stage_dir = self.out_dir / PRETRAIN / stage.stage_id
        if stage.stage_id in self.failures:
            raise RunFailed(self.failures[stage.stage_id], stage_dir / PRETRAIN_LOG)
        if self.redo and stage.stage_id not in self._redone and stage_dir.exists():
            shutil.rmtree(stage_dir)
        self._redone.add(stage.stage_id)
        done = read_marker(stage_dir / DONE)
        if done is not None and Path(stage.encoder_file).is_file():
            if _comparable(done.get("overrides", {})) != _comparable(stage.overrides):
                raise GridError(f"{stage_dir}: pretrained with other settings; use another --out or --redo")
            return
        stage_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"    pretraining {stage.stage_id} (once; log: {stage_dir / PRETRAIN_LOG}) ...")
        t0 = time.perf_counter()
        try:
            self.runner.pretrain(stage, stage_dir)
            if not Path(stage.encoder_file).is_file():
                raise RunFailed(f"pretrain wrote no {stage.encoder_file}", stage_dir / PRETRAIN_LOG)
        except RunFailed as err:
            self.failures[stage.stage_id] = f"pretraining {stage.stage_id}: {err}"
            raise RunFailed(self.failures[stage.stage_id], err.log) from err
        seconds = round(time.perf_counter() - t0, 1)
        write_marker(stage_dir / DONE, {"overrides": stage.overrides, "seconds": seconds})
        self.say(f"    pretraining finished in {_fmt_seconds(seconds)}")


def _launch(
    launcher: Callable[..., list[dict[str, Any]]],
    runs: Sequence[PlannedRun],
    out_dir: Path,
    runner: Runner,
    task: str,
    redo: bool,
    n_bootstrap: int,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """:func:`run_grid` through a launcher: skipped rows here; ``redo`` and each pretraining stage done
    here, once, before the jobs start (parallel jobs must not redo or race on a shared stage; they find
    it finished); the other runs as jobs. A failed stage is left to the runs' jobs to report and retry."""
    stages = {r.pretrain.stage_id: r.pretrain for r in runs if r.pretrain is not None and not r.skip}
    pretraining = _Pretraining(out_dir, runner, say, redo)
    for stage in stages.values():
        with contextlib.suppress(RunFailed):
            pretraining.ensure(stage)
    if redo:
        for run in runs:
            shutil.rmtree(out_dir / RUNS / run.run_id, ignore_errors=True)
    todo = [r for r in runs if not r.skip]
    launched = launcher(todo, out_dir, runner, task, False, n_bootstrap, say) if todo else []
    rows = {r.run_id: row for r, row in zip(todo, launched, strict=True)}
    return [_skipped_row(task, r, out_dir / RUNS / r.run_id, say) if r.skip else rows[r.run_id] for r in runs]


def _skipped_row(task: str, run: PlannedRun, run_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """The result row of a run planned with a ``skip`` reason (nothing is run or written)."""
    say(f"    skipped: {run.skip}")
    return {**_base_row(task, run, run_dir), "status": "skipped", "error": run.skip}


def _finished_row(
    marker: dict[str, Any], run: PlannedRun, runner: Runner, files: RunFiles, say: Callable[[str], None]
) -> dict[str, Any]:
    """A finished run's result row, in this plan's table order; a parameter count missing from it (the
    count failed then) is counted again and stored."""
    row = {**marker, "row": run.row}
    if row.get("n_params") is None and row.get("status") == "ok":
        row["n_params"] = _count_parameters(runner, run, say)
        if row["n_params"] is not None:
            write_marker(files.done, {**marker, "n_params": row["n_params"]})
    return row


def _write_config(run: PlannedRun, files: RunFiles, runner: Runner, task: str) -> None:
    """``config.json``: the model settings, the seed, the overrides and the commands of ``run``."""
    cmds = runner.commands(run, files.run_dir)
    config = {
        "run_id": run.run_id,
        "task": task,
        "model": run.config.as_dict(),
        "seed": run.seed,
        "overrides": run.overrides,
        "commands": {k: shlex.join(v) for k, v in cmds.items()},
    }
    write_marker(files.config, config)


def _train_stage(run: PlannedRun, files: RunFiles, runner: Runner, say: Callable[[str], None]) -> TrainMarker:
    """Train unless ``train.done`` says it is done (resuming from a checkpoint when there is one)."""
    train_marker = TrainMarker.read(files.train_done)
    if train_marker is not None:
        say("    training finished before; evaluating ...")
        return train_marker
    resume = files.checkpoint.is_file()
    how = " (resuming from models/checkpoint.pt)" if resume else ""
    say(f"    training{how} ... (log: {files.train_log})")
    t0 = time.perf_counter()
    runner.train(run, files.run_dir, resume)
    train_marker = TrainMarker(time.perf_counter() - t0, resume)
    train_marker.write(files.train_done)
    return train_marker


def _count_parameters(runner: Runner, run: PlannedRun, say: Callable[[str], None]) -> int | None:
    try:
        return runner.count_parameters(run)
    except Exception as err:  # noqa: BLE001 - a count is nice to have, never fatal
        say(f"    (parameter count unavailable: {type(err).__name__}: {err})")
        return None


def _run_one(
    run: PlannedRun,
    files: RunFiles,
    runner: Runner,
    task: str,
    n_bootstrap: int,
    say: Callable[[str], None],
    start: float,
    pretraining: _Pretraining | None = None,
) -> dict[str, Any]:
    """Pretrain (once per stage), train, evaluate and collect one run; its result row (``done.json`` or
    ``failed.json`` written)."""
    row = _base_row(task, run, files.run_dir)
    stage = "pretrain"
    try:
        if run.pretrain is not None and pretraining is not None and not files.train_done.is_file():
            pretraining.ensure(run.pretrain)
        stage = "train"
        train_marker = _train_stage(run, files, runner, say)
        stage = "evaluate"
        t0 = time.perf_counter()
        runner.evaluate(run, files.run_dir)
        eval_seconds = time.perf_counter() - t0
        if run.robustness:
            stage = "robustness"
            runner.robustness(run, files.run_dir)
            row["robustness_seconds"] = round(time.perf_counter() - t0 - eval_seconds, 1)
        stage = "collect"
        row.update(collect_run_result(task, run, files.run_dir, n_bootstrap))
        if run.robustness:
            row.update(collect_robustness(task, files.run_dir / ROBUSTNESS_DIR / "robustness.csv"))
        row["n_params"] = _count_parameters(runner, run, say)
        row.update(
            status="ok",
            error="",
            train_seconds=round(math.nan if train_marker.seconds is None else train_marker.seconds, 1),
            eval_seconds=round(eval_seconds, 1),
            wall_time_s=round(
                (train_marker.seconds or 0.0) + eval_seconds + row.get("robustness_seconds", 0.0), 1
            ),
            resumed=train_marker.resumed,
        )
        write_marker(files.done, row)
        name, value = headline_metric(task, row)
        say(f"    done in {_fmt_seconds(row['wall_time_s'])}: test {name} {value}")
    except GridError:
        raise
    except Exception as err:  # noqa: BLE001 - one broken run must not stop the grid
        log = getattr(err, "log", None) or (files.evaluate_log if stage == "evaluate" else files.train_log)
        tail = log_tail(Path(log))
        row.update(
            status="failed",
            stage=stage,
            error=f"{type(err).__name__}: {err}" if not isinstance(err, RunFailed) else str(err),
            log_tail=tail,
            wall_time_s=round(time.perf_counter() - start, 1),
        )
        write_marker(files.failed, row)
        say(f"    FAILED ({stage}): {row['error']}")
        if tail:
            say("    " + "\n    ".join(tail.splitlines()[-8:]))
    return row


def run_grid(
    runs: Sequence[PlannedRun],
    out_dir: str | os.PathLike,
    runner: Runner,
    task: str,
    redo: bool = False,
    n_bootstrap: int = 1000,
    progress: Callable[[str], None] | None = print,
    launcher: Callable[..., list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Run every planned run that is not finished yet; record failures and go on.

    Args:
        runs: from :func:`plan_runs`.
        out_dir: the grid folder (runs go to ``<out_dir>/runs/<run_id>``).
        runner: a :class:`BundleRunner` (or a test double).
        task: ``"adni_ad"`` or ``"brain_age"`` (decides metrics).
        redo: delete and redo every run folder, finished or not.
        n_bootstrap: bootstrap resamples for the test-metric confidence intervals (0: none).
        progress: where progress lines go (None: silent).
        launcher: None: run here, one after another; else it runs them, called as ``launcher(runs,
            out_dir, runner, task, redo, n_bootstrap, say)`` (``grid --launcher slurm``:
            :class:`~mri_slice_transfer.experiments.launchers.SubmititLauncher`).

    Returns:
        one result row per planned run (finished, skipped-as-finished or failed), in plan order.

    Raises:
        GridError: run folders made with other settings (use a new ``out_dir`` or ``redo``).
    """
    say = progress or (lambda _msg: None)
    runs_dir = Path(out_dir) / RUNS
    if not redo:
        problems = _check_settings(runs, runs_dir)
        if problems:
            raise GridError(
                "the grid folder holds runs made with other settings; use another --out or --redo:\n  "
                + "\n  ".join(problems)
            )
    if launcher is not None:
        return _launch(launcher, runs, Path(out_dir), runner, task, redo, n_bootstrap, say)
    todo = [
        r for r in runs if not r.skip and (redo or read_marker(RunFiles.of(runs_dir / r.run_id).done) is None)
    ]
    pretraining = _Pretraining(Path(out_dir), runner, say, redo)
    skipped = sum(1 for r in runs if r.skip)
    finished = len(runs) - len(todo) - skipped
    skip_text = f", {skipped} skipped" if skipped else ""
    say(f"grid: {len(runs)} runs, {finished} already finished{skip_text}, {len(todo)} to run -> {runs_dir}")
    results: list[dict[str, Any]] = []
    durations: list[float] = []
    done_count = 0
    for i, run in enumerate(runs, 1):
        run_dir = runs_dir / run.run_id
        files = RunFiles.of(run_dir)
        head = f"[{i}/{len(runs)}] {run.run_id}"
        if run.skip:
            say(f"{head}: {run.config.describe()}, seed {run.seed}")
            results.append(_skipped_row(task, run, run_dir, say))
            continue
        marker = None if redo else read_marker(files.done)
        if marker is not None:
            say(f"{head}: finished before, skipped")
            results.append(_finished_row(marker, run, runner, files, say))
            continue
        if redo and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        files.failed.unlink(missing_ok=True)
        _write_config(run, files, runner, task)
        left = len(todo) - done_count
        eta = f", about {_fmt_seconds(sum(durations) / len(durations) * left)} left" if durations else ""
        say(f"{head}: {run.config.describe()}, seed {run.seed}{eta}")
        start = time.perf_counter()
        row = _run_one(run, files, runner, task, n_bootstrap, say, start, pretraining)
        durations.append(time.perf_counter() - start)
        done_count += 1
        results.append(row)
    return results
