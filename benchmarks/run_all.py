"""Run every benchmark script (benchmarks/bench_*.py) and merge their records into results/.

    python benchmarks/run_all.py [--results-dir results]

Each bench module exposes main(argv) and accepts `--json PATH`; its records are merged
into results/results.json (and RESULTS.md) like those of `make reproduce`.
"""
import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results-dir", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    for folder in sorted(ROOT.glob("A[0-9]*")):
        sys.path.insert(0, str(folder))
    from eecs598.results import write_results

    for script in sorted(HERE.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(script.stem, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "records.json"
            print(f"== {script.name}", flush=True)
            module.main(["--json", str(out)])
            if out.exists():
                write_results(args.results_dir, json.loads(out.read_text()))


if __name__ == "__main__":
    main()
