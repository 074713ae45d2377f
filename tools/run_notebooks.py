"""Execute notebooks one after another and report each cell's wall time: the check that a
notebook runs end to end in *full* mode, which CI (quick mode, nbval) does not do.

    python tools/run_notebooks.py A1/knn.ipynb A2/*.ipynb [--out build/executed] [--quick]

Each notebook runs in its own folder, as Jupyter would run it, with the mode of the environment
(full unless EECS598_QUICK=1 or --quick). The executed copies, with their outputs, go to `--out`
(default build/executed/, which git ignores); the notebooks themselves are not touched. One JSON
line per notebook goes to stdout: status ("ok" or the failing cell and its error), total
seconds and the slowest cells. The exit status is 1 if any notebook failed.
"""
import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_notebook(path, out_dir, kernel_name="python3", verbose=True):
    """Execute the notebook at `path` cell by cell; write the executed copy into `out_dir`.

    Returns dict(notebook, status, total_s, cell_seconds {cell index: seconds}, output).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=None, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    cell_seconds, status = {}, "ok"
    start = time.perf_counter()
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                cell_start = time.perf_counter()
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as error:
                    last_line = re.sub(r"\x1b\[[0-9;]*m", "", str(error).strip().splitlines()[-1])  # no colours
                    status = f"error in cell {index}: {last_line[:500]}"
                except Exception as error:  # the kernel died (out of memory, ...) or timed out
                    status = f"error in cell {index}: {type(error).__name__}: {str(error)[:500]}"
                cell_seconds[index] = round(time.perf_counter() - cell_start, 2)
                if verbose:
                    print(f"{path} cell {index}: {cell_seconds[index]:.1f} s", file=sys.stderr, flush=True)
                if status != "ok":
                    break
    except Exception as error:  # the kernel could not start, or failed to shut down
        if status == "ok":
            status = f"kernel error: {type(error).__name__}: {str(error)[:500]}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    nbformat.write(nb, output)
    return {"notebook": str(path), "status": status, "total_s": round(time.perf_counter() - start, 1),
            "cell_seconds": cell_seconds, "output": str(output)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+")
    parser.add_argument("--out", default=str(ROOT / "build" / "executed"))
    parser.add_argument("--quick", action="store_true", help="set EECS598_QUICK=1 for the kernels")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["EECS598_QUICK"] = "1"
    failed = False
    for notebook in args.notebooks:
        result = run_notebook(notebook, args.out)
        slowest = sorted(result["cell_seconds"].items(), key=lambda item: -item[1])[:5]
        print(json.dumps({"notebook": result["notebook"], "status": result["status"],
                          "total_s": result["total_s"], "slowest_cells": slowest}), flush=True)
        failed |= result["status"] != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
