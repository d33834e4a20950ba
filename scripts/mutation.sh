#!/usr/bin/env bash
# Mutation testing with mutmut 3, one module at a time, on one core, in a bounded time.
#
#   scripts/mutation.sh MODULE[:NAMES]...  e.g. scripts/mutation.sh engine/metrics.py fileio.py
#                                                 scripts/mutation.sh prepare/registration.py:register_to_template
#
# NAMES (comma-separated functions, classes or Class.method of MODULE) restricts the run to their mutants
# (mutmut's mutant-name filter); the other mutants of the module are then counted as "not run".
#
# (mutmut imports the mutated copy from mutants/; PYTHONPATH is unset so that nothing shadows it.)
#
# MODULE is a path under mri_slice_transfer/. For each one the repository (tracked + new files) is copied
# to a scratch folder, [tool.mutmut] of pyproject.toml is extended there with only_mutate = that module and
# the module's fast test files (the table below), and `mutmut run --max-children 1` runs under `nice`
# and `timeout`. The score (killed + timeout) / (total - skipped) and every surviving mutant are printed
# and kept in $MUTATION_OUT/<module>/ (mutmut-cicd-stats.json, survivors.txt, diffs of the survivors).
#
# Environment: PYTHON (default .venv/bin/python), MUTATION_MINUTES per module (default 20),
# MUTATION_OUT (default runs/mutation).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
MUTMUT="$(dirname "$PYTHON")/mutmut"
MINUTES="${MUTATION_MINUTES:-20}"
OUT="${MUTATION_OUT:-$ROOT/runs/mutation}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"  # absolute: the results are copied from the scratch folder

# The fast test files (or single tests) that exercise each module (the slow bundle/DDP/registration tests
# stay out: mutmut's first pass runs every selected test once, and a slow one eats the time budget).
RN=tests/test_researcher_numbers.py
tests_for() {
    case "$1" in
        engine/metrics.py) echo "tests/test_mutation_metrics.py tests/test_engine.py tests/test_properties.py tests/test_researcher_numbers.py" ;;
        engine/handlers.py)
            b=tests/test_brain_age_gap.py
            echo "tests/test_mutation_handlers.py $RN::test_saved_model_is_the_best_validation_epoch" \
                "$b::test_each_new_best_model_carries_the_fit_of_its_own_validation_predictions" \
                "$b::test_an_ad_model_records_no_age_bias" \
                "$b::test_a_flat_model_s_correction_is_flagged_in_training_and_prediction_logs" ;;
        engine/predictions.py)
            b=tests/test_brain_age_gap.py
            echo "tests/test_mutation_predictions.py $RN::test_csv_probability_is_sigmoid_of_the_ad_logit" \
                "$RN::test_test_metrics_count_the_scans_they_are_over" \
                "$b::test_the_writer_adds_corrected_age_and_gap_from_the_record" \
                "$b::test_a_record_without_age_bias_still_predicts_with_a_warning" \
                "$b::test_a_flat_model_s_correction_is_flagged_in_training_and_prediction_logs" ;;
        fileio.py)
            echo "tests/test_mutation_fileio.py tests/test_researcher_numbers.py tests/test_engine.py tests/test_template.py" \
                "tests/test_reliability.py::test_atomic_writes_are_fsynced_and_follow_the_umask" \
                "tests/test_reliability.py::test_sweep_removes_only_old_temporary_files_of_the_given_destinations" ;;
        experiments/bootstrap.py)
            echo "tests/test_mutation_experiments.py tests/test_grid.py --deselect=tests/test_grid.py::test_one_real_tiny_run_through_the_bundle tests/test_researcher_numbers.py" \
                "tests/test_engine.py::test_saturated_outputs_are_predicted_and_bootstrapped_exactly" \
                "tests/test_vocabulary.py::test_grid_picks_the_first_best_epoch_by_the_same_rule" ;;
        experiments/summary.py | experiments/tables.py) echo "tests/test_mutation_experiments.py tests/test_grid.py --deselect=tests/test_grid.py::test_one_real_tiny_run_through_the_bundle tests/test_researcher_numbers.py" ;;
        prepare/qc.py) echo "tests/test_mutation_prepare.py" ;;
        prepare/registration.py) echo "tests/test_mutation_prepare.py $RN::test_registration_qc_flags_an_implausible_scale" ;;
        split.py) echo "tests/test_mutation_split.py tests/test_split.py tests/test_datalist.py tests/test_properties.py" ;;
        data/datalist.py)
            echo "tests/test_mutation_datalist.py tests/test_datalist.py" \
                "tests/test_split.py::test_split_command_writes_checked_lists_and_a_report" \
                "tests/test_properties.py::test_split_never_shares_a_subject_and_guard_refuses_a_planted_duplicate" ;;
        data/anatomy.py)
            echo "tests/test_mutation_anatomy.py $RN::test_demo_ad_twin_has_less_mtl_grey_matter_and_larger_ventricles" \
                "tests/test_synthetic.py::test_ventricles_grow_with_age_and_ad_same_subject" ;;
        networks/slice_set.py)
            n=tests/test_networks.py
            echo "tests/test_mutation_networks.py $RN::test_learned_position_is_added_before_the_layernorm" \
                "$n::test_slices_cut_the_right_planes $n::test_chunked_equals_unchunked" \
                "$n::test_chunked_recompute_keeps_batchnorm_statistics $n::test_bad_arguments_list_choices" \
                "$n::test_output_bias_and_spatial_size_checks $n::test_position_encoding_modules" ;;
        networks/aggregation.py) echo "tests/test_aggregation.py tests/test_mutation_networks.py" ;;
        networks/encoders.py)
            n=tests/test_networks.py
            echo "tests/test_mutation_encoders.py $n::test_fold_equals_repeat" \
                "$n::test_fold_and_repeat_scratch_models_are_the_same_function" ;;
        networks/*) echo "tests/test_networks.py tests/test_properties.py tests/test_researcher_numbers.py" ;;
        transforms/intensity.py) echo "tests/test_mutation_transforms.py tests/test_transforms.py::test_normalize_brain_keeps_metadata" ;;
        transforms/spatial.py)
            t=tests/test_transforms.py
            echo "tests/test_mutation_transforms.py $t::test_strided_path_equals_interpolation" \
                "$t::test_exact_path_is_bit_exact_for_template_grid_and_ras_storage" \
                "tests/test_properties.py::test_exact_path_undoes_any_axis_permutation_and_flip" ;;
        transforms/*) echo "tests/test_transforms.py tests/test_properties.py" ;;
        *) echo "no test selection for $1: add it to tests_for in $0" >&2; return 1 ;;
    esac
}

[ $# -gt 0 ] || { sed -n '2,19p' "$0"; exit 2; }
[ -x "$MUTMUT" ] || { echo "mutmut not found next to $PYTHON: pip install -e '.[dev]'" >&2; exit 2; }

for arg in "$@"; do
    module="${arg%%:*}"
    names=()
    if [ "$arg" != "$module" ]; then
        dotted="mri_slice_transfer.${module%.py}"
        dotted="${dotted//\//.}"
        IFS=, read -ra funcs <<< "${arg#*:}"
        for f in "${funcs[@]}"; do
            if [[ "$f" == *.* ]]; then names+=("$dotted.xǁ${f%%.*}ǁ${f#*.}__mutmut_*")  # Class.method
            else names+=("$dotted.x_${f}__mutmut_*" "$dotted.xǁ${f}ǁ*"); fi
        done
    fi
    [ -f "$ROOT/mri_slice_transfer/$module" ] || { echo "no such module: mri_slice_transfer/$module" >&2; exit 2; }
    tests="$(tests_for "$module")"
    name="${module//\//.}"
    work="$(mktemp -d "${TMPDIR:-/tmp}/mutation.XXXXXX")"
    (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work")
    "$PYTHON" - "$work/pyproject.toml" "mri_slice_transfer/$module" $tests <<'PY'
import sys
path, module, *tests = sys.argv[1:]
with open(path, "a", encoding="utf-8") as f:
    f.write(f"only_mutate = [{module!r}]\n")
    f.write(f"pytest_add_cli_args_test_selection = {tests!r}\n")
PY
    echo "== $arg: tests $tests; at most $MINUTES min on one core (in $work)"
    status=0
    # own process group (setsid), so that no mutmut worker outlives the time budget
    (cd "$work" && env -u PYTHONPATH OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        setsid nice -n 19 timeout -k 30 "${MINUTES}m" "$MUTMUT" run --max-children 1 "${names[@]}" > mutmut-run.log 2>&1) &
    group=$!
    wait "$group" || status=$?
    kill -- "-$group" 2> /dev/null || true
    [ "$status" = 124 ] && echo "   time budget reached: partial result"
    mkdir -p "$OUT/$name"
    (
        cd "$work"
        "$MUTMUT" export-cicd-stats > /dev/null
        cp mutants/mutmut-cicd-stats.json mutmut-run.log "$OUT/$name/"
        "$MUTMUT" results > "$OUT/$name/survivors.txt" || true
        for m in $(awk -F: '/survived/ {print $1}' "$OUT/$name/survivors.txt"); do
            "$MUTMUT" show "$m"
        done > "$OUT/$name/survivors.diff" 2>&1 || true
    )
    "$PYTHON" - "$OUT/$name/mutmut-cicd-stats.json" "$module" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
killed = s["killed"] + s["timeout"]
checked = killed + s["survived"] + s["no_tests"] + s["suspicious"] + s["segfault"]
left = s["total"] - checked - s["skipped"]
score = f"{100 * killed / checked:.1f} %" if checked else "n/a"
print(f"   {sys.argv[2]}: score {score} = {killed} killed / {checked} checked; survived {s['survived']}, "
      f"no tests {s['no_tests']}, suspicious {s['suspicious']}, not run (time) {left}; {sys.argv[1]}")
PY
    sed 's/^/   /' "$OUT/$name/survivors.txt"
    rm -rf "$work"
done
