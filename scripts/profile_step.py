"""Profile one training step of a benchmark model (issue 17): where the time of a step goes, by operator.

    python scripts/profile_step.py resnet18 fast --batch-size 2
    python scripts/profile_step.py cnn5 fast --batch-size 2 --shapes aten::copy_,aten::max_pool2d_with_indices

The network, inputs, optimizer and precision are the benchmark's (``mri_slice_transfer.bench.measure``,
i.e. the bundles' code); two warm-up steps, then one timed step and one step under ``torch.profiler``.
Prints the step time and the operators by self CPU time; ``--shapes`` also breaks the named operators
down by input shape (which tensor a copy or a pooling works on).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mri_slice_transfer.bench.measure import BenchRunner, build_bench_model
from mri_slice_transfer.bench.specs import VARIANTS
from mri_slice_transfer.engine.allocator import keep_freed_memory
from mri_slice_transfer.engine.resize import scaled_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="cnn5, resnet18, resnet50, conv3d, ...")
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--input-scale", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=20, help="operators to print")
    parser.add_argument("--shapes", default="", help="comma-separated operators to break down by input shape")
    args = parser.parse_args()
    variant = VARIANTS[args.variant]
    if variant.keep_freed_memory:
        keep_freed_memory()
    size = scaled_size(args.input_scale)
    runner = BenchRunner(build_bench_model(args.model, variant, size), variant, "cpu", args.batch_size, size)
    runner.train_step()
    runner.train_step()
    start = time.perf_counter()
    runner.train_step()
    print(
        f"{args.model} {args.variant}, batch {args.batch_size}, input {size}, "
        f"{torch.get_num_threads()} threads: {time.perf_counter() - start:.2f} s per training step"
    )
    with profile(activities=[ProfilerActivity.CPU], record_shapes=bool(args.shapes)) as prof:
        runner.train_step()
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=45
        )
    )
    wanted = [s for s in args.shapes.split(",") if s]
    if wanted:
        events = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in wanted]
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
            print(f"{e.key:32s} {e.self_cpu_time_total / 1e3:9.1f} ms  calls {e.count:4d}  {e.input_shapes}")


if __name__ == "__main__":
    main()
