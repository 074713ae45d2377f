"""Small helpers every assignment uses: seeding, device choice, quick mode, timing."""
import functools
import os
import platform
import random
import time
from contextlib import ExitStack, contextmanager

import torch

# The course imports these from utils (A4-A6's copies of the package have no vis module).
from .vis import attention_visualizer, detection_visualizer, tensor_to_image, visualize_dataset  # noqa: F401

QUICK_ENV = "EECS598_QUICK"


def reset_seed(number):
    """Seed Python's `random` and torch (CPU and, if present, CUDA) with `number`."""
    random.seed(number)
    torch.manual_seed(number)


def env_flag(name):
    """True when the environment variable `name` is set to a true value (1/true/yes/on, any case)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def quick_mode():
    """True when the environment variable EECS598_QUICK is set to a true value (1/true/yes).

    Quick mode shrinks data and iterations so that every notebook runs on a 2-core CPU in
    well under a minute (CI uses it). It never asserts accuracy targets.
    """
    return env_flag(QUICK_ENV)


def pick(full, quick):
    """Return `quick` in quick mode and `full` otherwise: `num_train = pick(full=5000, quick=500)`."""
    return quick if quick_mode() else full


def get_device(device=None):
    """Resolve a device argument: None or "auto" -> CUDA when available, else CPU.

    Anything else (a string or torch.device) is passed through `torch.device`.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _cpuinfo_field(name, cpuinfo="/proc/cpuinfo"):
    """The value of the first non-empty `name` line of `cpuinfo` (Linux), whitespace collapsed;
    None where there is no such file or line."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return None


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8480+", ...) from the first
    "model name" line of `cpuinfo` (Linux); None where there is no such file or line."""
    return _cpuinfo_field("model name", cpuinfo)


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The CPU's feature flags ({"avx2", "avx512_bf16", "amx_bf16", ...}) from the first "flags"
    line of `cpuinfo` (Linux); empty where there is none."""
    return set((_cpuinfo_field("flags", cpuinfo) or "").split())


def device_name(device=None):
    """Human-readable name of a device for results tables, e.g. 'NVIDIA H200' or
    'CPU (AMD EPYC, 2 cores, x86_64, torch 2.13.0)'. The CPU model is there because machines of
    the same core count differ in speed and features (AMX bf16, for instance); it is left out
    where the system does not say it."""
    device = get_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    arch = platform.processor() or platform.machine()
    model = cpu_model()
    model = f"{model}, " if model else ""
    return f"CPU ({model}{os.cpu_count()} cores, {arch}, torch {torch.__version__.split('+')[0]})"


@contextmanager
def evaluating(model, seed=None):
    """Within the block: `model` in eval mode, no gradients and, with a `seed`, torch's global
    generator (and the model's CUDA device's) seeded with it. Afterwards the model's mode and
    the global random state are what they were, so evaluating or sampling during training
    does not change the training run. Yields (device, dtype) of the model's parameters (a model
    without parameters: the CPU and torch's default dtype)."""
    param = next(model.parameters(), None)
    if param is None:
        device, dtype = torch.device("cpu"), torch.get_default_dtype()
    else:
        device, dtype = param.device, param.dtype
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield device, dtype
    finally:
        model.train(was_training)


def in_eval_mode(fn):
    """Decorator for evaluation helpers whose first argument is a model (an nn.Module) or a list
    of models: the call runs inside `evaluating(m)` for each of them (eval mode, no gradients,
    each model's mode restored afterwards)."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with ExitStack() as stack:
            for m in (model if isinstance(model, (list, tuple)) else [model]):
                stack.enter_context(evaluating(m))
            return fn(model, *args, **kwargs)
    return wrapper


@contextmanager
def timer():
    """Context manager measuring wall time; CUDA work is synchronized at both ends.

        with timer() as t:
            work()
        print(t.seconds)
    """

    class _Elapsed:
        seconds = 0.0

    elapsed = _Elapsed()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed.seconds = time.perf_counter() - start


@contextmanager
def fp32_precision(mode):
    """Within the block, float32 matrix products (torch.matmul & co.) and cuDNN convolutions on
    CUDA run in `mode`: "ieee" (full float32) or "tf32" (tensor-core TF32). PyTorch's defaults
    differ (matmul "ieee", cuDNN conv "tf32"), which would make a from-scratch conv built on
    matmul look slower than `F.conv2d` for a difference of precision, not of code. Uses
    PyTorch's per-backend `fp32_precision` flags (never mixed with the legacy `allow_tf32`
    flags, which PyTorch rejects; those only before PyTorch 2.9), restoring them afterwards;
    no effect on the CPU."""
    if mode not in ("ieee", "tf32"):
        raise ValueError(f"mode must be 'ieee' or 'tf32', not {mode!r}")
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # PyTorch >= 2.9
        flags = [(torch.backends.cuda.matmul, "fp32_precision", mode),
                 (torch.backends.cudnn.conv, "fp32_precision", mode)]
    else:
        flags = [(torch.backends.cuda.matmul, "allow_tf32", mode == "tf32"),
                 (torch.backends.cudnn, "allow_tf32", mode == "tf32")]
    before = [getattr(obj, name) for obj, name, _ in flags]
    for obj, name, value in flags:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name, _), value in zip(flags, before):
            setattr(obj, name, value)


def median_time(fn, repeats, warmup=1):
    """Time `fn()` `repeats` times after `warmup` untimed calls (CUDA synchronized).

    Returns (median seconds, list of every run's seconds).
    """
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        with timer() as t:
            fn()
        times.append(t.seconds)
    return statistics.median(times), times


def decode_captions(captions, idx_to_word):
    """Word indices (N, T) or (T,) -> strings; drops <NULL> and <START>, stops at <END>.
    `idx_to_word` is a list or dict index -> word."""
    singleton = captions.ndim == 1
    if singleton:
        captions = captions[None]
    decoded = []
    for row in captions.tolist():
        words = []
        for idx in row:
            word = idx_to_word[idx]
            if word == "<END>":
                break
            if word not in ("<NULL>", "<START>"):
                words.append(word)
        decoded.append(" ".join(words))
    return decoded[0] if singleton else decoded
