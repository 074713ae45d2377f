"""A5/train_for_iterations.py: a detector protocol trained for a fixed number of iterations
(its time limit off), then evaluated; the settings it overrides reach training and evaluation."""
import json

import pytest

import train_for_iterations as tfi
from eecs598.testing import shared_data_available


@pytest.mark.skipif(not shared_data_available("voc2007", "voc07_val.json"), reason="VOC not in $EECS598_DATA")
@pytest.mark.parametrize("kind,protocol,extra", [("fcos", "gpu", []), ("faster_rcnn", "gpu", []),
                                                 ("fcos", "cpu", ["--seed", "3", "--input-normalization", "imagenet"])])
def test_trains_the_given_iterations_and_evaluates_the_given_images(kind, protocol, extra, tmp_path, monkeypatch):
    """Quick mode's settings would train 6 (FCOS) or 4 (Faster R-CNN) iterations and evaluate on
    8 or 4 images: the tool's 3 iterations and 2 images must replace them; --seed and
    --input-normalization reach the training."""
    monkeypatch.setenv("EECS598_QUICK", "1")
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path / "cache"))
    seeds = []
    monkeypatch.setattr(tfi.MODULES[kind], "reset_seed" if kind == "fcos" else "eecs598",
                        _recording_reset_seed(seeds) if kind == "fcos" else _EecsWithRecordingSeed(seeds))
    path = tmp_path / "out.json"
    out = tfi.main([kind, "--iters", "3", "--num-val", "2", "--protocol", protocol, "--device", "cpu",
                    "--json", str(path), *extra])
    assert seeds and set(seeds) == {3 if extra else 0}
    assert out["seed"] == (3 if extra else 0)
    assert out["input_normalization"] == "imagenet"  # the GPU protocols' own, and the CPU one's overridden
    saved = json.loads(path.read_text())  # (classes without a box have AP NaN, so keys, not ==)
    assert saved.keys() == out.keys() and all(saved[k] == out[k] for k in ("iters", "map", "num_val", "protocol"))
    assert out["iters"] == 3 and out["num_val"] == 2 and out["kind"] == kind
    assert out["protocol"] == {"cpu": "cpu", "gpu": "gpu" if kind == "fcos" else "cuda"}[protocol]
    assert 0.0 <= out["map"] <= 1.0 and 0.0 <= out["map_07"] <= 1.0 and out["images_per_s"] > 0
    assert out["final_loss"] > 0 and len(out["ap_per_class"]) == 20
    assert not list((tmp_path / "cache").rglob("*.pt"))  # no checkpoint or weights left behind


def _recording_reset_seed(seeds):
    from eecs598.utils import reset_seed

    def record(seed=0):
        seeds.append(seed)
        reset_seed(seed)
    return record


class _EecsWithRecordingSeed:
    """rcnn_experiments' `eecs598` module with reset_seed recording its seeds."""

    def __init__(self, seeds):
        import eecs598
        self._module, self.reset_seed = eecs598, _recording_reset_seed(seeds)

    def __getattr__(self, name):
        return getattr(self._module, name)


def test_iters_must_be_positive():
    with pytest.raises(SystemExit):
        tfi.main(["fcos", "--iters", "0"])
