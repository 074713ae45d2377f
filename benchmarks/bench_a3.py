"""A3 speed benchmark: the project's from-scratch conv / max-pool / batch-norm vs PyTorch's kernels.

    python benchmarks/bench_a3.py [--device cpu cuda] [--repeats 7] [--threads N] [--runs K] [--json PATH]

For each op (forward + backward, on the course's shapes: N=128, 64 -> 64 channels, 32x32,
3x3 kernel, pad 1; 2x2/2 max-pool; spatial batch norm in train mode) it times
  * ours: FastConv / FastMaxPool / SpatialBatchNorm from A3/convolutional_networks.py, and
  * torch: torch.nn.functional.conv2d / max_pool2d / batch_norm + torch.autograd.grad,
on the same input and reports the ratio ours / torch (lower is better; 1.0 = as fast as
PyTorch's own kernels). Before timing an op it checks that our output and gradients match
PyTorch's (`check_agreement`) and stops if they do not. Also:
  * the naive loop Conv vs FastConv on a small shape (speed-up);
  * one training step of the "one-minute" DeepConvNet (create_convolutional_solver_instance:
    conv 128/64/32, each with its batch norm if the recipe has one, ReLU and 2x2 pool, linear
    head; batch 128; Adam) vs the same network in torch.nn with torch.optim.Adam.

Timings are medians over `--repeats` runs; ours and torch are measured alternately, so a
change of machine load affects both alike. CUDA runs when available (or when asked for).
On CUDA both sides run float32 in one precision, `--fp32 ieee` (default) or `tf32`: by default
PyTorch runs cuDNN convolutions in TF32 but matrix products (which our conv is made of) in
full float32, which would compare precisions rather than code.
Quick mode (EECS598_QUICK=1) shrinks the batch to 16 and the repeats to 3.
With --json PATH, the figures are merged as result records (eecs598.results.make_record,
assignment "A3") into PATH, replacing rows of the same metric; benchmarks/run_all.py merges them
into results/. CPU metric names carry
the thread count (bench_conv_fwd_bwd_ratio_vs_torch_cpu_1thread, ..._cpu_2threads), since
the ratios depend on it.

A whole process can run slow for a while (on the project's 2-core CPU, two threads, idle
machine: two of eight processes timed our conv at 2.0x, the six others at 1.2-1.4x). `--runs K` therefore
benchmarks in K separate processes, one after another, and records for each metric the
process with the median value; every process's value is kept in its details (`runs`).
"""
import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "A3"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import eecs598  # noqa: E402
from eecs598.results import make_record, merge_records  # noqa: E402
from eecs598.utils import device_name, fp32_precision  # noqa: E402

DATA = "synthetic random tensors"

# What `make bench` (benchmarks/run_all.py) runs: the commands behind the committed rows (CPU,
# one and two threads, the median of 5 processes each), and the CUDA rows where a GPU is present.
MAKE_BENCH = ([["--device", "cpu", "--threads", str(t), "--runs", "5"] for t in (1, 2)]
              + ([["--device", "cuda"]] if torch.cuda.is_available() else []))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(fns, device, repeats):
    """Median seconds of each function in `fns` (a dict), measured round-robin after a warm-up."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            _sync(device)
            start = time.perf_counter()
            f()
            _sync(device)
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def check_agreement(name, ours, reference, tol=1e-2):
    """Raise unless each of our tensors (output, then gradients) matches PyTorch's: max |ours -
    reference| <= tol * max |reference| (float32, and TF32 where a GPU uses it). A benchmark of
    a wrong result would be meaningless."""
    for k, (a, r) in enumerate(zip(ours, reference)):
        a, r = a.detach().double(), r.detach().double()
        scale = r.abs().max().item() or 1.0
        err = (a - r).abs().max().item() / scale if a.shape == r.shape else math.inf
        if not err <= tol:
            raise AssertionError(f"{name}: tensor {k} differs from PyTorch's (shape {tuple(a.shape)} vs "
                                 f"{tuple(r.shape)}, max error {err:.2e} of its scale)")


def op_benchmarks(device, N, repeats, dtype=torch.float32):
    """(name, ours_s, torch_s, shape description, forward-only pair, wall seconds of the
    measurement) for conv, pool and batch norm."""
    import convolutional_networks as cn

    torch.manual_seed(0)
    C, Fn, H = 64, 64, 32
    x = torch.randn(N, C, H, H, device=device, dtype=dtype)
    w = 0.05 * torch.randn(Fn, C, 3, 3, device=device, dtype=dtype)
    b = torch.randn(Fn, device=device, dtype=dtype)
    dconv = torch.randn(N, Fn, H, H, device=device, dtype=dtype)
    conv_param = {"stride": 1, "pad": 1}
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))

    def ours_conv():
        out, cache = cn.FastConv.forward(x, w, b, conv_param)
        return (out, *cn.FastConv.backward(dconv, cache))

    def torch_conv():
        out = F.conv2d(xr, wr, br, stride=1, padding=1)
        return (out, *torch.autograd.grad(out, (xr, wr, br), dconv))

    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    dpool = torch.randn(N, C, H // 2, H // 2, device=device, dtype=dtype)

    def ours_pool():
        out, cache = cn.FastMaxPool.forward(x, pool_param)
        return out, cn.FastMaxPool.backward(dpool, cache)

    def torch_pool():
        out = F.max_pool2d(xr, 2, 2)
        return (out, *torch.autograd.grad(out, (xr,), dpool))

    gamma = torch.rand(C, device=device, dtype=dtype) + 0.5
    beta = torch.randn(C, device=device, dtype=dtype)
    gr, ber = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    dbn = torch.randn_like(x)

    def ours_bn():
        out, cache = cn.SpatialBatchNorm.forward(x, gamma, beta, {"mode": "train"})
        return (out, *cn.SpatialBatchNorm.backward(dbn, cache))

    def torch_bn():
        out = F.batch_norm(xr, None, None, gr, ber, training=True, eps=1e-5)
        return (out, *torch.autograd.grad(out, (xr, gr, ber), dbn))

    fwd = {  # forward passes only (run under torch.no_grad below)
        "conv": (lambda: cn.FastConv.forward(x, w, b, conv_param), lambda: F.conv2d(x, w, b, padding=1)),
        "maxpool": (lambda: cn.FastMaxPool.forward(x, pool_param), lambda: F.max_pool2d(x, 2, 2)),
        "batchnorm": (lambda: cn.SpatialBatchNorm.forward(x, gamma, beta, {"mode": "train"}),
                      lambda: F.batch_norm(x, None, None, gamma, beta, training=True)),
    }
    shapes = {"conv": f"x ({N},{C},{H},{H}), w ({Fn},{C},3,3), stride 1, pad 1",
              "maxpool": f"x ({N},{C},{H},{H}), 2x2 window, stride 2",
              "batchnorm": f"x ({N},{C},{H},{H}), spatial, train mode"}
    def no_grad(f):
        def g():
            with torch.no_grad():
                f()
        return g

    results = []
    for name, ours, ref in (("conv", ours_conv, torch_conv), ("maxpool", ours_pool, torch_pool),
                            ("batchnorm", ours_bn, torch_bn)):
        check_agreement(name, ours(), ref())
        start = time.perf_counter()
        t = compare({"ours": ours, "torch": ref}, device, repeats)
        fo, fr = fwd[name]
        tf = compare({"ours": no_grad(fo), "torch": no_grad(fr)}, device, repeats)
        results.append((name, t["ours"], t["torch"], shapes[name], (tf["ours"], tf["torch"]),
                        time.perf_counter() - start))
    return results


def naive_vs_fast(device, repeats):
    """Seconds of the naive loop Conv and of FastConv (forward + backward) on a small shape."""
    import convolutional_networks as cn

    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16, device=device)
    w = torch.randn(8, 3, 3, 3, device=device)
    b = torch.randn(8, device=device)
    dout = torch.randn(4, 8, 16, 16, device=device)
    conv_param = {"stride": 1, "pad": 1}

    def run(layer):
        def f():
            out, cache = layer.forward(x, w, b, conv_param)
            layer.backward(dout, cache)
        return f

    t = compare({"naive": run(cn.Conv), "fast": run(cn.FastConv)}, device, max(1, min(repeats, 3)))
    return t["naive"], t["fast"], "x (4,3,16,16), w (8,3,3,3), stride 1, pad 1"


def _torch_deepconvnet(model, device):
    """torch.nn copy of a DeepConvNet, with or without batch norm (same weights, device and dtype),
    and its Adam optimizer."""
    layers, i = [], 0
    while f"W{i + 2}" in model.params:
        W, b = model.params[f"W{i + 1}"], model.params[f"b{i + 1}"]
        conv = torch.nn.Conv2d(W.shape[1], W.shape[0], 3, padding=1).to(device=device, dtype=W.dtype)
        with torch.no_grad():
            conv.weight.copy_(W)
            conv.bias.copy_(b)
        layers.append(conv)
        if model.batchnorm:
            bn = torch.nn.BatchNorm2d(W.shape[0], eps=1e-5, momentum=0.1).to(device=device, dtype=W.dtype)
            with torch.no_grad():
                bn.weight.copy_(model.params[f"gamma{i + 1}"])
                bn.bias.copy_(model.params[f"beta{i + 1}"])
            layers.append(bn)
        layers.append(torch.nn.ReLU())
        if i in model.max_pools:
            layers.append(torch.nn.MaxPool2d(2, 2))
        i += 1
    W, b = model.params[f"W{i + 1}"], model.params[f"b{i + 1}"]
    linear = torch.nn.Linear(W.shape[0], W.shape[1]).to(device=device, dtype=W.dtype)
    with torch.no_grad():
        linear.weight.copy_(W.t())
        linear.bias.copy_(b)
    net = torch.nn.Sequential(*layers, torch.nn.Flatten(), linear)
    return net, torch.optim.Adam(net.parameters(), lr=2e-3)


def torch_loss(net, X, y, reg):
    """The DeepConvNet loss of the torch.nn copy: cross-entropy + reg * sum of the squared conv and
    linear weights (as ours: no penalty on biases or batch-norm scales and shifts)."""
    weights = [m.weight for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return F.cross_entropy(net(X), y) + reg * sum((w * w).sum() for w in weights)


def training_step(device, N, repeats):
    """Seconds per training step (forward, backward, Adam) of the one-minute DeepConvNet: ours vs torch.nn."""
    import convolutional_networks as cn
    from fully_connected_networks import adam

    torch.manual_seed(0)
    X = torch.randn(N, 3, 32, 32, device=device)
    y = torch.randint(10, (N,), device=device)
    data = {"X_train": X, "y_train": y, "X_val": X[:2], "y_val": y[:2]}
    solver = cn.create_convolutional_solver_instance(data, torch.float32, device)
    model = solver.model
    configs = {k: {"learning_rate": 2e-3} for k in model.params}
    net, opt = _torch_deepconvnet(model, device)

    def ours():
        loss, grads = model.loss(X, y)
        for k in model.params:
            model.params[k], configs[k] = adam(model.params[k], grads[k], configs[k])

    def theirs():
        opt.zero_grad(set_to_none=True)
        torch_loss(net, X, y, model.reg).backward()
        opt.step()

    t = compare({"ours": ours, "torch": theirs}, device, repeats)
    return t["ours"], t["torch"], (f"DeepConvNet {model.num_filters}, pools {model.max_pools}, "
                                   f"{'batch norm, ' if model.batchnorm else ''}batch {N}, Adam")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--device", nargs="*", default=None,
                        help="devices to benchmark (default: cpu, plus cuda when available)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--batch", type=int, default=None, help="batch size N (default 128; quick mode 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="merge the result records into this JSON file")
    parser.add_argument("--fp32", choices=("ieee", "tf32"), default="ieee",
                        help="CUDA float32 precision of both sides' matmuls and convolutions (default ieee)")
    parser.add_argument("--runs", type=int, default=1,
                        help="benchmark in this many separate processes; record each metric's median process")
    args = parser.parse_args(argv)
    if args.runs > 1:
        return _median_of_processes(argv if argv is not None else sys.argv[1:], args.runs, args.json)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    repeats = args.repeats or eecs598.pick(full=7, quick=3)
    N = args.batch or eecs598.pick(full=128, quick=16)

    records = []
    with fp32_precision(args.fp32):
        for name in devices:
            records += _benchmark_device(torch.device(name), N, repeats, args.fp32)
    if args.json:
        merge_records(args.json, records)
    return records


def _benchmark_device(device, N, repeats, fp32):
    """Every benchmark on one device; returns its result records."""
    records = []
    where = device_name(device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"== {where} (batch {N}, median of {repeats}"
          + (f", {threads} CPU threads" if threads else "") + ")", flush=True)
    base = {"batch": N, "repeats": repeats, "dtype": "float32"}
    if threads:
        base["cpu_threads"] = threads
    if device.type == "cuda":
        base["fp32_precision"] = fp32
    tag = device.type if threads is None else f"cpu_{threads}thread{'s' if threads > 1 else ''}"
    for op, ours, ref, shape, (fo, fr), seconds in op_benchmarks(device, N, repeats):
        print(f"   {op:10s} fwd+bwd: ours {1e3 * ours:8.2f} ms  torch {1e3 * ref:8.2f} ms  "
              f"ratio {ours / ref:5.2f}x   (forward only: {fo / fr:5.2f}x)", flush=True)
        records.append(make_record(
            "A3", f"bench_{op}_fwd_bwd_ratio_vs_torch_{tag}", ours / ref, "x (ours / torch time)", DATA,
            where, seconds, details={**base, "shape": shape, "ours_ms": 1e3 * ours, "torch_ms": 1e3 * ref,
                                     "forward_ratio": fo / fr, "forward_ours_ms": 1e3 * fo,
                                     "forward_torch_ms": 1e3 * fr}))
    start = time.perf_counter()
    naive, fast, shape = naive_vs_fast(device, repeats)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    print(f"   naive Conv {1e3 * naive:8.1f} ms  FastConv {1e3 * fast:8.2f} ms  speed-up {naive / fast:7.0f}x",
          flush=True)
    records.append(make_record("A3", f"bench_conv_naive_vs_fast_speedup_{tag}", naive / fast,
                               "x (naive / fast time)", DATA, where, seconds,
                               details={**base, "shape": shape, "naive_ms": 1e3 * naive,
                                        "fast_ms": 1e3 * fast, "batch": 4}))
    ours, ref, what = training_step(device, N, repeats)
    seconds = time.perf_counter() - start
    print(f"   DeepConvNet step: ours {1e3 * ours:8.1f} ms  torch.nn {1e3 * ref:8.1f} ms  "
          f"ratio {ours / ref:5.2f}x", flush=True)
    records.append(make_record("A3", f"bench_deepconvnet_step_ratio_vs_torch_nn_{tag}", ours / ref,
                               "x (ours / torch time)", DATA, where, seconds,
                               details={**base, "model": what, "ours_ms": 1e3 * ours, "torch_ms": 1e3 * ref}))
    return records


def median_of_runs(runs):
    """Combine the record lists of several benchmark processes into one list.

    For each metric (in the first run's order) keeps the record of the run with the median
    value (the lower middle one for an even count), so its details stay those of one
    measurement, and adds every run's value to its details as `runs`.
    """
    combined = []
    for metric in [r["metric"] for r in runs[0]]:
        rows = sorted((r for run in runs for r in run if r["metric"] == metric), key=lambda r: r["value"])
        if len(rows) != len(runs):
            raise ValueError(f"{metric}: found in {len(rows)} of {len(runs)} runs")
        middle = dict(rows[(len(rows) - 1) // 2])
        middle["details"] = {**middle["details"], "runs": [r["value"] for r in rows], "processes": len(rows)}
        combined.append(middle)
    return combined


def _without_option(argv, option):
    """argv without `option` and its value (either `--opt V` or `--opt=V`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def _median_of_processes(argv, runs, json_path):
    """Run this benchmark `runs` times in fresh processes; combine with median_of_runs."""
    argv = _without_option(_without_option(argv, "--runs"), "--json")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            out = Path(tmp) / f"run{i}.json"
            print(f"-- process {i + 1} of {runs}", flush=True)
            subprocess.run([sys.executable, __file__, *argv, "--json", str(out)], check=True)
            results.append(json.loads(out.read_text()))
    records = median_of_runs(results)
    print(f"== median process of {runs} per metric:", flush=True)
    for r in records:
        print(f"   {r['metric']:55s} {r['value']:8.2f}   runs {', '.join(f'{v:.2f}' for v in r['details']['runs'])}")
    if json_path:
        merge_records(json_path, records)
    return records


if __name__ == "__main__":
    main()
