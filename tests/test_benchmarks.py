"""benchmarks/: every script runs end to end in quick mode and writes well-formed result records;
bench_a3's multi-process median keeps one measurement's details per metric."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def _require(script):
    """Skip when the script is absent (a student copy released up to an earlier assignment)."""
    if not (BENCHMARKS / f"{script}.py").is_file():
        pytest.skip(f"benchmarks/{script}.py is not in this copy")


def _load(script):
    """benchmarks/<script>.py as a module (skipped when absent)."""
    _require(script)
    spec = importlib.util.spec_from_file_location(script, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_a3():
    return _load("bench_a3")


def _run(script, *args, tmp_path):
    _require(script)
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "EECS598_QUICK": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *args, "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check_records(records, assignment):
    assert records, "no records written"
    metrics = [r["metric"] for r in records]
    assert len(set(metrics)) == len(metrics), metrics
    for r in records:
        assert r["assignment"] == assignment and r["mode"] == "quick"
        assert isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0, r
        assert r["device"] and r["data"] and r["unit"]


@pytest.mark.parametrize("script, assignment", [("bench_knn", "A1"), ("bench_a2", "A2")])
def test_benchmark_scripts_run_in_quick_mode(tmp_path, script, assignment):
    records, _ = _run(script, "--devices", "cpu", tmp_path=tmp_path)
    _check_records(records, assignment)


def test_bench_a2_records_its_thread_count_and_merges_into_an_existing_file(tmp_path):
    kept = {"assignment": "A1", "metric": "kept_row", "value": 1.0, "unit": "x", "mode": "quick",
            "data": "d", "device": "cpu"}
    (tmp_path / "bench_a2.json").write_text(json.dumps([kept]))
    records, _ = _run("bench_a2", "--devices", "cpu", "--threads", "1", "--repeats", "1", tmp_path=tmp_path)
    assert kept in records
    _check_records([r for r in records if r != kept], "A2")
    assert all(r["details"]["cpu_threads"] == 1 for r in records if r != kept)


def test_bench_a3_names_its_cpu_rows_by_thread_count_and_records_the_median_process(tmp_path):
    records, stdout = _run("bench_a3", "--device", "cpu", "--threads", "1", "--runs", "3", tmp_path=tmp_path)
    _check_records(records, "A3")
    assert stdout.count("-- process") == 3
    assert {r["metric"] for r in records} == {
        f"bench_{op}_fwd_bwd_ratio_vs_torch_cpu_1thread" for op in ("conv", "maxpool", "batchnorm")
    } | {"bench_conv_naive_vs_fast_speedup_cpu_1thread", "bench_deepconvnet_step_ratio_vs_torch_nn_cpu_1thread"}
    for r in records:
        runs = r["details"]["runs"]
        assert len(runs) == 3 and runs == sorted(runs) and r["value"] == runs[1]
        assert r["details"]["cpu_threads"] == 1 and r["details"]["processes"] == 3
    conv = next(r for r in records if r["metric"].startswith("bench_conv_fwd"))
    assert conv["value"] == pytest.approx(conv["details"]["ours_ms"] / conv["details"]["torch_ms"])


def test_median_of_runs_keeps_the_median_measurement_whole():
    bench = _bench_a3()

    def run(*values):
        return [{"metric": m, "value": v, "details": {"ours_ms": 10 * v, "tag": i}}
                for i, (m, v) in enumerate(zip(("a", "b"), values))]

    combined = bench.median_of_runs([run(3.0, 1.0), run(1.0, 5.0), run(2.0, 4.0), run(9.0, 2.0)])
    assert [r["metric"] for r in combined] == ["a", "b"]
    a, b = combined
    assert a["value"] == 2.0 and a["details"]["ours_ms"] == 20.0  # lower middle of four
    assert a["details"]["runs"] == [1.0, 2.0, 3.0, 9.0] and a["details"]["processes"] == 4
    assert b["value"] == 2.0 and b["details"]["ours_ms"] == 20.0 and b["details"]["tag"] == 1
    with pytest.raises(ValueError, match="b: found in 1 of 2 runs"):
        bench.median_of_runs([run(1.0, 2.0), run(1.0, 2.0)[:1]])


def test_without_option_drops_the_option_and_its_value():
    bench = _bench_a3()
    argv = ["--runs", "5", "--threads", "2", "--json=x.json", "--json", "y.json", "--repeats", "3"]
    assert bench._without_option(bench._without_option(argv, "--runs"), "--json") == [
        "--threads", "2", "--repeats", "3"]


def test_bench_a3_refuses_to_time_results_that_disagree_with_pytorch():
    bench = _bench_a3()
    x = torch.randn(3, 4)
    bench.check_agreement("ok", (x, 2 * x), (x + 1e-6, 2 * x))
    with pytest.raises(AssertionError, match=r"wrong: tensor 1 differs"):
        bench.check_agreement("wrong", (x, 2 * x), (x, 3 * x))
    with pytest.raises(AssertionError, match="shape"):
        bench.check_agreement("shape", (x,), (x.t(),))


@pytest.mark.parametrize("batchnorm", [False, True])
def test_bench_a3_torch_copy_of_the_deepconvnet_computes_our_loss_and_gradients(batchnorm):
    """The training-step benchmark times our DeepConvNet against a torch.nn copy: the copy (same
    weights, batch norm in train mode, the same weight penalty) gives our loss and gradients."""
    bench = _bench_a3()
    cn = pytest.importorskip("convolutional_networks")
    torch.manual_seed(31)
    model = cn.DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 6], max_pools=[0, 1], batchnorm=batchnorm,
                           weight_scale="kaiming", reg=0.3, dtype=torch.float64)
    if batchnorm:
        for i in (1, 2):
            model.params[f"gamma{i}"] += 0.1 * torch.randn_like(model.params[f"gamma{i}"])
            model.params[f"beta{i}"] += 0.1 * torch.randn_like(model.params[f"beta{i}"])
    X, y = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randint(10, (5,))
    loss, grads = model.loss(X, y)
    net, _ = bench._torch_deepconvnet(model, "cpu")
    reference = bench.torch_loss(net, X, y, model.reg)
    reference.backward()
    torch.testing.assert_close(torch.as_tensor(loss, dtype=torch.float64), reference.detach(), rtol=1e-10, atol=0)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    torch.testing.assert_close(grads["W1"], convs[0].weight.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(grads["b2"], convs[1].bias.grad, rtol=1e-8, atol=1e-12)
    if batchnorm:
        bns = [m for m in net if isinstance(m, torch.nn.BatchNorm2d)]
        torch.testing.assert_close(grads["gamma1"], bns[0].weight.grad, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(grads["beta2"], bns[1].bias.grad, rtol=1e-8, atol=1e-12)


def _run_all():
    return _load("run_all")


FAKE_BENCH = '''import argparse, json
{make_bench}
if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", default="default")
    parser.add_argument("--json")
    args = parser.parse_args()
    row = {{"assignment": "A0", "metric": "{name}_" + args.threads, "value": 1.0, "unit": "x", "mode": "full",
            "reference": None, "data": "d", "device": "cpu", "seconds": 0.0, "date": "2026-11-30"}}
    json.dump([row], open(args.json, "w"))
'''


def test_run_all_runs_each_bench_with_its_make_bench_commands_and_merges_the_rows(tmp_path):
    """`make bench` runs every command a script names in MAKE_BENCH (one run with the defaults
    when it names none), each in its own process, and merges every run's rows."""
    run_all = _run_all()
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "bench_x.py").write_text(FAKE_BENCH.format(
        name="x", make_bench='MAKE_BENCH = [["--threads", "1"], ["--threads", "2"]]'))
    (bench_dir / "bench_y.py").write_text(FAKE_BENCH.format(name="y", make_bench=""))
    (bench_dir / "helper.py").write_text("raise SystemExit('not a benchmark')\n")  # not bench_*.py: not run
    run_all.main(["--results-dir", str(tmp_path / "results")], bench_dir=bench_dir)
    rows = json.loads((tmp_path / "results" / "results.json").read_text())
    assert sorted(r["metric"] for r in rows) == ["x_1", "x_2", "y_default"]
    assert (tmp_path / "results" / "RESULTS.md").is_file()


@pytest.mark.parametrize("script, assignment", [("bench_knn", "A1"), ("bench_a2", "A2"), ("bench_a3", "A3")])
def test_make_bench_reruns_the_protocol_of_the_committed_cpu_rows(script, assignment):
    """Each committed CPU benchmark row (a speed-up or time ratio) was measured by one of the
    commands its script's MAKE_BENCH names: the same thread count and, for bench_a3, the same
    number of processes. So `make bench` replaces it like for like."""
    _require(script)
    results = ROOT / "results" / "results.json"
    if not results.is_file():
        pytest.skip("no results/results.json in this copy (the student copy has none)")
    protocols = set()
    for command in _run_all().bench_commands(BENCHMARKS / f"{script}.py"):
        options = dict(zip(command[::2], command[1::2]))
        if options.get("--device", options.get("--devices")) == "cpu":
            protocols.add((int(options["--threads"]), int(options.get("--runs", 1))))
    rows = [r for r in json.loads(results.read_text())
            if r["assignment"] == assignment and re.search(r"(speedup|ratio).*_cpu", r["metric"])]
    assert protocols and rows
    for r in rows:
        assert (r["details"].get("cpu_threads"), r["details"].get("processes", 1)) in protocols, r["metric"]


def test_run_all_fails_when_a_benchmark_fails(tmp_path):
    """A crashing bench script must fail `make bench`, not leave the old rows silently in place."""
    run_all = _run_all()
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "bench_bad.py").write_text("if __name__ == \"__main__\":\n    raise SystemExit(3)\n")
    with pytest.raises(subprocess.CalledProcessError):
        run_all.main(["--results-dir", str(tmp_path / "results")], bench_dir=bench_dir)


@pytest.mark.parametrize("protocol, suffix", [("cpu", ""), ("gpu", "_gpu_protocol")])
def test_bench_a5_times_both_detectors_and_both_nms_paths(tmp_path, protocol, suffix):
    """Quick mode, one thread, either protocol (the GPU protocol's code runs on the CPU too): the
    three A5 rows, named by thread count (and the protocol when it is not the device's own), the
    speed-up consistent with the two timings it comes from."""
    records, stdout = _run("bench_a5", "--device", "cpu", "--threads", "1", "--protocol", protocol,
                           tmp_path=tmp_path)
    _check_records(records, "A5")
    by_metric = {r["metric"]: r for r in records}
    tag = "cpu_1thread" + suffix
    assert set(by_metric) == {f"fcos_train_step_ms_{tag}", f"faster_rcnn_train_step_ms_{tag}",
                              f"faster_rcnn_step_speedup_nms_masks_vs_host_{tag}"}
    speedup = by_metric[f"faster_rcnn_step_speedup_nms_masks_vs_host_{tag}"]
    assert speedup["value"] == pytest.approx(speedup["details"]["host_ms"] / speedup["details"]["masks_ms"])
    assert by_metric[f"faster_rcnn_train_step_ms_{tag}"]["value"] == speedup["details"]["host_ms"]  # the CPU's default
    assert "nms_masks on the device" in stdout and "per image on the host (default)" in stdout
