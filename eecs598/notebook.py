"""Notebook set-up shared by every assignment notebook (called from the identical first cell)."""
import sys
from pathlib import Path

from .utils import get_device, quick_mode


def notebook_setup(seed=0):
    """Configure a notebook: autoreload, matplotlib defaults, the assignment folder on sys.path.

    Prints the mode (quick/full), the device and the data root, so a reader of the
    notebook knows what the numbers below were computed on.
    """
    from .data.store import data_root

    try:
        ip = get_ipython()  # noqa: F821  (defined inside IPython only)
    except NameError:
        ip = None
    if ip is not None:
        for magic, arg in (("load_ext", "autoreload"), ("autoreload", "2"), ("matplotlib", "inline")):
            try:
                ip.run_line_magic(magic, arg)
            except Exception as e:  # e.g. no inline backend in a plain terminal IPython
                print(f"note: %{magic} {arg} unavailable ({e})")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.figsize": (10.0, 8.0), "font.size": 16,
                         "image.interpolation": "nearest", "image.cmap": "gray"})
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    from .utils import reset_seed
    reset_seed(seed)
    mode = "QUICK (EECS598_QUICK=1: tiny data, few iterations)" if quick_mode() else "FULL"
    print(f"mode: {mode}; device: {get_device()}; data root: {data_root()}")
    if not any(Path(cwd).glob("*.py")):
        print(f"Note: the working folder {cwd} holds no assignment .py files; "
              "change into the assignment folder (e.g. %cd A1) so its modules import.")
