# ruff: noqa: E501  (the expected table.md lines are as long as the real ones)
"""Fast tests of the grid's files a researcher reads (experiments/summary.py, tables.py, bootstrap.py):
the exact text of ``table.md``, the column order of ``results.csv``, the files ``summarize`` writes and
the bootstrap's edge cases, for mutation testing of these modules (scripts/mutation.sh, docs/testing.md).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from test_grid import synthetic_results

from mri_slice_transfer.experiments.bootstrap import (
    bootstrap_ci,
    bootstrap_from_predictions,
    headline_metric,
    predictions_arrays,
    resample_metrics,
)
from mri_slice_transfer.experiments.presets import PRESETS
from mri_slice_transfer.experiments.summary import RESULT_COLUMNS, results_frame, summarize
from mri_slice_transfer.experiments.tables import aggregate, format_report, format_table


def _as_read_back(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as ``summarize`` hands it on: written to ``results.csv`` and read back."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


AD_REPORT_HEAD = """\
# AD detection (AD vs CN), test set

Data: the synthetic demo cohort.
**Synthetic data: these numbers test the pipeline; they are not comparable to the paper's.**

| Encoder | Pos. Enc. | Pretrained | Axis | Bal. Accuracy | F1 Score | Avg. Precision | # Params | Seeds |
|---|---|---|---|---:|---:|---:|---:|---:|
| 3D-CNN | - | ✗ | - | 82.00 ± 2.00 | 77.00 ± 2.00 | 84.00 ± 2.00 | 2.95M | 3 |
| 2D-CNN (Mean) | ✓ | ✗ | sagittal | 72.00 ± 2.83 | 67.00 ± 2.83 | 74.00 ± 2.83 | 1.02M | 2 (1 failed) |
| 2D-ResNet-18 (Mean) | ✗ | ✓ | axial | **88.00** ± 2.00 | **83.00** ± 2.00 | **90.00** ± 2.00 | 11.19M | 3 |
| 2D-ResNet-18 (Mean) | ✗ | ✓ † | coronal | 75.00 | 70.00 | 77.00 | 11.19M | 1 |

Mean ± std (sample std, ddof=1) over seeds; best mean per column in bold. AD metrics in %.
A value without ± comes from a single seed.
Failed seeds are left out of mean and std; their errors are in results.csv.
† ImageNet weights were requested but not used by every seed (encoder initialisation: random (ImageNet \
weights unavailable)); see `encoder_init` in results.csv.

## Per run (95% bootstrap CI over test subjects)

| Run | Seed | Status | Encoder init | Bal. Accuracy [95% CI] | F1 Score [95% CI] | Avg. Precision [95% CI] \
| Best epoch | Wall time (s) |
|---|---|---|---|---|---|---|---|---|
| conv3d_-_seed0 | 0 | ok | scratch | 80.00 [70.00, 85.00] | 75.00 [n/a, n/a] | 82.00 [n/a, n/a] | 3 | 12 |
| conv3d_-_seed1 | 1 | ok | scratch | 82.00 [72.00, 87.00] | 77.00 [n/a, n/a] | 84.00 [n/a, n/a] | 3 | 12 |
| conv3d_-_seed2 | 2 | ok | scratch | 84.00 [74.00, 89.00] | 79.00 [n/a, n/a] | 86.00 [n/a, n/a] | 3 | 12 |
| cnn5_sagittal_seed0 | 0 | ok | scratch | 70.00 [60.00, 75.00] | 65.00 [n/a, n/a] | 72.00 [n/a, n/a] | 3 | 12 |
| cnn5_sagittal_seed1 | 1 | ok | scratch | 74.00 [64.00, 79.00] | 69.00 [n/a, n/a] | 76.00 [n/a, n/a] | 3 | 12 |
| cnn5_sagittal_seed2 | 2 | failed |  |  |  |  | 3 | 12 |
| resnet18_axial_seed0 | 0 | ok | imagenet | 86.00 [76.00, 91.00] | 81.00 [n/a, n/a] | 88.00 [n/a, n/a] | 3 | 12 |
| resnet18_axial_seed1 | 1 | ok | imagenet | 88.00 [78.00, 93.00] | 83.00 [n/a, n/a] | 90.00 [n/a, n/a] | 3 | 12 |
| resnet18_axial_seed2 | 2 | ok | imagenet | 90.00 [80.00, 95.00] | 85.00 [n/a, n/a] | 92.00 [n/a, n/a] | 3 | 12 |
| resnet18_coronal_seed0 | 0 | ok | random (ImageNet weights unavailable) | 75.00 [65.00, 80.00] \
| 70.00 [n/a, n/a] | 77.00 [n/a, n/a] | 3 | 12 |

## The paper (Paper Table 1 (ADNI): higher is better; model selection on validation balanced accuracy; \
mean ± std over 5 seeds.)

| Encoder | Pos. Enc. | Pretrained | Axis | Bal. Accuracy | F1 Score | Avg. Precision |
|---|---|---|---|---|---|---|
| 3D-CNN | - | ✗ | - | 88.40 ± 0.703 | 84.44 ± 1.028 | 92.33 ± 0.492 |
| 2D-CNN (Mean) | ✗ | ✗ | sagittal | 87.53 ± 1.311 | 84.40 ± 1.707 | 94.86 ± 0.946 |
"""

BRAIN_AGE_TABLE = """\
| Encoder | Pos. Enc. | Pretrained | Axis | Mean Absolute Err. (MAE) | Root Mean Square Err. (RMSE) \
| # Params | Seeds |
|---|---|---|---|---:|---:|---:|---:|
| 3D-CNN | - | ✗ | - | 8.200 ± 0.200 | 9.840 ± 0.240 | 2.95M | 3 |
| 2D-CNN (Mean) | ✓ | ✗ | sagittal | **7.200** ± 0.283 | **8.640** ± 0.339 | 1.02M | 2 (1 failed) |
| 2D-ResNet-18 (Mean) | ✗ | ✓ | axial | 8.800 ± 0.200 | 10.560 ± 0.240 | 11.19M | 3 |
| 2D-ResNet-18 (Mean) | ✗ | ✓ † | coronal | 7.500 | 9.000 | 11.19M | 1 |

Mean ± std (sample std, ddof=1) over seeds; best mean per column in bold. Errors in years.
"""


def test_table_md_of_a_grid_is_exactly_the_documented_layout() -> None:
    report = format_report(_as_read_back(synthetic_results()), "adni_ad", preset=PRESETS["paper-ad"])
    assert report.startswith(AD_REPORT_HEAD)
    paper = report[len(AD_REPORT_HEAD) :].splitlines()
    assert len(paper) == len(PRESETS["paper-ad"].rows) - 2  # every paper row, one line each
    assert (
        paper[-1] == "| 2D-ResNet-18 (Mean) | ✓ | ✓ | axial | 88.60 ± 2.058 | 84.52 ± 2.389 | 92.56 ± 0.563 |"
    )

    brain = format_report(_as_read_back(synthetic_results("brain_age")), "brain_age", title="Age")
    assert brain.startswith("# Age\n\nData: the synthetic demo cohort.\n")
    assert BRAIN_AGE_TABLE in brain  # lower is better: the smallest errors are bold
    assert "\n| 3D-CNN | - | ✗ | 2.792 ± 0.032 | 3.521 ± 0.023 | ~ 3M |\n" in format_report(
        synthetic_results("brain_age"), "brain_age", preset=PRESETS["paper-brain-age"]
    )  # the paper's brain-age table has a parameter column, no axis column (all sagittal)
    assert (
        "# Params"
        not in format_report(synthetic_results(), "adni_ad", preset=PRESETS["paper-ad"]).split(
            "## The paper"
        )[1]
    )


def _edge_rows() -> pd.DataFrame:
    """Real data sources, one slice axis, a tie, a configuration whose every seed failed, small models."""
    base = {"task": "adni_ad", "axis": "sagittal", "aggregation": "mean", "status": "ok", "seed": 0}
    rows = [
        dict(base, model="A", encoder="cnn5", position_encoding="sinusoidal", pretrained="False", n_params=512,
             test_balanced_accuracy=0.80104, test_f1=0.5, data="adni", run_id="a", best_epoch=2, wall_time_s=3.4),
        dict(base, model="B", encoder="cnn5", position_encoding=None, pretrained="no", n_params=25_000,
             test_balanced_accuracy=0.80096, test_f1=0.5, test_average_precision=0.9, data="oasis", run_id="b"),
        dict(base, model="C", encoder="resnet18", position_encoding="none", pretrained="TRUE", n_params=99_999,
             status="failed", run_id="c", best_epoch=None),
        dict(base, model="D", encoder="conv3d", axis="-", position_encoding="-", pretrained=0, n_params=None,
             test_balanced_accuracy=0.5, test_f1=0.25, data="adni", run_id="d"),
    ]  # fmt: skip
    return _as_read_back(pd.DataFrame(rows))


EDGE_TABLE = """\
# Test results (adni_ad)

Data: adni, oasis.

| Encoder | Pos. Enc. | Pretrained | Bal. Accuracy | F1 Score | Avg. Precision | # Params | Seeds |
|---|---|---|---:|---:|---:|---:|---:|
| A | ✓ (sinusoidal) | ✗ | **80.10** | **50.00** | n/a | 512 | 1 |
| B | ✗ | ✗ | **80.10** | **50.00** | **90.00** | 25.0K | 1 |
| C | ✗ | ✓ | failed | failed | failed | - | 0 (1 failed) |
| D | - | ✗ | 50.00 | 25.00 | **90.00** | - | 1 |

Mean ± std (sample std, ddof=1) over seeds; best mean per column in bold. AD metrics in %.
A value without ± comes from a single seed.
All slice models use sagittal slices.
Failed seeds are left out of mean and std; their errors are in results.csv.

## Per run (95% bootstrap CI over test subjects)
"""


def test_table_md_marks_ties_failed_rows_small_models_and_a_single_axis() -> None:
    frame = _edge_rows()
    frame.loc[3, "test_average_precision"] = 0.9  # D ties B in average precision: both bold
    report = format_report(frame, "adni_ad")
    assert report.startswith(EDGE_TABLE), report
    runs = report.split("## Per run (95% bootstrap CI over test subjects)\n\n")[1].splitlines()
    assert runs[2] == "| a | 0 | ok |  | 80.10 [n/a, n/a] | 50.00 [n/a, n/a] | n/a [n/a, n/a] | 2 | 3 |"
    assert runs[4] == "| c | 0 | failed |  |  |  |  |  |  |"  # no best epoch, no wall time
    assert len(runs) == 2 + 4


def test_empty_grid_table_says_no_runs_under_its_title() -> None:
    assert format_table(pd.DataFrame(), "adni_ad", title="AD") == "**AD**\n\n(no runs)\n"
    assert format_table(pd.DataFrame(), "adni_ad") == "(no runs)\n"


def test_aggregate_counts_seeds_and_reads_pretrained_spellings() -> None:
    agg = aggregate(_edge_rows(), "adni_ad")
    assert list(agg["model"]) == ["A", "B", "C", "D"]
    assert list(agg["pretrained"]) == [False, False, True, False]
    assert list(agg["n_ok"]) == [1, 1, 0, 1] and list(agg["n_failed"]) == [0, 0, 1, 0]
    assert agg.loc[0, "balanced_accuracy_mean"] == pytest.approx(0.80104)
    assert math.isnan(agg.loc[0, "balanced_accuracy_std"]) and agg.loc[0, "average_precision_n"] == 0
    assert not agg["fallback"].any()  # "TRUE" pretrained, but no seed ran: nothing to flag


def test_results_csv_columns_run_settings_then_metrics_with_their_intervals_then_the_rest() -> None:
    row = {
        "log_tail": "x", "extra": 1, "test_roc_auc_ci_high": 0.9, "test_roc_auc": 0.8, "n_test_subjects": 7,
        "val_f1": 0.5, "test_n_scans": 9, "test_roc_auc_ci_low": 0.7, "status": "ok", "run_id": "r",
        "bootstrap_unit": "subject", "test_f1": 0.4, "val_balanced_accuracy": 0.6, "row": 0, "seed": 1,
        "test_threshold_logit": 0.0, "error": "", "bootstrap_resamples": 10,
    }  # fmt: skip
    assert list(results_frame([row]).columns) == [
        "run_id", "status", "seed",
        "val_balanced_accuracy", "val_f1",
        "test_f1", "test_roc_auc", "test_roc_auc_ci_low", "test_roc_auc_ci_high", "test_threshold_logit",
        "test_n_scans",
        "n_test_subjects", "bootstrap_resamples", "bootstrap_unit",
        "extra",
        "error", "log_tail", "row",
    ]  # fmt: skip
    assert list(results_frame([]).columns) == list(RESULT_COLUMNS)


def test_summarize_writes_results_table_and_plot_from_the_written_csv(tmp_path) -> None:
    rows = synthetic_results().to_dict("records")
    paths = summarize(rows, tmp_path / "grid", "adni_ad", title="T", plot=False)
    assert paths == {"results": tmp_path / "grid" / "results.csv", "table": tmp_path / "grid" / "table.md"}
    written = pd.read_csv(paths["results"])
    assert list(written.columns) == list(results_frame(rows).columns) and len(written) == len(rows)
    assert paths["table"].read_text(encoding="utf-8") == format_report(written, "adni_ad", title="T")
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == ["results.csv", "table.md"]
    assert not paths["results"].read_bytes().count(b"\r\n")

    paths = summarize(written, tmp_path / "g2", "brain_age", preset=PRESETS["paper-brain-age"])
    assert paths["plot"] == tmp_path / "g2" / "plot.png" and paths["plot"].stat().st_size > 0
    assert "## The paper" in paths["table"].read_text(encoding="utf-8")


def test_bootstrap_interval_bounds_are_the_central_percentiles_and_nan_when_mostly_undefined() -> None:
    pred = np.array([30.0, 40.0, 50.0, 60.0, 70.0])
    age = np.array([31.0, 38.0, 55.0, 60.0, 72.0])
    ci = bootstrap_ci("brain_age", pred, age, n_bootstrap=400, seed=3, level=0.8)
    assert set(ci) == {"mae", "rmse", "pearson_r"}
    lo, hi = ci["mae"]
    assert 0.0 < lo < hi < 5.0
    wider = bootstrap_ci("brain_age", pred, age, n_bootstrap=400, seed=3, level=0.95)["mae"]
    assert wider[0] < lo and wider[1] > hi
    assert bootstrap_ci("brain_age", pred, age, n_bootstrap=400, seed=3, level=0.8)["mae"] == (lo, hi)
    assert bootstrap_ci("brain_age", pred, age, n_bootstrap=400, seed=4, level=0.8)["mae"] != (lo, hi)
    # one scan per resample group of 2 values: Pearson r is undefined in most resamples of 2 scans
    r = bootstrap_ci("brain_age", [1.0, 2.0], [1.0, 3.0], n_bootstrap=50)["pearson_r"]
    assert all(math.isnan(v) for v in r)
    empty = bootstrap_ci("adni_ad", [], [])
    assert set(empty) >= {"balanced_accuracy", "roc_auc"} and all(math.isnan(v) for v in empty["roc_auc"])
    assert all(math.isnan(v) for v in bootstrap_ci("brain_age", pred, age, n_bootstrap=0)["mae"])


def test_bootstrap_of_a_predictions_csv_reads_ok_rows_by_subject(tmp_path) -> None:
    csv = tmp_path / "test_predictions.csv"
    pd.DataFrame(
        {
            "subject_id": ["s1", "s1", "s2", "s3", "s4"],
            "label": [1, 1, 0, 0, 1],
            "logit": [2.0, 1.0, -1.0, 0.5, 3.0],
            "status": ["ok", "ok", "ok", "ok", "skipped"],
        }
    ).to_csv(csv, index=False)
    pred, label, groups = predictions_arrays("adni_ad", csv)
    assert pred.tolist() == [2.0, 1.0, -1.0, 0.5] and label.tolist() == [1, 1, 0, 0]
    assert groups.tolist() == ["s1", "s1", "s2", "s3"]
    row = bootstrap_from_predictions("adni_ad", csv, n_bootstrap=20, seed=1)
    assert (
        row["n_test_subjects"] == 3
        and row["bootstrap_resamples"] == 20
        and row["bootstrap_unit"] == "subject"
    )
    assert {"test_roc_auc_ci_low", "test_roc_auc_ci_high", "test_f1_ci_low"} <= set(row)

    old = tmp_path / "old.csv"  # an older CSV: a probability column, no subject ids or status, an error row
    old.write_text("label,probability\n1,0.5\n0,0.25\n1,\n1,1.0\n0,0.0\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # saturated probabilities are the logits +-inf, without a warning
        pred, _, groups = predictions_arrays("adni_ad", old)
    assert pred.tolist() == [0.0, pytest.approx(math.log(1 / 3)), math.inf, -math.inf]
    assert groups.tolist() == ["0", "1", "2", "3"]
    with pytest.raises(KeyError, match=r"old.csv: missing column\(s\) predicted_age"):
        predictions_arrays("brain_age", old)
    old.write_text("x\n1\n", encoding="utf-8")
    with pytest.raises(KeyError, match=r"missing column\(s\) label, probability"):
        predictions_arrays("adni_ad", old)

    named = tmp_path / "named.csv"  # subject ids that pandas would read as missing values by default
    named.write_text("subject_id,label,logit\nNA,1,1.0\nnull,0,-1.0\nNA,1,2.0\n", encoding="utf-8")
    assert predictions_arrays("adni_ad", named)[2].tolist() == ["NA", "null", "NA"]
    with pytest.raises(FileNotFoundError, match="nope.csv: test predictions not found"):
        predictions_arrays("adni_ad", tmp_path / "nope.csv")


def test_headline_metric_shows_the_key_metric_and_its_interval() -> None:
    row = {"test_mae": 3.14159, "test_mae_ci_low": 2.5, "test_mae_ci_high": None}
    assert headline_metric("brain_age", row) == ("mae", "3.142 (95% CI 2.500-nan)")
    row["test_mae_ci_high"] = 4.0
    assert headline_metric("brain_age", row) == ("mae", "3.142 (95% CI 2.500-4.000)")
    assert headline_metric("adni_ad", {"test_balanced_accuracy": math.nan}) == (
        "balanced_accuracy",
        "nan (95% CI nan-nan)",
    )


def test_bootstrap_of_a_predictions_csv_defaults_to_1000_subject_resamples_with_seed_0(tmp_path) -> None:
    rng = np.random.default_rng(3)
    age = np.repeat(rng.uniform(50, 80, 12), 2)  # 12 subjects, two scans each
    pred = age + rng.normal(0, 4, 24)
    subjects = np.repeat([f"s{i}" for i in range(12)], 2)
    csv = tmp_path / "test_predictions.csv"
    pd.DataFrame({"subject_id": subjects, "label": age, "predicted_age": pred}).to_csv(csv, index=False)
    row = bootstrap_from_predictions("brain_age", csv)
    by_subject = bootstrap_ci("brain_age", pred, age, subjects, n_bootstrap=1000, seed=0)
    assert (row["test_mae_ci_low"], row["test_mae_ci_high"]) == pytest.approx(by_subject["mae"], abs=1e-12)
    assert row["bootstrap_resamples"] == 1000 and row["n_test_subjects"] == 12
    by_scan = bootstrap_ci("brain_age", pred, age, None, n_bootstrap=1000, seed=0)
    assert by_scan["mae"] != pytest.approx(by_subject["mae"])  # the test can tell the unit apart


def test_summarize_creates_a_nested_grid_folder_and_draws_the_plot_with_the_tables_preset_and_title(
    tmp_path, monkeypatch
) -> None:
    import mri_slice_transfer.experiments.summary as summary_module

    drawn: list[tuple] = []

    def plot_results(frame, task, path, preset=None, title=None):
        drawn.append((task, path, preset, title))
        return path

    monkeypatch.setattr(summary_module, "plot_results", plot_results)
    preset = PRESETS["paper-brain-age"]
    out = tmp_path / "grids" / "age" / "v1"  # none of these folders exists yet
    paths = summarize(synthetic_results("brain_age"), out, "brain_age", preset=preset, title="Brain age, v1")
    assert paths["results"].is_file() and paths["table"].is_file()
    assert drawn == [("brain_age", out / "plot.png", preset, "Brain age, v1")]  # plot and table.md agree


def test_bootstrap_defaults_and_the_half_defined_rule(monkeypatch) -> None:
    import mri_slice_transfer.experiments.bootstrap as bootstrap_module

    rng = np.random.default_rng(5)
    age = rng.uniform(50, 80, 16)
    pred = age + rng.normal(0, 4, 16)
    explicit = bootstrap_ci("brain_age", pred, age, n_bootstrap=1000, seed=0)
    assert bootstrap_ci("brain_age", pred, age) == explicit  # 1000 resamples, seed 0 by default
    lo, hi = bootstrap_ci("brain_age", pred, age, n_bootstrap=1)["mae"]
    assert math.isfinite(lo) and lo == hi  # one resample: a degenerate interval, not NaN

    logits, labels = np.array([-1.0, 0.2, 0.4, 2.0]), np.array([0.0, 1.0, 0.0, 1.0])
    counts = np.ones((1, 4), dtype=np.int64)
    assert resample_metrics("adni_ad", logits, labels, counts) == resample_metrics(
        "adni_ad", logits, labels, counts, 0.5
    )  # the default threshold is the probability 0.5

    def half_defined(task, pred, label, counts, threshold, exact=False):
        return {
            "mae": np.array([1.0, np.nan, 3.0, np.nan]),
            "rmse": np.full(4, np.nan),
            "pearson_r": np.ones(4),
        }

    monkeypatch.setattr(bootstrap_module, "resample_metrics", half_defined)
    ci = bootstrap_ci("brain_age", pred, age, n_bootstrap=4, level=0.5)
    assert ci["mae"] == (1.5, 2.5)  # exactly half the resamples defined: still an interval
    assert all(math.isnan(v) for v in ci["rmse"])


def test_run_table_of_a_minimal_results_file_leaves_missing_id_seed_and_status_cells_empty() -> None:
    from mri_slice_transfer.experiments.tables import format_run_table

    table = format_run_table(pd.DataFrame({"test_mae": [3.0]}), "brain_age")
    row = table.splitlines()[2]
    assert row.startswith("|  |  |  |  |"), (
        row
    )  # no "None": the run id, seed, status and encoder init are empty


def test_paper_table_shows_params_and_the_axis_column_only_when_it_tells_rows_apart() -> None:
    import dataclasses

    from mri_slice_transfer.experiments.tables import format_paper_table

    age = format_paper_table(PRESETS["paper-brain-age"]).splitlines()
    assert age[0].endswith("| # Params |")  # the paper's parameter counts, last
    assert "Axis" not in age[0]  # one slice axis (sagittal): no column
    ad = PRESETS["paper-ad"]
    keep = [i for i, c in enumerate(ad.rows) if c.is_conv3d or c.axis in ("axial", "coronal")]
    two = dataclasses.replace(
        ad, rows=tuple(ad.rows[i] for i in keep), paper=tuple(ad.paper[i] for i in keep)
    )
    head = format_paper_table(two).splitlines()[0]
    assert "| Axis |" in head and "# Params" not in head  # two axes: the column; no parameter counts given


def test_report_data_line_without_a_data_column_and_with_several_data_sets() -> None:
    frame = synthetic_results().drop(columns=["data"])
    assert "Data:" not in format_report(frame, "adni_ad")
    frame["data"] = ["synthetic demo cohort (seed 0)"] * (len(frame) - 1) + ["ADNI (prepared)"]
    report = format_report(frame, "adni_ad")
    assert "Data: ADNI (prepared), synthetic demo cohort (seed 0)." in report  # both named, not "the demo"


def test_table_with_two_slice_axes_shows_the_axis_column_with_a_dash_for_the_3d_model() -> None:
    """Two slice axes: an Axis column, "-" for the 3D model whatever its axis setting; the title line;
    an empty position encoding is ✗; parameters in M from 100 000, in K from 1 000."""
    config = {"aggregation": "mean", "pretrained": False, "status": "ok"}
    rows = [
        {**config, "model": "3D-CNN", "encoder": "conv3d", "axis": "axial", "position_encoding": "-", "n_params": 1_005_001,
         "test_balanced_accuracy": 0.8, "test_f1": 0.7, "test_average_precision": 0.9},
        {**config, "model": "R (Mean)", "encoder": "resnet18", "axis": "axial", "position_encoding": "", "n_params": 100_000,
         "test_balanced_accuracy": 0.85, "test_f1": 0.75, "test_average_precision": 0.95},
        {**config, "model": "R (Mean)", "encoder": "resnet18", "axis": "coronal", "position_encoding": "learned", "n_params": 1_050,
         "test_balanced_accuracy": 0.75, "test_f1": 0.65, "test_average_precision": 0.85},
    ]  # fmt: skip
    assert format_table(pd.DataFrame(rows), "adni_ad", title="T").splitlines()[:7] == [
        "**T**",
        "",
        "| Encoder | Pos. Enc. | Pretrained | Axis | Bal. Accuracy | F1 Score | Avg. Precision | # Params | Seeds |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
        "| 3D-CNN | - | ✗ | - | 80.00 | 70.00 | 90.00 | 1.01M | 1 |",
        "| R (Mean) | ✗ | ✗ | axial | **85.00** | **75.00** | **95.00** | 0.10M | 1 |",
        "| R (Mean) | ✓ | ✗ | coronal | 75.00 | 65.00 | 85.00 | 1.1K | 1 |",
    ]


@pytest.mark.parametrize(
    ("n", "text"), [(999, "999"), (1000, "1.0K"), (99_950, "100.0K"), (100_000, "0.10M")]
)
def test_table_parameter_counts_switch_units_at_one_thousand_and_one_hundred_thousand(
    n: int, text: str
) -> None:
    row = {"model": "M", "encoder": "resnet18", "axis": "axial", "aggregation": "mean", "position_encoding": "learned",
           "pretrained": False, "status": "ok", "n_params": n, "test_mae": 3.0, "test_rmse": 4.0}  # fmt: skip
    assert (
        format_table(pd.DataFrame([row]), "brain_age").splitlines()[2]
        == f"| M | ✓ | ✗ | 3.000 | 4.000 | {text} | 1 |"
    )


def test_table_of_one_configuration_has_no_bold_and_shows_an_infinite_mean_as_n_a() -> None:
    """Nothing to compare: no bold; a non-finite metric (e.g. an inf RMSE) is "n/a", not "inf"."""
    row = {"model": "M", "encoder": "resnet18", "axis": "axial", "aggregation": "mean", "position_encoding": "learned",
           "pretrained": False, "status": "ok", "n_params": 1000, "test_mae": 3.0, "test_rmse": math.inf}  # fmt: skip
    assert (
        format_table(pd.DataFrame([row]), "brain_age").splitlines()[2]
        == "| M | ✓ | ✗ | 3.000 | n/a | 1.0K | 1 |"
    )


def test_results_csv_keeps_a_test_column_without_its_metric_among_the_metrics() -> None:
    """An interval column whose metric is missing (e.g. an older summary) stays with the test metrics,
    before the bootstrap columns and the other columns."""
    row = {"extra": 1, "test_f1_ci_low": 0.3, "n_test_subjects": 7, "run_id": "r"}
    assert list(results_frame([row]).columns) == ["run_id", "test_f1_ci_low", "n_test_subjects", "extra"]
