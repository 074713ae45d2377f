"""A5/gpu_handoff.py: a detector trained on one machine (a GPU that cannot hold the validation
images) is exported in size-limited shards and evaluated on another, with records that say so."""
import json

import pytest
import torch

import detection_training as dt
from eecs598.testing import shared_data_available


def test_sharded_state_dict_round_trip_respects_the_size_limit(tmp_path):
    """save_sharded splits a detector's state dict (float weights, BatchNorm int64 counters) into
    files of at most max_bytes of tensor data unless one tensor alone is larger; load_sharded
    returns the identical dict (same keys in order, same dtypes and values)."""
    import fcos_experiments as fx
    torch.manual_seed(0)
    s = dict(fx.GPU_PROTOCOL, stem_channels=[32], fpn_channels=32)
    state = fx.build_fcos(s, pretrained=False).state_dict()
    limit = 2 * 2**20
    paths = dt.save_sharded(state, tmp_path, "fcos", max_bytes=limit)
    assert len(paths) > 1
    for p in paths:
        shard = torch.load(p, weights_only=True)
        sizes = [v.numel() * v.element_size() for v in shard.values()]
        assert sum(sizes) <= limit or len(sizes) == 1
    loaded = dt.load_sharded(tmp_path, "fcos")
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    with pytest.raises(FileNotFoundError):
        dt.load_sharded(tmp_path, "faster_rcnn")


def test_a_smaller_save_into_the_same_folder_leaves_no_old_shards(tmp_path):
    """Saving fewer shards over an earlier save under the same name must not let load_sharded
    mix the old tensors in."""
    old = {f"w{i}": torch.full((256,), float(i)) for i in range(4)}
    assert len(dt.save_sharded(old, tmp_path, "m", max_bytes=1024)) == 4
    new = {"w0": torch.full((256,), 10.0), "w1": torch.full((256,), 11.0)}
    assert len(dt.save_sharded(new, tmp_path, "m", max_bytes=1024)) == 2
    loaded = dt.load_sharded(tmp_path, "m")
    assert list(loaded) == ["w0", "w1"] and loaded["w1"][0] == 11.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.shard0.pt", "m.shard1.pt"]


def test_metric_suffix_and_device_labels():
    assert dt.metric_suffix("cpu") == "" and dt.metric_suffix("gpu") == "_gpu_protocol"
    assert dt.metric_suffix("cuda") == "_gpu_protocol"
    here = dt.device_name("cpu")
    assert dt.devices_label({"device": here}, "cpu") == here and dt.handoff_details({"device": here}, "cpu") == {}
    label = dt.devices_label({"device": "NVIDIA H200"}, "cpu")
    assert label == f"NVIDIA H200 (training); {here} (evaluation)"
    assert dt.handoff_details({"device": "NVIDIA H200"}, "cpu")["trained_on"] == "NVIDIA H200"


@pytest.mark.skipif(not shared_data_available("voc2007", "voc07_val.json"), reason="VOC not in $EECS598_DATA")
@pytest.mark.parametrize("kind,protocol", [("fcos", "cpu"), ("faster_rcnn", "cpu"),
                                           ("fcos", "gpu"), ("faster_rcnn", "cuda")])
def test_export_then_evaluate_elsewhere_in_quick_mode(kind, protocol, tmp_path, monkeypatch):
    """Quick mode on the CPU, with either protocol (the GPU protocols' training code runs on the
    CPU too, in fp32): export writes shards + JSON; import_trained rebuilds the detector with
    exactly the exported weights; run(trained=...) evaluates it and, when the JSON names another
    training device, labels the records with both machines and adds that machine's speed row.
    The GPU protocol's metrics carry the "_gpu_protocol" suffix; Faster R-CNN's runs its RPN NMS
    as on a GPU (`common.nms_masks`), in training and evaluation. With figures_dir, run also
    writes the PR curves and three drawn detections under the metrics' prefix."""
    import gpu_handoff
    monkeypatch.setenv("EECS598_QUICK", "1")
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path / "cache"))
    if protocol == "cuda":  # the GPU protocol's loader, worker processes included, runs here too
        import common
        import rcnn_experiments as rx
        assert rx.settings(protocol)["num_workers"] == 8
        monkeypatch.setattr(common, "_NMS_ON_HOST_DEVICES", ())  # and the RPN's NMS as on a GPU
    module, after_training = gpu_handoff.MODULES[kind], {}
    real_train = module.train

    def train(*args, **kwargs):  # the weights training ended with
        out = real_train(*args, **kwargs)
        after_training.update({k: v.clone() for k, v in out["detector"].state_dict().items()})
        return out
    monkeypatch.setattr(module, "train", train)
    # the CPU protocol is also the default on this device: export without naming it
    info = gpu_handoff.export(kind, tmp_path / "out", "cpu", verbose=False,
                              protocol=None if protocol == "cpu" else protocol)
    assert info["protocol"] == protocol
    assert info["shards"] == [f"{kind}.shard0.pt"] and info["training_device_images_per_s"] > 0
    assert info["train"]["iters"] > 0
    trained = gpu_handoff.import_trained(kind, tmp_path / "out")
    exported = dt.load_sharded(tmp_path / "out", kind)
    assert list(exported) == list(after_training)
    for k, v in trained["detector"].state_dict().items():
        assert torch.equal(v, exported[k]) and torch.equal(v, after_training[k]), k

    path = tmp_path / "out" / f"{kind}_train.json"
    doc = json.loads(path.read_text())
    assert doc["protocol"] == protocol and isinstance(doc["bf16_autocast"], bool)
    assert doc["training_device_batch_size"] == module.eval_batch_size("cpu")
    # as if exported on a GPU machine: there, training ran under bf16 autocast and inference was
    # timed in batches of 32; the records must say so, not what this CPU would have done
    doc.update(device="NVIDIA H200 (test)", bf16_autocast=True, training_device_batch_size=32)
    path.write_text(json.dumps(doc))
    records = gpu_handoff.MODULES[kind].run("cpu", trained=gpu_handoff.import_trained(kind, tmp_path / "out"),
                                            figures_dir=tmp_path / "figures")
    metrics = {r["metric"]: r for r in records}
    name = "fcos" if kind == "fcos" else "faster_rcnn"
    suffix = "" if protocol == "cpu" else "_gpu_protocol"
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written == sorted([f"{name}{suffix}_pr_curves.png"] + [f"{name}{suffix}_detections_{k}.jpg" for k in range(3)])
    magic = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff"}
    for figure in (tmp_path / "figures").iterdir():
        assert figure.read_bytes().startswith(magic[figure.suffix]) and figure.stat().st_size > 5000, figure.name
    assert set(metrics) == {f"{name}_map50{suffix}", f"{name}_map50_voc07_11pt{suffix}",
                            f"{name}_images_per_s{suffix}", f"{name}_images_per_s{suffix}_training_device"}
    map50 = metrics[f"{name}_map50{suffix}"]
    assert map50["device"].startswith("NVIDIA H200 (test) (training); ")
    assert map50["details"]["trained_on"] == "NVIDIA H200 (test)" and 0 <= map50["value"] <= 100
    assert metrics[f"{name}_images_per_s{suffix}_training_device"]["device"] == "NVIDIA H200 (test)"
    assert map50["details"]["bf16_autocast"] is True
    speed = metrics[f"{name}_images_per_s{suffix}_training_device"]
    assert "batch 32" in speed["unit"] if kind == "fcos" else speed["details"]["batch"] == 32


def test_both_detectors_take_either_name_of_the_gpu_protocol_and_refuse_others():
    import fcos_experiments as fx
    import rcnn_experiments as rx

    assert fx.settings("cuda") == fx.settings("gpu") and rx.settings("gpu") == rx.settings("cuda")
    assert fx.settings("cpu")["fpn_channels"] != fx.settings("gpu")["fpn_channels"]
    assert fx.protocol_name("cuda") == "gpu" and rx.protocol_name("gpu") == "cuda"
    for module in (fx, rx):
        with pytest.raises(ValueError, match="unknown protocol 'tpu'"):
            module.settings("tpu")


# --- export's images, weights and protocol; the evaluate command ----------------------------

@pytest.mark.parametrize("kind", ["fcos", "faster_rcnn"])
def test_speed_is_timed_on_training_images(kind, monkeypatch):
    """The GPU machine holds only the training images: the speed run must not load voc07_val."""
    import common
    import fcos_experiments
    import gpu_handoff
    loaded = []
    monkeypatch.setattr(dt, "load_voc", lambda split, n: loaded.append((split, n)) or [object()] * n)
    fake = lambda *args, **kwargs: {"images_per_s": 7.0, "batch_size": kwargs["batch_size"]}
    monkeypatch.setattr(fcos_experiments, "evaluate", fake)
    monkeypatch.setattr(common, "evaluate_detector", fake)
    out = {"settings": {"score_thresh": 0.05, "nms_thresh": 0.5}, "detector": None, "num_train": 3}
    speed, _, num, batch_size = gpu_handoff.measure_speed(kind, out, "cpu")
    assert loaded == [("train", 3)] and speed == 7.0 and num == 3
    # in the batches of the measuring machine's protocol, which the export reports
    assert batch_size == gpu_handoff.MODULES[kind].eval_batch_size("cpu")


def test_evaluate_command_writes_into_the_results_dir(tmp_path, monkeypatch):
    """`gpu_handoff.py evaluate KIND IN_DIR --results-dir R`: the imported detector goes to run(),
    the records into R/results.json and R/RESULTS.md, the figures into R/figures/A5."""
    import gpu_handoff
    from eecs598.results import make_record
    seen = {}

    def run(device, trained=None, figures_dir=None):
        seen.update(trained=trained, figures_dir=figures_dir)
        return [make_record("A5", "fcos_map50_gpu_protocol", 1.0, "%", "voc", "x", 1.0, mode="full")]
    monkeypatch.setattr(gpu_handoff.fcos_experiments, "run", run)
    monkeypatch.setattr(gpu_handoff, "import_trained", lambda kind, folder: {"kind": kind, "folder": folder})
    monkeypatch.delenv("EECS598_QUICK", raising=False)
    results = tmp_path / "results"
    gpu_handoff.main(["evaluate", "fcos", str(tmp_path / "in"), "--device", "cpu", "--results-dir", str(results)])
    assert seen == {"trained": {"kind": "fcos", "folder": str(tmp_path / "in")},
                    "figures_dir": results / "figures" / "A5"}
    assert [r["metric"] for r in json.loads((results / "results.json").read_text())] == ["fcos_map50_gpu_protocol"]
    assert (results / "RESULTS.md").is_file()


def test_a_quick_evaluation_writes_no_figures(tmp_path, monkeypatch):
    """A smoke `evaluate` (EECS598_QUICK=1) must not replace the measured figures: figure files
    carry no mode, so run() gets no figures_dir, as under `make reproduce --quick`."""
    import gpu_handoff
    seen = {}
    monkeypatch.setattr(gpu_handoff.fcos_experiments, "run",
                        lambda device, trained=None, figures_dir=None: seen.update(figures_dir=figures_dir) or [])
    monkeypatch.setattr(gpu_handoff, "import_trained", lambda kind, folder: None)
    monkeypatch.setenv("EECS598_QUICK", "1")
    gpu_handoff.main(["evaluate", "fcos", str(tmp_path), "--device", "cpu", "--results-dir", str(tmp_path / "r")])
    assert seen == {"figures_dir": None}
