"""A2 benchmarks: naive vs vectorized losses, and our hand-written gradients vs torch autograd.

    python benchmarks/bench_a2.py [--repeats 5] [--devices cpu cuda] [--threads N] [--json out.json]

For every device (CPU, and CUDA when available) this measures, as the median of timed runs
after one warm-up run (`--repeats` runs; in 1., the slow loop versions `repeats // 2 + 1` runs
and the fast vectorized ones `4 * repeats`):

1. the speed-up of `svm_loss_vectorized` / `softmax_loss_vectorized` over their loop versions
   on the course's check batch (128 x 3,073, float64);
2. the time of the vectorized loss + gradient on a 40,000 x 3,073 float32 batch (the size of
   the course's training set) against the same computation written with torch autograd
   (forward + backward), and their ratio (ours / autograd: below 1 means we are faster);
3. the same comparison for the two-layer net's `nn_forward_backward` (batch 1,000, hidden 256).

Inputs are synthetic N(0, 1) tensors of the stated shapes (timing does not depend on the
values). Quick mode (EECS598_QUICK=1) shrinks the shapes. CPU records give the torch thread count
(`cpu_threads`; `--threads N` sets it). `--json PATH` merges the figures as result records
(eecs598.results.make_record) into PATH, replacing rows of the same metric.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

# What `make bench` (benchmarks/run_all.py) runs: one CPU thread, as in the committed rows
# (A2/README.md), and the CUDA rows where a GPU is present.
MAKE_BENCH = [["--threads", "1", "--devices", "cpu"]] + ([["--devices", "cuda"]] if torch.cuda.is_available() else [])

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "A2"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from eecs598.results import make_record, merge_records  # noqa: E402
from eecs598.utils import device_name, median_time, pick  # noqa: E402

import linear_classifier as lc  # noqa: E402
import two_layer_net as tln  # noqa: E402


# --- autograd references (same computation, gradients by torch.autograd) ----------------------
def svm_autograd(W, X, y, reg):
    W = W.detach().requires_grad_(True)
    scores = X @ W
    correct = scores.gather(1, y.view(-1, 1))
    margins = torch.relu(scores - correct + 1)
    margins = margins.scatter(1, y.view(-1, 1), 0.0)
    loss = margins.sum() / X.shape[0] + reg * (W * W).sum()
    loss.backward()
    return loss.detach(), W.grad


def softmax_autograd(W, X, y, reg):
    W = W.detach().requires_grad_(True)
    loss = F.cross_entropy(X @ W, y) + reg * (W * W).sum()
    loss.backward()
    return loss.detach(), W.grad


def two_layer_autograd(params, X, y, reg):
    p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    scores = torch.relu(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    loss = F.cross_entropy(scores, y) + reg * ((p["W1"] ** 2).sum() + (p["W2"] ** 2).sum())
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in p.items()}


def bench_device(device, repeats, data_note):
    """All A2 figures on one device; returns (records, printable lines)."""
    dev = device.type
    name = device_name(device)
    records, lines = [], []
    gen = torch.Generator().manual_seed(0)

    threads = {"cpu_threads": torch.get_num_threads()} if dev == "cpu" else {}

    def record(metric, value, unit, seconds, details):
        records.append(make_record("A2", f"{metric}_{dev}", value, unit, data_note, name,
                                   seconds, details={**details, **threads}))

    # 1. naive vs vectorized on the course's check batch
    n_check = pick(full=128, quick=32)
    X = torch.randn(n_check, 3073, generator=gen, dtype=torch.float64).to(device)
    y = torch.randint(10, (n_check,), generator=gen).to(device)
    W = (1e-4 * torch.randn(3073, 10, generator=gen, dtype=torch.float64)).to(device)
    for kind, naive, vec in (("svm", lc.svm_loss_naive, lc.svm_loss_vectorized),
                             ("softmax", lc.softmax_loss_naive, lc.softmax_loss_vectorized)):
        t_naive, naive_times = median_time(lambda: naive(W, X, y, 1e-3), max(1, repeats // 2 + 1))
        t_vec, vec_times = median_time(lambda: vec(W, X, y, 1e-3), repeats * 4)
        speedup = t_naive / t_vec
        record(f"{kind}_vectorized_vs_naive_speedup", round(speedup, 1), "x", sum(naive_times) + sum(vec_times),
               {"shape": [n_check, 3073, 10], "dtype": "float64", "naive_ms": round(1e3 * t_naive, 3),
                "vectorized_ms": round(1e3 * t_vec, 4), "statistic": "median"})
        lines.append(f"[{dev}] {kind}: naive {1e3 * t_naive:.1f} ms, vectorized {1e3 * t_vec:.3f} ms "
                     f"-> speed-up {speedup:.0f}x ({n_check} x 3073, float64)")

    # 2. vectorized loss + gradient vs autograd on a training-set-sized batch
    n_big = pick(full=40000, quick=2000)
    X = torch.randn(n_big, 3073, generator=gen).to(device)
    y = torch.randint(10, (n_big,), generator=gen).to(device)
    W = (1e-3 * torch.randn(3073, 10, generator=gen)).to(device)
    for kind, ours, ref in (("svm", lc.svm_loss_vectorized, svm_autograd),
                            ("softmax", lc.softmax_loss_vectorized, softmax_autograd)):
        t_ours, ours_times = median_time(lambda: ours(W, X, y, 1e-3), repeats)
        t_ref, ref_times = median_time(lambda: ref(W, X, y, 1e-3), repeats)
        ratio = t_ours / t_ref
        record(f"{kind}_vectorized_vs_autograd_time_ratio", round(ratio, 3), "ratio",
               sum(ours_times) + sum(ref_times),
               {"shape": [n_big, 3073, 10], "dtype": "float32", "ours_ms": round(1e3 * t_ours, 3),
                "autograd_ms": round(1e3 * t_ref, 3), "statistic": "median",
                "meaning": "time of our loss+gradient / time of torch autograd forward+backward"})
        lines.append(f"[{dev}] {kind} loss+grad on {n_big} x 3073 float32: ours {1e3 * t_ours:.2f} ms, "
                     f"autograd {1e3 * t_ref:.2f} ms -> ratio {ratio:.2f}")


    # 3. the two-layer net's forward + backward vs autograd
    n, hidden = pick(full=1000, quick=200), pick(full=256, quick=64)
    X = torch.randn(n, 3072, generator=gen).to(device)
    y = torch.randint(10, (n,), generator=gen).to(device)
    params = {"W1": 1e-2 * torch.randn(3072, hidden, generator=gen), "b1": torch.zeros(hidden),
              "W2": 1e-2 * torch.randn(hidden, 10, generator=gen), "b2": torch.zeros(10)}
    params = {k: v.to(device) for k, v in params.items()}
    t_ours, ours_times = median_time(lambda: tln.nn_forward_backward(params, X, y, 1e-3), repeats)
    t_ref, ref_times = median_time(lambda: two_layer_autograd(params, X, y, 1e-3), repeats)
    record("two_layer_forward_backward_vs_autograd_time_ratio", round(t_ours / t_ref, 3), "ratio",
           sum(ours_times) + sum(ref_times),
           {"batch": n, "hidden": hidden, "dtype": "float32", "ours_ms": round(1e3 * t_ours, 3),
            "autograd_ms": round(1e3 * t_ref, 3), "statistic": "median"})
    lines.append(f"[{dev}] two-layer forward+backward (batch {n}, hidden {hidden}): ours "
                 f"{1e3 * t_ours:.2f} ms, autograd {1e3 * t_ref:.2f} ms -> ratio {t_ours / t_ref:.2f}")
    return records, lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=pick(full=5, quick=2), help="timed runs per figure (median)")
    parser.add_argument("--devices", nargs="*", default=None,
                        help="devices to benchmark (default: cpu, plus cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="merge the result records into PATH (JSON list)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    data_note = "synthetic N(0,1) inputs of CIFAR-10 shapes"
    records = []
    for d in devices:
        device = torch.device(d)
        recs, lines = bench_device(device, args.repeats, data_note)
        records += recs
        for line in lines:
            print(line, flush=True)
    if args.json:
        merge_records(args.json, records)
        print(f"merged {len(records)} records into {args.json}")
    return records


if __name__ == "__main__":
    main()
