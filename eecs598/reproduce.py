"""`make reproduce`: train/evaluate every assignment's headline models and record the figures.

    python -m eecs598.reproduce [--quick] [--only A1 A2] [--results-dir results] [--device auto]

Each assignment folder may hold an ``experiments.py`` with ``run(device) -> list[record]``
(records from ``eecs598.results.make_record``); the notebooks call the same functions.
Records are merged into ``<results-dir>/results.json`` and ``RESULTS.md`` is re-rendered.
A ``run`` that also takes ``figures_dir`` gets ``<results-dir>/figures/<assignment>`` in full
mode (quick mode writes no figures, so a smoke run never replaces the measured ones).
"""
import argparse
import importlib.util
import inspect
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def assignment_dirs(root=REPO_ROOT):
    return sorted(p for p in root.glob("A[0-9]*") if (p / "experiments.py").is_file())


def load_experiments(folder: Path):
    """Import ``<folder>/experiments.py`` with the folder on sys.path (so `import knn` works)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"{folder.name}_experiments", folder / "experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figures_dir_for(results_dir, assignment):
    """<results_dir>/figures/<assignment> in full mode; None in quick mode (figure files carry no
    mode, so a smoke run must never replace the measured ones)."""
    from .utils import quick_mode
    return None if quick_mode() else Path(results_dir) / "figures" / assignment


def run_experiments(module, device, figures_dir=None):
    """``module.run(device=device)``, plus ``figures_dir`` when given and `run` accepts it."""
    kwargs = {"device": device}
    if figures_dir is not None and "figures_dir" in inspect.signature(module.run).parameters:
        kwargs["figures_dir"] = figures_dir
    return module.run(**kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m eecs598.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny subsets, few iterations (sets EECS598_QUICK=1)")
    parser.add_argument("--only", nargs="*", help="assignments to run, e.g. A1 A2 (default: all)")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "results"))
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["EECS598_QUICK"] = "1"

    import torch

    from .results import write_results
    from .utils import get_device, quick_mode

    try:
        device = get_device(args.device)
    except RuntimeError as err:  # torch.device's message for a name it does not know
        parser.error(f"--device {args.device}: {err}")
    if str(args.device).partition(":")[0] == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this PyTorch sees no CUDA device (torch.cuda.is_available() is "
                     f"False); use --device cpu, or auto")
    if not assignment_dirs():
        parser.error(f"no assignment folder (A<n>/experiments.py) under {REPO_ROOT}: run it from a checkout of "
                     f"the repository (installed with `pip install -e .`, as `make` does)")
    folders = [f for f in assignment_dirs() if not args.only or f.name in args.only]
    missing = set(args.only or ()) - {f.name for f in folders}
    if missing:
        parser.error(f"no experiments.py for: {', '.join(sorted(missing))}")
    for folder in folders:
        start = time.perf_counter()
        print(f"== {folder.name}: running headline experiments on {device} "
              f"({'quick' if quick_mode() else 'full'} mode)", flush=True)
        records = run_experiments(load_experiments(folder), device, figures_dir_for(args.results_dir, folder.name))
        write_results(args.results_dir, records)
        for r in records:
            print(f"   {r['metric']}: {r['value']} {r['unit']} (reference {r['reference']})")
        print(f"== {folder.name}: {len(records)} records in {time.perf_counter() - start:.1f} s "
              f"-> {args.results_dir}/results.json", flush=True)


if __name__ == "__main__":
    main()
