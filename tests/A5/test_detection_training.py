"""Tests of A5/detection_training.py (shared training machinery of the FCOS and Faster R-CNN
experiments). References: the detectors' own end-to-end forward on (mirrored) images, the cosine
and warmup formulas written out by hand, an uninterrupted training run, batch-1 prediction."""
import math

import pytest
import torch
from torch import nn

import common
import detection_training as dt
import one_stage_detector as osd
import two_stage_detector as tsd
from eecs598.testing import assert_close

H, W = 64, 96


def _tiny_data():
    torch.manual_seed(0)
    images = torch.randn(2, 3, H, W)
    gt = torch.full((2, 40, 5), -1.0)
    gt[0, :2] = torch.tensor([[4.0, 6.0, 50.0, 60.0, 3.0], [30.0, 10.0, 90.0, 40.0, 11.0]])
    gt[1, 0] = torch.tensor([10.0, 12.0, 70.0, 58.0, 7.0])
    return images, gt, [("a", images[0], gt[0]), ("b", images[1], gt[1])]


def _fcos():
    return osd.FCOS(num_classes=20, fpn_channels=16, stem_channels=[16], pretrained=False,
                    freeze_backbone=True)


def _rcnn():
    fpn = common.DetectorBackboneWithFPN(16, pretrained=False, freeze_backbone=True)
    rpn = tsd.RPN(16, [16], batch_size_per_image=64, pre_nms_topk=100, post_nms_topk=20)
    return tsd.FasterRCNN(fpn, rpn, [16], 20, batch_size_per_image=32)


def _flipped_gt(gt, width=W):
    """Mirrored boxes written out by hand (x1' = W - x2, x2' = W - x1 on real rows)."""
    out = gt.clone()
    real = gt[..., 4] >= 0
    out[..., 0][real] = width - gt[..., 2][real]
    out[..., 2][real] = width - gt[..., 0][real]
    return out


@pytest.mark.parametrize("make", [_fcos, _rcnn], ids=["fcos", "faster_rcnn"])
def test_cached_feature_losses_equal_end_to_end(make):
    """Losses from cached features (originals and mirrored copies) equal detector(images, gt)
    on the (mirrored) images; same RNG seed for the RPN/ROI sampling; tolerance 1e-5."""
    images, gt, dataset = _tiny_data()
    det = make().train()
    cache = dt.cache_backbone_features(det.backbone.backbone, dataset, "cpu", flip=True,
                                       store_dtype=torch.float32)
    assert cache["gt"].shape == (4, 40, 5) and cache["image_size"] == (H, W)
    assert torch.equal(cache["gt"][:2], gt) and torch.equal(cache["gt"][2:], _flipped_gt(gt))
    real_extractor = det.backbone.backbone
    for idx, (x, g) in (([0, 1], (images, gt)), ([2, 3], (images.flip(-1), _flipped_gt(gt)))):
        if hasattr(det, "_normalizer"):
            det._normalizer.fill_(150.0)
        torch.manual_seed(1)
        ours = dt.losses_from_cached_features(det, {k: v[idx] for k, v in cache["feats"].items()},
                                              cache["gt"][idx], cache["image_size"])
        if hasattr(det, "_normalizer"):
            det._normalizer.fill_(150.0)
        torch.manual_seed(1)
        ref = det(x, g)
        assert sorted(ours) == sorted(ref)
        for name in ref:
            assert_close(ours[name], ref[name], 1e-5, name)
    assert det.backbone.backbone is real_extractor  # the stand-in is removed again


def test_cached_backbone_restores_on_error():
    det = _fcos()
    real = det.backbone.backbone
    with pytest.raises(RuntimeError):
        with dt.cached_backbone(det) as stand_in:
            assert det.backbone.backbone is stand_in and isinstance(stand_in, dt.CachedFeatures)
            raise RuntimeError("boom")
    assert det.backbone.backbone is real


def test_lr_factor_values():
    """Hand-computed values: cosine over progress = max(it / max_iters, elapsed / time_limit),
    linear warmup from warmup_start (tolerance 1e-12)."""
    f = lambda *a, **k: dt.lr_factor(*a, **k)[0]  # noqa: E731
    assert f(0, 0.0, 100, None, 10) == pytest.approx(0.001, abs=1e-12)
    assert f(5, 0.0, 100, None, 10) == pytest.approx((0.001 + 0.999 * 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert f(50, 0.0, 100, None, 10) == pytest.approx(0.5)
    assert f(50, 0.0, 100, 0, 10) == pytest.approx(0.5)  # time_limit 0: time ignored
    assert f(10, 75.0, 100, 100.0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert f(10, 5.0, 100, 100.0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert dt.lr_factor(100, 0.0, 100)[1] == 1.0 and dt.lr_factor(3, 20.0, 100, 10.0)[1] == 2.0
    assert f(3, 20.0, 100, 10.0) == pytest.approx(0.0, abs=1e-12)
    # the Faster R-CNN protocol's (it + 1) / W ramp = warmup from 1 / W over W - 1 iterations
    for it in range(60):
        assert f(it, 0.0, 10**9, None, 49, 1 / 50) == pytest.approx(min(1.0, (it + 1) / 50), rel=1e-9)


class _Linear(torch.nn.Module):
    """A 'detector' for the training loop: losses of a linear model on random batches."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x, y):
        return {"loss_a": ((self.lin(x) - y) ** 2).mean(), "loss_b": self.lin.weight.abs().sum() * 0.01}


def _loop_run(model, ckpt, fail_at=None, max_iters=12):
    s = dict(learning_rate=0.05, weight_decay=1e-4, max_iters=max_iters, time_limit=None, warmup_iters=3)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    data_x, data_y = data[:, :4], data[:, 4:]
    calls = {"n": 0}

    def next_batch():
        idx = torch.randint(32, (8,), generator=gen)
        return data_x[idx], data_y[idx]

    def loss_fn(x, y):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt  # an interrupted run
        return model(x, y)

    return dt.train_loop(model, next_batch, loss_fn, s, "cpu", log_period=4, verbose=False,
                         checkpoint_path=ckpt, checkpoint_period=5, generator=gen)


def test_train_loop_history_and_checkpoint_resume(tmp_path):
    """An interrupted run resumed from its checkpoint ends with the weights and per-iteration
    history of an uninterrupted run (same batches: the sampler's generator is checkpointed);
    tolerance 1e-6."""
    torch.manual_seed(0)
    straight = _Linear()
    out = _loop_run(straight, None)
    assert out["iters"] == 12 and len(out["loss_history"]) == 12
    assert sorted(out["loss_parts"]) == ["loss_a", "loss_b"] and len(out["loss_parts"]["loss_a"]) == 12
    assert_close(torch.tensor(out["loss_history"]),
                 torch.tensor(out["loss_parts"]["loss_a"]) + torch.tensor(out["loss_parts"]["loss_b"]),
                 1e-6, "total = sum of parts")

    ckpt = str(tmp_path / "state.pt")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        _loop_run(_Linear(), ckpt, fail_at=8)  # checkpoint written at iteration 5
    saved = torch.load(ckpt, weights_only=False)
    assert saved["iteration"] == 5
    resumed = _Linear()  # a new process starts from a new model
    again = _loop_run(resumed, ckpt)
    assert again["iters"] == 12 and len(again["loss_history"]) == 12
    # the training time counts the part before the interruption too
    assert again["resumed_at_s"] == pytest.approx(saved["elapsed"]) and again["seconds"] >= saved["elapsed"] > 0
    assert_close(torch.tensor(again["loss_history"]), torch.tensor(out["loss_history"]), 1e-6, "history")
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert_close(b, a, 1e-6, "resumed weights vs straight run")


def test_train_on_cached_features_runs_both_detectors():
    _, _, dataset = _tiny_data()
    s = dict(learning_rate=0.01, weight_decay=1e-4, max_iters=3, time_limit=None, warmup_iters=1,
             batch_size=2)
    for det, flip in ((_fcos(), False), (_rcnn(), True)):
        before = [p.detach().clone() for p in det.parameters() if p.requires_grad]
        real = det.backbone.backbone
        cache = dt.cache_backbone_features(real, dataset, "cpu", flip=not flip)
        assert cache["feats"]["c3"].dtype == torch.float16
        out = dt.train_on_cached_features(det, cache, s, "cpu", log_period=2, verbose=False, random_flip=flip)
        assert out["iters"] == 3 and len(out["loss_history"]) == 3
        assert all(math.isfinite(v) for v in out["loss_history"])
        assert det.backbone.backbone is real
        after = [p for p in det.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_batched_prediction_equals_batch_one():
    """common.predict_detections with batch_size 3 (FasterRCNN.detect_batch) gives the
    detections of batch 1 (tolerance 1e-4 on boxes and scores)."""
    torch.manual_seed(0)
    images = torch.randn(5, 3, H, W)
    gt = torch.full((5, 40, 5), -1.0)
    gt[:, 0] = torch.tensor([4.0, 6.0, 50.0, 60.0, 3.0])
    dataset = [(f"{i}", images[i], gt[i]) for i in range(5)]
    det = _rcnn().eval()
    one = common.predict_detections(det, dataset, 0.045, 0.5)
    many, stats = common.predict_detections(det, dataset, 0.045, 0.5, batch_size=3, return_stats=True,
                                            max_images=4)
    assert len(many) == 4 and stats["num_images"] == 4
    assert sum(len(p["scores"]) for p in one[:4]) > 0
    for p, q in zip(many, one):
        assert p["image_path"] == q["image_path"] and torch.equal(p["gt_boxes"], q["gt_boxes"])
        assert torch.equal(p["classes"], q["classes"])
        assert_close(p["boxes"], q["boxes"], 1e-4, "boxes")
        assert_close(p["scores"], q["scores"], 1e-4, "scores")


def test_checkpoint_path_under_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EECS598_CACHE", str(tmp_path))
    path = dt.checkpoint_path("x.pt")
    assert path == str(tmp_path / "checkpoints" / "A5" / "x.pt") and (tmp_path / "checkpoints" / "A5").is_dir()
    monkeypatch.delenv("EECS598_CACHE")
    assert dt.checkpoint_path("x.pt") is None


def test_bf16_policy(monkeypatch):
    monkeypatch.setattr(dt, "cpu_has_fast_bf16", lambda: False)
    assert not dt.use_bf16({"amp_bf16": "auto"}, "cpu") and not dt.use_bf16({}, "cpu")
    assert not dt.use_bf16({"amp_bf16": True}, "cpu")
    monkeypatch.setattr(dt, "cpu_has_fast_bf16", lambda: True)
    assert dt.use_bf16({"amp_bf16": "auto"}, "cpu") and not dt.use_bf16({}, "cpu")
    with dt.autocast_for({}, "cpu"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_auto_on_cuda_needs_native_bf16(monkeypatch, capability, native):
    """"auto" turns bf16 on only on GPUs that compute in it natively (a T4, 7.5, emulates it)."""
    monkeypatch.setattr(dt, "get_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert dt.use_bf16({"amp_bf16": "auto"}, "cuda") == native
    assert dt.use_bf16({"amp_bf16": True}, "cuda")  # forced on


def test_fcos_end_to_end_batches_come_from_the_checkpointed_generator(monkeypatch):
    """The GPU protocol's batches and flips are drawn from the generator that train_loop
    checkpoints: restoring its state replays the same batch, whatever the global RNG does."""
    import fcos_experiments as fx
    captured = {}
    monkeypatch.setattr(dt, "train_loop", lambda *a, **k: captured.update(next_batch=a[1], **k))
    images = torch.rand(6, 3, 8, 8)
    gts = torch.rand(6, 2, 5) * 8
    fx.train_end_to_end(torch.nn.Linear(1, 1), images, gts, {"batch_size": 4}, "cpu")
    generator, next_batch = captured["generator"], captured["next_batch"]
    state = generator.get_state()
    x1, gt1 = next_batch()
    torch.manual_seed(123)  # the global RNG must not matter
    generator.set_state(state)
    x2, gt2 = next_batch()
    assert torch.equal(x1, x2) and torch.equal(gt1, gt2)
    x3, _ = next_batch()
    assert not torch.equal(x1, x3)


def _check_flip_pairing(entries, gts, sources, mirrored_sources, source_gts, width):
    """Each batch entry is exactly one source entry, either as it is with its boxes, or its
    mirror image (mirrored_sources) with its boxes mirrored by hand; returns how many entries
    were mirrored."""
    flipped = 0
    for x, gt in zip(entries, gts):
        matches = [(i, False) for i in range(len(sources)) if torch.equal(x, sources[i])]
        matches += [(i, True) for i in range(len(sources)) if torch.equal(x, mirrored_sources[i])]
        assert len(matches) == 1, "each entry is exactly one source, mirrored or not"
        i, mirrored = matches[0]
        expected = _flipped_gt(source_gts[i], width) if mirrored else source_gts[i]
        assert torch.equal(gt, expected), "the boxes must be mirrored exactly when the image is"
        flipped += mirrored
    return flipped


def test_fcos_end_to_end_flips_boxes_with_their_images(monkeypatch):
    import fcos_experiments as fx
    captured = {}
    monkeypatch.setattr(dt, "train_loop", lambda *a, **k: captured.update(next_batch=a[1]))
    torch.manual_seed(0)
    images = torch.rand(6, 3, 8, 10)
    gts = torch.full((6, 3, 5), -1.0)
    gts[:, :2, :4] = torch.rand(6, 2, 4) * 8
    gts[:, :2, 4] = torch.randint(0, 20, (6, 2)).float()
    fx.train_end_to_end(torch.nn.Linear(1, 1), images, gts, {"batch_size": 4}, "cpu")
    flipped = total = 0
    for _ in range(6):
        x, gt = captured["next_batch"]()
        flipped += _check_flip_pairing(x.contiguous(), gt, images, images.flip(-1), gts, images.shape[-1])
        total += len(x)
    assert 0 < flipped < total


def test_cached_features_random_flip_mirrors_maps_and_boxes_together(monkeypatch):
    captured = {}
    monkeypatch.setattr(dt, "train_loop", lambda *a, **k: captured.update(next_batch=a[1]))
    torch.manual_seed(0)
    num, width = 5, 64
    feats = {"c3": torch.rand(num, 2, 4, 8).half(), "c4": torch.rand(num, 3, 2, 4).half(),
             "c5": torch.rand(num, 4, 1, 2).half()}
    gts = torch.full((num, 3, 5), -1.0)
    gts[:, :2, :4] = torch.rand(num, 2, 4) * 60
    gts[:, :2, 4] = torch.randint(0, 20, (num, 2)).float()
    cache = {"feats": feats, "gt": gts, "image_size": (48, width)}
    dt.train_on_cached_features(_fcos(), cache, {"batch_size": 4}, "cpu", random_flip=True)

    def flat(maps):  # an entry's three maps as one vector
        return torch.cat([m.reshape(-1) for m in maps])

    sources = [flat([feats[lvl][i].float() for lvl in ("c3", "c4", "c5")]) for i in range(num)]
    mirrored = [flat([feats[lvl][i].float().flip(-1) for lvl in ("c3", "c4", "c5")]) for i in range(num)]
    flipped = total = 0
    for _ in range(6):
        batch, gt = captured["next_batch"]()
        entries = [flat([batch[lvl][k] for lvl in ("c3", "c4", "c5")]) for k in range(len(gt))]
        flipped += _check_flip_pairing(entries, gt, sources, mirrored, gts, width)
        total += len(gt)
    assert 0 < flipped < total



def test_train_loop_follows_lr_factor_and_clips_gradients(monkeypatch):
    """Every SGD step uses learning_rate * (cosine x warmup) written out by hand and the settings'
    weight decay; the gradient (norm about 4.5e4) is clipped to grad_clip = 1, so with momentum
    0.9 the weights move by sum_t lr_t * (1, 1.9, 2.71, ...)."""
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append((self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    torch.manual_seed(0)
    model = _Linear()
    huge = lambda x, y: {"loss_big": 1e4 * sum(p.sum() for p in model.parameters())}  # noqa: E731
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    s = dict(learning_rate=0.1, weight_decay=0.0, max_iters=6, time_limit=None, warmup_iters=2, grad_clip=1.0)
    dt.train_loop(model, lambda: (None, None), huge, s, "cpu", verbose=False)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * it / 6)) * (0.001 + 0.999 * it / 2 if it < 2 else 1.0)
                for it in range(6)]
    assert [lr for lr, _ in seen] == pytest.approx(expected, rel=1e-12)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    buffer_norm, total = 0.0, 0.0
    for lr in expected:
        buffer_norm = 0.9 * buffer_norm + 1.0  # a constant direction: the buffer's norm
        total += lr * buffer_norm
    assert (before - after).norm().item() == pytest.approx(total, rel=1e-4)
    seen.clear()
    dt.train_loop(model, lambda: (None, None), huge, {**s, "weight_decay": 3e-4, "max_iters": 1}, "cpu",
                  verbose=False)
    assert seen[0][1] == 3e-4


def test_image_loading_falls_back_to_this_process_when_workers_fail(monkeypatch, capsys):
    """fcos_experiments.load_images_to_device: a DataLoader whose workers die (as with a /dev/shm
    too small for the batches in flight) costs a warning and a reload in this process, not the
    run; the images and boxes are those of the dataset, in order. Without workers an error stays
    an error."""
    import fcos_experiments as fx
    real_loader = torch.utils.data.DataLoader
    calls = []

    def loader(*args, num_workers=0, **kwargs):
        calls.append(num_workers)
        if num_workers:
            raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Bus error.")
        return real_loader(*args, num_workers=num_workers, **kwargs)
    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    data = [(str(i), torch.full((3, 4, 4), float(i)), torch.full((40, 5), -1.0)) for i in range(5)]
    images, gts = fx.load_images_to_device(data, "cpu", batch_size=2, num_workers=3)
    assert calls == [3, 0] and "Bus error" in capsys.readouterr().err
    assert images.dtype == torch.float16 and images.shape == (5, 3, 4, 4) and gts.shape == (5, 40, 5)
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    monkeypatch.setattr(torch.utils.data, "DataLoader", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError, match="x"):
        fx.load_images_to_device(data, "cpu", num_workers=0)


def test_eval_batch_size_is_one_on_a_one_thread_cpu():
    """Batches only pay with more than one CPU thread (measured: see dt.eval_batch_size); other
    devices take the protocol's size."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert dt.eval_batch_size({"eval_batch_size": 4}, "cpu") == 1
        assert dt.eval_batch_size({"eval_batch_size": 32}, "meta") == 32
        torch.set_num_threads(2)
        assert dt.eval_batch_size({"eval_batch_size": 4}, "cpu") == 4
        assert dt.eval_batch_size({}, "cpu") == 1
    finally:
        torch.set_num_threads(threads)


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

class _Extractor(nn.Module):
    out_channels = {"c3": 1}

    def forward(self, images):
        return {"c3": images[:, :1]}


class _CachedDet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.backbone = _Extractor()
        self.p = nn.Parameter(torch.ones(()))

    def forward(self, images, gt):
        f = self.backbone.backbone(images)["c3"]
        return {"loss": self.p * (f.mean() + gt[:, 0, 0].mean())}


def test_train_on_cached_features_depends_only_on_seed():
    """Batches (and random flips) come from the seeded generator, not the global RNG (kills
    randint/rand without generator=gen)."""
    cache = {"feats": {"c3": torch.arange(8.).view(8, 1, 1, 1).expand(8, 1, 2, 2).contiguous()},
             "gt": torch.arange(8.).view(8, 1, 1).expand(8, 1, 5).contiguous(), "image_size": (2, 2)}
    s = {"learning_rate": 0.0, "weight_decay": 0.0, "max_iters": 6, "warmup_iters": 0, "batch_size": 2}
    runs = []
    for g in (1, 2):
        torch.manual_seed(g)
        runs.append(dt.train_on_cached_features(_CachedDet(), cache, s, "cpu", seed=0, verbose=False,
                                                random_flip=True, log_period=1)["loss_history"])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", ["fcos", "faster_rcnn"])
def test_each_protocol_gives_the_backbone_its_input_scaling(kind, monkeypatch):
    """The CPU protocols feed the frozen Lite0 backbone its weights' own (pixel - 127) / 128
    ("lite"), the GPU protocols the ImageNet-normalized input unchanged, as each was measured; a
    settings dict without the entry (an export from before it existed) means "imagenet"."""
    import fcos_experiments as fe
    import rcnn_experiments as re_
    monkeypatch.setenv("EECS598_QUICK", "1")
    build = (lambda s: fe.build_fcos(s, pretrained=False)) if kind == "fcos" else \
        (lambda s: re_.build_detector(s, pretrained=False))
    settings = fe.settings if kind == "fcos" else re_.settings
    scaling = lambda det: det.backbone.backbone.input_normalization  # noqa: E731
    assert scaling(build(settings("cpu"))) == "lite"
    assert scaling(build(settings("gpu"))) == "imagenet"
    older = {k: v for k, v in settings("cpu").items() if k != "input_normalization"}
    assert scaling(build(older)) == "imagenet"
    with pytest.raises(ValueError, match="input_normalization"):
        build({**settings("cpu"), "input_normalization": "tf"})


def test_cached_features_carry_no_autograd_graph():
    """Features are extracted under no_grad, even from an extractor whose parameters train."""
    _, _, dataset = _tiny_data()
    class Extractor(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return {"c3": self.conv(x)}
    extractor = Extractor()
    assert all(p.requires_grad for p in extractor.parameters())
    cache = dt.cache_backbone_features(extractor, dataset, "cpu", batch_size=2)
    assert not cache["feats"]["c3"].requires_grad and cache["feats"]["c3"].grad_fn is None
