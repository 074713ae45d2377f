"""Run every benchmark script (benchmarks/bench_*.py) and merge their records into results/.

    python benchmarks/run_all.py [--results-dir results]

Each bench module exposes main(argv), accepts `--json PATH`, and may name in `MAKE_BENCH` the
argument lists of the commands behind its committed rows (thread counts, devices, processes;
default: one run with its defaults). This script runs each of them in a fresh process, so a
thread count set by one does not leak into the next, and merges the records into
results/results.json (and RESULTS.md) like those of `make reproduce`: `make bench` replaces the
committed rows like for like.
"""
import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def bench_commands(script):
    """The argument lists `make bench` runs `script` (a bench_*.py path) with: its module's
    `MAKE_BENCH`, or [[]] (one run with the script's defaults)."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [list(args) for args in getattr(module, "MAKE_BENCH", [[]])]


def main(argv=None, bench_dir=HERE):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from eecs598.results import write_results

    for script in sorted(Path(bench_dir).glob("bench_*.py")):
        for command in bench_commands(script):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "records.json"
                print(f"== {script.name} {' '.join(command)}", flush=True)
                subprocess.run([sys.executable, str(script), *command, "--json", str(out)], check=True)
                if out.exists():
                    write_results(args.results_dir, json.loads(out.read_text()))


if __name__ == "__main__":
    main()
