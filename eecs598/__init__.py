"""eecs598: the one helper package of the course; every notebook and test imports it."""
from . import data, utils  # noqa: F401
from .notebook import notebook_setup  # noqa: F401
from .utils import get_device, pick, quick_mode, reset_seed, timer  # noqa: F401
from .solver import Solver  # noqa: F401
from . import grad, submit, vis  # noqa: F401
from .vis import tensor_to_image, visualize_dataset  # noqa: F401  (the course's top-level names)

__all__ = ["data", "utils", "notebook_setup", "get_device", "pick", "quick_mode", "reset_seed", "timer",
           "Solver", "grad", "submit", "vis", "tensor_to_image", "visualize_dataset"]
