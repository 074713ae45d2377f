"""eecs598: the one helper package of the course; every notebook and test imports it."""
from . import data, utils  # noqa: F401
from .notebook import notebook_setup  # noqa: F401
from .utils import get_device, pick, quick_mode, reset_seed, timer  # noqa: F401
from .solver import Solver  # noqa: F401
from . import grad, submit, vis  # noqa: F401

__all__ = ["data", "utils", "notebook_setup", "get_device", "pick", "quick_mode", "reset_seed", "timer",
           "Solver", "grad", "submit", "vis"]
