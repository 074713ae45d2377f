"""Benchmark A1 kNN distances: loop versions vs no loops, and no loops vs torch.cdist.

    python benchmarks/bench_knn.py [--quick] [--devices cpu cuda] [--repeats 5]
                                   [--loop-repeats 3] [--threads N] [--json PATH]

1. Two loops vs one loop vs no loops on 500 x 500 random 3x32x32 inputs (the course's
   timing cell; the reference solutions saw two loops 9.09 s, one loop 0.83 s, no loops
   0.03 s on a CPU: a 281x speed-up).
2. `compute_distances_no_loops` vs `torch.cdist(...) ** 2` on 5,000 train x 10,000 test
   random 3x32x32 inputs (the ratio no-loop time / cdist time; < 1 means ours is faster).

Each timing is the median of several repeats (one untimed warm-up first, except for the
two-loop version, the slowest), on the CPU and, when available, on CUDA. In table 1 all three
versions repeat `--loop-repeats` times; in table 2 both sides repeat `--repeats` times.
`--json PATH` merges the records (eecs598.results.make_record, assignment "A1", one metric
per device, e.g. knn_no_loop_speedup_vs_two_loops_cpu) into the JSON list at PATH. Quick mode
(`--quick` or EECS598_QUICK=1) shrinks the sizes to a smoke run.
"""
import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "A1"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

# What `make bench` (benchmarks/run_all.py) runs: the command behind the committed CPU rows
# (A1/README.md), and the CUDA rows where a GPU is present.
MAKE_BENCH = [["--threads", "1", "--devices", "cpu"]] + ([["--devices", "cuda"]] if torch.cuda.is_available() else [])

from eecs598.utils import median_time  # noqa: E402

REFERENCE_CPU = {"two_loops_s": 9.09, "one_loop_s": 0.83, "no_loops_s": 0.03, "speedup": 281.0}


def bench_loops(device, size, repeats):
    """Seconds of the three distance versions on (size, 3, 32, 32) x (size, 3, 32, 32)."""
    import knn

    gen = torch.Generator().manual_seed(0)
    x_train = torch.randn(size, 3, 32, 32, generator=gen).to(device)
    x_test = torch.randn(size, 3, 32, 32, generator=gen).to(device)
    return {
        "two_loops_s": median_time(lambda: knn.compute_distances_two_loops(x_train, x_test), repeats, warmup=0)[0],
        "one_loop_s": median_time(lambda: knn.compute_distances_one_loop(x_train, x_test), repeats)[0],
        "no_loops_s": median_time(lambda: knn.compute_distances_no_loops(x_train, x_test), repeats)[0],
    }


def bench_cdist(device, num_train, num_test, repeats):
    """Seconds of compute_distances_no_loops and torch.cdist(...)**2 on the same inputs."""
    import knn

    gen = torch.Generator().manual_seed(1)
    x_train = torch.randn(num_train, 3, 32, 32, generator=gen).to(device)
    x_test = torch.randn(num_test, 3, 32, 32, generator=gen).to(device)
    flat_train, flat_test = x_train.reshape(num_train, -1), x_test.reshape(num_test, -1)
    ours = median_time(lambda: knn.compute_distances_no_loops(x_train, x_test), repeats)[0]
    theirs = median_time(lambda: torch.cdist(flat_train, flat_test) ** 2, repeats)[0]
    return {"no_loops_s": ours, "cdist_sq_s": theirs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (sets EECS598_QUICK=1)")
    parser.add_argument("--devices", nargs="*", default=["cpu", "cuda"],
                        help="devices to time (cuda is skipped when unavailable)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats in the no-loops vs cdist table")
    parser.add_argument("--loop-repeats", type=int, default=3,
                        help="repeats in the loops table (all three versions)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); on a shared, oversubscribed "
                             "CPU, 1 avoids OpenMP stalls that make small ops orders of magnitude slower")
    parser.add_argument("--json", metavar="PATH", help="merge the records into this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["EECS598_QUICK"] = "1"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    from eecs598.results import make_record, merge_records
    from eecs598.utils import device_name, pick

    loop_size = pick(full=500, quick=40)
    num_train, num_test = pick(full=5000, quick=500), pick(full=10000, quick=1000)
    devices = [torch.device(d) for d in args.devices
               if not (torch.device(d).type == "cuda" and not torch.cuda.is_available())]

    records, rows = [], []
    for device in devices:
        name, tag = device_name(device), device.type
        loops = bench_loops(device, loop_size, args.loop_repeats)
        speedup = loops["two_loops_s"] / loops["no_loops_s"]
        one_speedup = loops["two_loops_s"] / loops["one_loop_s"]
        loop_data = f"random normal {loop_size} x {loop_size} inputs of shape 3x32x32, float32"
        loop_details = {**{k: round(v, 6) for k, v in loops.items()}, "size": loop_size,
                        "repeats": args.loop_repeats,  # all three versions are timed --loop-repeats times
                        "statistic": "median", "cpu_threads": threads}
        is_reference_setup = tag == "cpu" and loop_size == 500
        records.append(make_record(
            "A1", f"knn_no_loop_speedup_vs_two_loops_{tag}", speedup, "x", loop_data, name,
            sum(loops.values()), reference=REFERENCE_CPU["speedup"] if is_reference_setup else None,
            details={**loop_details, "reference_times_s": REFERENCE_CPU if is_reference_setup else None}))
        records.append(make_record(
            "A1", f"knn_one_loop_speedup_vs_two_loops_{tag}", one_speedup, "x", loop_data, name,
            sum(loops.values()),
            reference=round(REFERENCE_CPU["two_loops_s"] / REFERENCE_CPU["one_loop_s"], 2) if is_reference_setup else None,
            details=loop_details))
        rows += [(name, f"two loops {loop_size}x{loop_size}", loops["two_loops_s"], "1.0x"),
                 (name, f"one loop  {loop_size}x{loop_size}", loops["one_loop_s"], f"{one_speedup:.1f}x faster"),
                 (name, f"no loops  {loop_size}x{loop_size}", loops["no_loops_s"], f"{speedup:.1f}x faster")]

        cd = bench_cdist(device, num_train, num_test, args.repeats)
        ratio = cd["no_loops_s"] / cd["cdist_sq_s"]
        records.append(make_record(
            "A1", f"knn_no_loop_vs_cdist_time_ratio_{tag}", ratio, "x",
            f"random normal {num_train} train x {num_test} test inputs of shape 3x32x32, float32",
            name, sum(cd.values()),
            details={**{k: round(v, 6) for k, v in cd.items()}, "num_train": num_train,
                     "num_test": num_test, "repeats": args.repeats, "statistic": "median",
                     "cpu_threads": threads,
                     "meaning": "no-loop time / torch.cdist(...)**2 time; < 1: ours is faster"}))
        rows += [(name, f"no loops  {num_train}x{num_test}", cd["no_loops_s"], f"{ratio:.2f}x cdist time"),
                 (name, f"cdist**2  {num_train}x{num_test}", cd["cdist_sq_s"], "1.0x")]

    width = max(len(r[0]) for r in rows) if rows else 6
    print(f"{'device':{width}s} | {'version':22s} | {'median s':>10s} | ratio")
    print(f"{'-' * width}-|-{'-' * 22}-|-{'-' * 10}-|------")
    for device, version, seconds, ratio in rows:
        print(f"{device:{width}s} | {version:22s} | {seconds:10.4f} | {ratio}")
    print(f"(torch CPU threads: {threads}; reference solutions, CPU, 500x500: two loops 9.09 s, one loop 0.83 s, no loops 0.03 s: 281x)")
    if args.json:
        merge_records(args.json, records)
        print(f"{len(records)} records -> {args.json}")
    return records


if __name__ == "__main__":
    main()
