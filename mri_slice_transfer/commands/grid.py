"""``mri-slice-transfer grid``: run an experiment grid through a bundle and write the paper's tables.

Examples::

    # the paper's Table 1 on your ADNI data lists (19 configurations x 5 seeds)
    mri-slice-transfer grid --preset paper-ad --dataset-dir /data/adni --datalist-dir lists/ad --out grids/ad
    # the quick version on the synthetic demo cohort: headline rows, 1 seed, the demo settings
    mri-slice-transfer grid --preset paper-ad --quick --out grids/ad_quick
    # initialisations (scratch / self-supervised / ImageNet / your file) x label fractions x seeds
    mri-slice-transfer grid --preset transfer --fractions 0.1,0.5,1 --pretrained-file radimagenet_r18.pt \
        --unlabeled /data/unlabeled_scans --dataset-dir /data/adni --out grids/transfer
    mri-slice-transfer grid --preset transfer --quick --out grids/transfer_quick
    # a custom grid
    mri-slice-transfer grid --bundle adni_ad --encoders cnn5,resnet18 --axes axial --seeds 0,1 --out grids/x

Rerunning the same command resumes: finished runs are skipped, broken ones are redone.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mri_slice_transfer.experiments.presets import PRESETS, Preset, expand_grid, get_preset, unavailable

if TYPE_CHECKING:
    from mri_slice_transfer.experiments.runner import BundleRunner, PlannedRun, PretrainStage

__all__ = ["HELP", "QUICK_EPOCHS", "add_arguments", "run", "parse_override"]

#: Epochs per run of ``--quick`` (a smoke-sized grid: 5 demo runs in ~20 min on 2 CPU cores).
QUICK_EPOCHS = 2
#: Pretraining epochs of ``--quick`` (``grid --preset transfer``; see docs/pretraining.md).
QUICK_PRETRAIN_EPOCHS = 2

HELP = "run an experiment grid (encoders x settings x seeds) through a bundle; resumable; paper tables"


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _bool_list(text: str) -> list[bool]:
    out = []
    for t in _csv_list(text):
        low = t.lower()
        if low not in {"true", "false", "yes", "no", "1", "0"}:
            raise argparse.ArgumentTypeError(f"expected true/false values, got {t!r}")
        out.append(low in {"true", "yes", "1"})
    return out


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _fraction_list(text: str) -> list[float]:
    try:
        return [float(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``; VALUE is read as JSON when it parses, else kept as text.

    Args:
        text: one ``--override`` value.

    Returns:
        the bundle override's key and value.
    """
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--override needs KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


#: The custom-grid options: flag, parser, the values it takes.
_CUSTOM_GRID = (
    ("--encoders", _csv_list, "cnn5,resnet18,resnet50,conv3d"),
    ("--axes", _csv_list, "sagittal,coronal,axial"),
    ("--aggregations", _csv_list, "mean,max,attention"),
    ("--position-encodings", _csv_list, "none,learned,sinusoidal"),
    ("--pretrained", _bool_list, "false,true"),
)


def _add_launcher_arguments(how: argparse._ArgumentGroup) -> None:
    """``--launcher`` and ``--slurm-option`` (where the runs run: docs/cluster.md)."""
    how.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: run here, one after another (default); slurm: one cluster job per run (submitit)",
    )
    how.add_argument(
        "--slurm-option",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --launcher slurm (repeatable): submitit parameters, e.g. slurm_partition=gpu "
        "timeout_min=600 gpus_per_node=1 cpus_per_task=8 slurm_array_parallelism=10; cluster=local runs the "
        "jobs as local processes (docs/cluster.md)",
    )


def _add_transfer_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the initialisation x label-budget grids (``--preset transfer``)."""
    transfer = parser.add_argument_group("encoder initialisation and label budget (--preset transfer)")
    transfer.add_argument(
        "--fractions",
        type=_fraction_list,
        default=None,
        help="label fractions (train_fraction) every row runs at, e.g. 0.25,0.5,1 (default: the preset's; "
        "transfer: 0.25,0.5,1, quick 0.25,1)",
    )
    transfer.add_argument(
        "--pretrained-file",
        default=None,
        metavar="PATH",
        help="adds a row per model and fraction whose encoder starts from this weights file",
    )
    transfer.add_argument(
        "--unlabeled",
        default=None,
        help="extra unlabeled scans for the self-supervised pretraining (folder, glob or CSV; checked "
        "against the validation and test lists)",
    )
    transfer.add_argument(
        "--robustness",
        default=None,
        metavar="SEVERITIES",
        help="a third stage per run: the best model under robustness.json at these severities (e.g. 2; "
        "default: the preset's, architectures: 2)",
    )
    transfer.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help=f"epochs of each pretraining stage (default: pretrain.json's; quick: {QUICK_PRETRAIN_EPOCHS})",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mri-slice-transfer grid``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:" + (__doc__ or "").split("Examples::", 1)[-1]
    parser.add_argument("--out", required=True, help="grid folder (runs/, results.csv, table.md, plot.png)")
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="the rows of the paper's Table 1 (paper-ad) or Table 2 (paper-brain-age)",
    )
    what.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, the preset's headline rows only, the bundle's demo epochs (or --epochs): for the demo "
        "cohort and CI",
    )
    what.add_argument("--all-rows", action="store_true", help="with --quick: every row of the preset")
    what.add_argument(
        "--seeds",
        type=_int_list,
        default=None,
        help="comma-separated (default: 0,1,2,3,4 as the paper's 5 runs; quick: 0)",
    )
    what.add_argument(
        "--bundle", default=None, help="bundle name under bundles/ or a bundle folder (default: the preset's)"
    )
    for flag, kind, values in _CUSTOM_GRID:
        what.add_argument(flag, type=kind, default=None, help=f"custom grid: {values}")
    _add_transfer_arguments(parser)
    how = parser.add_argument_group("how to run")
    how.add_argument(
        "--dataset-dir", default=None, help="dataset root (bundle dataset_dir; default: demo cohort)"
    )
    how.add_argument(
        "--datalist-dir", default=None, help="folder of train/val/test.csv (bundle datalist_dir)"
    )
    how.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per run (default: the bundle's; quick: {QUICK_EPOCHS}, to fit ~20 min on 2 cores)",
    )
    how.add_argument(
        "--override",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra bundle override for every run, VALUE read as JSON if it parses (repeatable), "
        "e.g. batch_size=4",
    )
    how.add_argument(
        "--strict-pretrained",
        action="store_true",
        help="pretrained rows fail without ImageNet weights (default: 'auto' falls back to random init and "
        "results.csv records encoder_init)",
    )
    _add_launcher_arguments(how)
    how.add_argument("--timeout", type=float, default=None, help="seconds per train / evaluate step")
    how.add_argument("--redo", action="store_true", help="delete and redo every run of the grid")
    how.add_argument("--dry-run", action="store_true", help="print the runs and their commands; run nothing")
    how.add_argument(
        "--summarize-only",
        action="store_true",
        help="only rewrite results.csv, table.md, plot.png from runs/",
    )
    how.add_argument(
        "--n-bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for test CIs (default: %(default)s)",
    )
    how.add_argument("--no-plot", action="store_true", help="skip plot.png")


@dataclass(frozen=True)
class GridPlan:
    """What the options ask for.

    Attributes:
        bundle: the bundle folder.
        runs: every run of the grid, in table order.
        task: the bundle's task.
        preset: the preset, if one was chosen.
        notes: what the custom grid left out, for the user.
        stages: the pretraining stages of ``ssl`` rows (``--preset transfer``).
    """

    bundle: Path
    runs: list[PlannedRun]
    task: str
    preset: Preset | None
    notes: list[str]
    stages: list[PretrainStage] = field(default_factory=list)


def _plan(args: argparse.Namespace) -> GridPlan:
    """The runs the options ask for (see :class:`GridPlan`)."""
    from mri_slice_transfer.experiments.runner import GridError, bundle_task, find_bundle, plan_runs
    from mri_slice_transfer.experiments.transfer import plan_transfer, with_fractions

    custom = [args.encoders, args.axes, args.aggregations, args.position_encodings, args.pretrained]
    preset = get_preset(args.preset) if args.preset else None
    notes: list[str] = []
    if preset is not None and any(v is not None for v in custom):
        raise GridError("use either --preset or the custom grid options (--encoders, --axes, ...), not both")
    if preset is None and args.encoders is None:
        raise GridError(
            "choose --preset paper-ad / paper-brain-age, or a custom grid with --bundle and --encoders"
        )
    bundle_name = args.bundle or (preset.bundle if preset else None)
    if bundle_name is None:
        raise GridError("a custom grid needs --bundle (adni_ad, ukbb_brain_age or a bundle folder)")
    bundle = find_bundle(bundle_name)
    task = bundle_task(bundle)
    if preset is not None:
        if preset.task != task:
            raise GridError(f"preset {preset.name} is for task {preset.task}, bundle {bundle} is {task}")
        configs = list(preset.headline_rows() if args.quick and not args.all_rows else preset.rows)
    else:
        configs, notes = expand_grid(
            args.encoders,
            args.axes or ["sagittal"],
            args.aggregations or ["mean"],
            args.position_encodings or ["none"],
            args.pretrained or [False],
        )
    seeds = (
        args.seeds
        if args.seeds is not None
        else ([0] if args.quick else list(preset.seeds if preset else range(5)))
    )
    # --quick keeps the bundle's demo settings (class balancing included: in 2 epochs a plain-BCE model
    # predicts CN for every scan, balanced accuracy 0.5 for every row); full runs use the paper's pins.
    base: dict[str, Any] = dict(preset.overrides) if preset is not None and not args.quick else {}
    if args.dataset_dir:
        base["dataset_dir"] = str(Path(args.dataset_dir).expanduser().resolve())
    if args.datalist_dir:
        base["datalist_dir"] = str(Path(args.datalist_dir).expanduser().resolve())
    epochs = args.epochs
    if epochs is None and args.quick:
        epochs = preset.quick_epochs if preset is not None and preset.quick_epochs else QUICK_EPOCHS
    if epochs is not None:
        if epochs < 1:
            raise GridError(f"--epochs must be at least 1, got {epochs}")
        base.update(epochs=epochs, demo_epochs=epochs)
    base.update(dict(args.override))
    fractions = args.fractions or _preset_fractions(preset, args.quick)
    if fractions:
        configs = with_fractions(configs, fractions)
    if (preset is not None and preset.fractions) or args.pretrained_file:
        plan = plan_transfer(
            configs, seeds, args.out, base, _pretrain_overrides(args), pretrained_file=args.pretrained_file
        )
        return GridPlan(bundle, plan.runs, task, preset, notes + plan.notes, plan.stages)
    runs = plan_runs(configs, seeds, base, strict_pretrained=args.strict_pretrained)
    runs, skipped = _with_stages(runs, args.robustness or (preset.robustness if preset else ""))
    return GridPlan(bundle, runs, task, preset, notes + skipped)


def _with_stages(runs: list[PlannedRun], robustness: str) -> tuple[list[PlannedRun], list[str]]:
    """A robustness stage at ``robustness`` (severities; ``""``: none) on every run; rows this checkout
    cannot build planned as skipped."""
    out, notes = [], []
    for run in runs:
        reason = unavailable(run.config)
        if reason:
            notes.append(f"{run.config.key()} skipped: {reason}")
        out.append(replace(run, robustness=str(robustness), skip=reason))
    return out, sorted(set(notes))


def _preset_fractions(preset: Preset | None, quick: bool) -> tuple[float, ...]:
    """The label fractions of a preset (``()``: its rows as they are)."""
    if preset is None:
        return ()
    return preset.quick_fractions if quick and preset.quick_fractions else preset.fractions


def _pretrain_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Overrides of every pretraining stage: the unlabeled scans and the epochs."""
    from mri_slice_transfer.experiments.runner import GridError

    out: dict[str, Any] = {}
    if args.unlabeled:
        out["unlabeled"] = str(Path(args.unlabeled).expanduser().resolve())
    epochs = args.pretrain_epochs
    if epochs is None and args.quick:
        epochs = QUICK_PRETRAIN_EPOCHS
    if epochs is not None:
        if epochs < 1:
            raise GridError(f"--pretrain-epochs must be at least 1, not {epochs}")
        out.update(epochs=epochs, demo_epochs=epochs)
    return out


def _preflight(args: argparse.Namespace, task: str) -> None:
    """Check the data lists once (every problem, incl. leakage) before starting any run; with
    ``--unlabeled``, also the unlabeled scans against the validation and test lists (the pretraining
    stages' leakage guard, run once up front)."""
    if not (args.dataset_dir or args.datalist_dir):
        print("data: the bundle's synthetic demo cohort (the first run generates it once into the cache)")
        return
    from mri_slice_transfer.data.datalist import read_split_datalists

    frames = read_split_datalists(args.datalist_dir or args.dataset_dir, task, dataset_dir=args.dataset_dir)
    print("data lists OK: " + ", ".join(f"{k} {len(v)} scans" for k, v in frames.items()))
    if getattr(args, "unlabeled", None):
        from mri_slice_transfer.engine.pretrain_data import pretraining_data

        data = pretraining_data(task, args.datalist_dir, args.dataset_dir, args.unlabeled)
        print(f"unlabeled scans OK: {len(data.unlabeled)} (none in the validation or test list)")


def _print_dry_run(plan: GridPlan, runner: BundleRunner, out: Path) -> None:
    """The runs of ``plan`` and their command lines (``--dry-run``)."""
    print(f"{len(plan.runs)} runs with bundle {plan.bundle} (task {plan.task}) into {out / 'runs'}:")
    for stage in plan.stages:
        print(f"- pretraining stage {stage.stage_id} (once, before the runs that start from it):")
        cmd = runner.pretrain_command(stage, out / "pretrain" / stage.stage_id)
        print(f"    pretrain: {shlex.join(cmd)}")
    for r in plan.runs:
        if r.skip:
            print(f"- {r.run_id}: skipped ({r.skip})")
            continue
        cmds = runner.commands(r, out / "runs" / r.run_id)
        print(f"- {r.run_id}: {r.config.describe()}, seed {r.seed}")
        for stage, cmd in cmds.items():
            print(f"    {stage}: {shlex.join(cmd)}")


def _report(results: list[dict[str, Any]], paths: dict[str, Path]) -> int:
    """Print what was written and which runs failed; the exit code (1 if any run failed; skipped runs,
    planned so with a reason, are not failures)."""
    failed = [r for r in results if r.get("status") not in ("ok", "skipped")]
    skipped = sum(r.get("status") == "skipped" for r in results)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed (errors in results.csv and runs/*/failed.json):")
        for r in failed:
            print(f"  - {r.get('run_id')}: {r.get('error')}")
        return 1
    if skipped:
        print(f"{len(results) - skipped} runs finished, {skipped} skipped (the reasons are in table.md)")
        return 0
    print(f"all {len(results)} runs finished")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``mri-slice-transfer grid``; exit code 1 if any run failed."""
    from mri_slice_transfer.errors import DataListError
    from mri_slice_transfer.experiments.launchers import make_launcher
    from mri_slice_transfer.experiments.run_folder import collect_existing
    from mri_slice_transfer.experiments.runner import BundleRunner, GridError, run_grid
    from mri_slice_transfer.experiments.summary import summarize

    try:
        plan = _plan(args)
    except (GridError, ValueError) as err:
        print(f"grid: {err}")
        return 2
    out = Path(args.out)
    for note in plan.notes:
        print(f"note: {note}")
    runner = BundleRunner(plan.bundle, timeout=args.timeout)
    if args.dry_run:
        _print_dry_run(plan, runner, out)
        return 0
    if args.summarize_only:
        results = collect_existing(out)
        if not results:
            print(f"grid: no finished or failed runs under {out / 'runs'}")
            return 2
    else:
        try:
            _preflight(args, plan.task)
            launcher = make_launcher(args.launcher, out, dict(args.slurm_option))
            results = run_grid(
                plan.runs,
                out,
                runner,
                plan.task,
                redo=args.redo,
                n_bootstrap=args.n_bootstrap,
                launcher=launcher,
            )
        except (GridError, DataListError) as err:
            print(f"grid: {err}")
            return 2
    paths = summarize(results, out, plan.task, preset=plan.preset, plot=not args.no_plot)
    return _report(results, paths)
