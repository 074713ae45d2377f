"""Tests of A4/captioning_experiments.py's plumbing (the numerics are tested in
test_rnn_lstm_captioning.py): the backbone / feature choice, the feature-cache key, the
seed-study records. No pretrained weights and no real data: RegNetX-400MF (torchvision,
weights downloaded online) is replaced by a stand-in with its c5 width, on tiny fake data.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import caption_decoding as cd
import captioning_experiments as ce
import rnn_lstm_captioning as rlc
from eecs598.backbones import build_backbone as real_build_backbone
from eecs598.data.text import build_vocab, encode_captions

REGNET = "regnet_x_400mf"


@pytest.fixture(autouse=True)
def _quick_single_thread(monkeypatch):
    """Quick-mode settings (tiny decoders, 2 epochs), one thread (a busy shared CPU)."""
    monkeypatch.setenv("EECS598_QUICK", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeRegNet(nn.Module):
    """Stand-in for eecs598.backbones' RegNetX-400MF taps: the same channel counts (c5: 400),
    stride 32, no weights to download."""

    out_channels = {"c3": 64, "c4": 160, "c5": 400}

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 400, kernel_size=1)

    def forward(self, x):
        return {"c5": self.proj(F.avg_pool2d(x, 32))}


@pytest.fixture
def calls(monkeypatch):
    """rlc.build_backbone without downloads: RegNet -> FakeRegNet (with the real function's
    refusal of with_head for it), EfficientNet-Lite0 with random weights. Records each call."""
    seen = []

    def fake(name="efficientnet_lite0", pretrained=True, with_head=False, input_normalization=None):
        seen.append((name, with_head))
        if name == REGNET:
            if with_head:
                raise ValueError(f"with_head is only available for efficientnet_lite0, not {name!r}")
            return FakeRegNet()
        return real_build_backbone(name, pretrained=False, with_head=with_head, input_normalization=input_normalization)

    monkeypatch.setattr(rlc, "build_backbone", fake)
    return seen


def fake_data(num_train=16, num_test=4, size=64, caps_per_image=2, seed=0):
    """A caption_dataset-shaped dict of random images and captions over a tiny vocabulary."""
    g = torch.Generator().manual_seed(seed)
    words = ["a", "dog", "cat", "runs", "sits", "on", "grass", "the", "red", "ball"]
    vocab = build_vocab([words, words])
    data = {"vocab": vocab, "source": "fake"}
    for split, n in (("train", num_train), ("test", num_test)):
        refs = [[[words[int(j)] for j in torch.randint(len(words), (4,), generator=g)]
                 for _ in range(caps_per_image)] for _ in range(n)]
        data[f"{split}_images"] = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        data[f"{split}_references"] = refs
        data[f"{split}_captions"] = encode_captions([c for r in refs for c in r], vocab["token_to_idx"], 18)
        data[f"{split}_image_idxs"] = torch.arange(n).repeat_interleave(caps_per_image)
        data[f"{split}_names"] = [f"{split}{i:03d}.jpg" for i in range(n)]
    return data


# ---------------------------------------------------------------------------------------------
# The backbone and its feature map, threaded through every entry point
# ---------------------------------------------------------------------------------------------
def test_each_backbone_gets_a_feature_it_supports():
    assert ce.feature_for("efficientnet_lite0") == "head" and ce.feature_for(REGNET) == "c5"
    for cell_type in ce.CELL_TYPES:
        assert ce.settings(cell_type)["feature"] == "head"
        s = ce.settings(cell_type, REGNET)
        assert s["feature"] == "c5" and s["backbone"] == REGNET
    with pytest.raises(ValueError, match="unknown backbone"):
        ce.feature_for("resnet50")


def test_regnet_features_model_and_runs_without_weights(calls):
    data = fake_data()
    feats = ce.extract_features(data, backbone=REGNET)
    assert calls == [(REGNET, False)]  # c5: no EfficientNet-only head requested
    assert feats["train"].shape == (16, 400, 2, 2) and feats["test_flip"].shape == (4, 400, 2, 2)
    model = ce.make_model(data["vocab"], "attn", ce.settings("attn", REGNET))
    assert model.image_encoder.backbone_name == REGNET and model.image_encoder.out_channels == 400
    assert model.feature_proj.in_channels == 400 and model.feature_norm.num_features == 400
    over = ce.overfit_small(data, feats, "rnn", num=4, backbone=REGNET)
    assert len(over["loss_history"]) > 0
    res = ce.headline_run(data, feats, "lstm", backbone=REGNET)
    assert res["settings"]["feature"] == "c5" and res["model"].feature_proj.in_features == 400
    assert {name for name, _ in calls} == {REGNET}


def test_seed_study_threads_the_backbone(calls, monkeypatch):
    monkeypatch.setattr(ce, "load_data", lambda: fake_data())
    out = ce.seed_study(("rnn",), (1,), backbone=REGNET)
    assert set(out) == {"rnn"} and set(out["rnn"]) == {1}
    assert {"bleu4", "beam_bleu4", "val_model_bleu4", "best_epoch"} <= set(out["rnn"][1])
    assert {name for name, _ in calls} == {REGNET}


def test_features_of_another_backbone_are_refused_clearly(calls):
    data = fake_data()
    feats = ce.extract_features(data, backbone=REGNET)
    with pytest.raises(ValueError, match="400 channels.*expects 1280"):
        ce.headline_run(data, feats, "rnn")  # the default backbone's decoder wants 1280 head channels


@pytest.mark.parametrize("error", [OSError("<urlopen error [Errno -3] Temporary failure in name resolution>"),
                                   RuntimeError("backbone 'regnet_x_400mf' needs torchvision")])
def test_missing_regnet_weights_error_says_what_to_do(monkeypatch, error):
    def unavailable(*args, **kwargs):
        raise error

    monkeypatch.setattr(rlc, "build_backbone", unavailable)
    for build in (lambda: ce.build_encoder(REGNET),
                  lambda: ce.make_model(fake_data(2, 1)["vocab"], "rnn", ce.settings("rnn", REGNET))):
        try:
            build()
        except NotImplementedError:  # the student copy: an unwritten stub comes first
            raise
        except RuntimeError as err:
            msg = str(err)
        else:
            pytest.fail("no error")
        assert REGNET in msg and "torchvision" in msg and "hub/checkpoints" in msg
        assert "efficientnet_lite0" in msg and str(error) in msg


def test_unwritten_stub_is_not_reported_as_missing_weights(monkeypatch):
    """NotImplementedError is a RuntimeError: a student's stub must reach them as it is, not
    wrapped in the advice about weights."""
    def stub(*args, **kwargs):
        raise NotImplementedError("Implement WordEmbedding.__init__")

    monkeypatch.setattr(rlc, "build_backbone", stub)
    with pytest.raises(NotImplementedError, match="^Implement WordEmbedding.__init__$"):
        ce.build_encoder()
    # make_model may meet another stub first in a student's copy (CaptioningRNN.__init__): any
    # stub's message, never the weights advice.
    with pytest.raises(NotImplementedError) as info:
        ce.make_model(fake_data(2, 1)["vocab"], "rnn", ce.settings("rnn"))
    assert "torchvision" not in str(info.value) and "hub/checkpoints" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# The feature cache is keyed by the split
# ---------------------------------------------------------------------------------------------
def _resplit(data, num_test):
    """The same images and captions with another held-out count (names only: what the key sees)."""
    names = data["test_names"] + data["train_names"]
    return dict(data, test_names=names[:num_test], train_names=names[num_test:])


def test_feature_cache_key_names_the_split():
    data = fake_data()
    key = ce.feature_cache_key(data, "flickr8k-1k", "efficientnet_lite0")
    assert key.startswith("flickr8k-1k_efficientnet_lite0_64px_head_features_heldout4-")
    assert key == ce.feature_cache_key(fake_data(), "flickr8k-1k", "efficientnet_lite0")  # deterministic
    keys = {key, ce.feature_cache_key(_resplit(data, 5), "flickr8k-1k"),
            ce.feature_cache_key(dict(data, train_names=data["train_names"][::-1]), "flickr8k-1k"),
            ce.feature_cache_key(data, "flickr8k-1k", REGNET)}
    assert len(keys) == 4
    assert ce.feature_cache_key(data, "flickr8k-1k", REGNET).startswith(f"flickr8k-1k_{REGNET}_64px_c5_features_")
    # photos shrunk before the resize are other features: another key (none without shrinking)
    shrunk = ce.feature_cache_key(dict(data, shrink="max200q75"), "flickr8k-1k", "efficientnet_lite0")
    assert shrunk.startswith("flickr8k-1k_efficientnet_lite0_64px_max200q75_head_features_heldout4-")
    assert ce.feature_cache_key(dict(data, shrink=None), "flickr8k-1k", "efficientnet_lite0") == key


def test_full_mode_feature_cache_differs_per_split(calls, monkeypatch, tmp_path):
    """extract_features (full mode) stores the tensors of two splits under two names."""
    monkeypatch.delenv("EECS598_QUICK")
    monkeypatch.setattr(ce.eecs598.data, "caption_folder", lambda name: [(tmp_path / "Images" / "a.jpg", [])])
    used = []

    def fake_cache(key, build, *sources):
        used.append((key, sources))
        return build()

    monkeypatch.setattr(ce, "cached_tensors", fake_cache)
    data = fake_data()
    ce.extract_features(data, backbone=REGNET)
    ce.extract_features(_resplit(data, 5), backbone=REGNET)
    assert used[0][1] == (tmp_path / "captions.txt", tmp_path / "Images" / "a.jpg")
    assert used[0][0] != used[1][0] and all("_heldout" in key for key, _ in used)


# ---------------------------------------------------------------------------------------------
# Seed-study records (the captioning_bleu4_seed_mean_<cell> rows of results.json)
# ---------------------------------------------------------------------------------------------
SEED_KEYS = {"bleu4", "bleu1", "beam_bleu4", "val_model_bleu4", "best_epoch", "teacher_best_epoch",
             "repeated_bigram_captions", "seconds", "threads"}
DETAIL_KEYS = {"seeds", "means", "sd_bleu4", "protocol", "how", "decoding", "shrink"}


def _study_entry(bleu4, beam, val, epoch, seconds):
    return {"bleu4": bleu4, "bleu1": 0.5, "beam_bleu4": beam, "val_model_bleu4": val, "best_epoch": epoch,
            "teacher_best_epoch": epoch + 1, "repeated_bigram_captions": 3, "seconds": seconds, "threads": 1}


def _headline_rows(source, backbone="efficientnet_lite0", feature="head"):
    """What `run` records for the rnn (the rows seed_records reads for seed 0)."""
    from eecs598.results import make_record
    details = {"backbone": f"{backbone} (ImageNet, frozen; {feature} features (1280, 7, 7))", "feature": feature,
               "val_model_heldout_bleu": {"bleu1": 0.51, "bleu4": 0.1354}, "best_epoch": 10,
               "repeated_bigram_captions": 6, "threads": 2}
    return [make_record("A4", "captioning_bleu4_rnn", 0.12, "BLEU", source, "cpu", 118.8, 0.134, details),
            make_record("A4", "captioning_bleu1_rnn", 0.55, "BLEU", source, "cpu", 118.8, 0.52, details),
            make_record("A4", "captioning_bleu4_beam3_rnn", 0.146, "BLEU", source, "cpu", 5.0, None, {})]


def test_seed_records_mean_sd_and_layout():
    import statistics

    study = {"rnn": {1: _study_entry(0.11, 0.12, 0.111, 10, 182.0), 2: _study_entry(0.13, 0.14, 0.122, 9, 208.0)},
             "lstm": {1: _study_entry(0.113, 0.143, 0.107, 13, 500.0)}}
    records = ce.seed_records(study, "fake data", "cpu", 900, _headline_rows("fake data"))
    by_metric = {r["metric"]: r for r in records}
    assert set(by_metric) == {"captioning_bleu4_seed_mean_rnn", "captioning_bleu4_seed_mean_lstm"}
    rnn = by_metric["captioning_bleu4_seed_mean_rnn"]
    assert rnn["assignment"] == "A4" and rnn["unit"] == "BLEU" and rnn["reference"] == 0.134
    assert rnn["data"] == "fake data" and rnn["mode"] == "quick"
    d = rnn["details"]
    assert set(d) == DETAIL_KEYS and list(d["seeds"]) == ["0", "1", "2"]
    assert rnn["value"] == pytest.approx(statistics.mean([0.12, 0.11, 0.13]), abs=1e-15)
    assert d["sd_bleu4"] == pytest.approx(statistics.stdev([0.12, 0.11, 0.13]), abs=1e-15)
    assert rnn["seconds"] == pytest.approx(118.8 + 182.0 + 208.0, abs=1e-3)
    assert d["means"] == {"bleu4": round(statistics.mean([0.12, 0.11, 0.13]), 4),
                          "beam_bleu4": round(statistics.mean([0.146, 0.12, 0.14]), 4),
                          "val_model_bleu4": round(statistics.mean([0.1354, 0.111, 0.122]), 4)}
    assert set(d["seeds"]["1"]) == SEED_KEYS and set(d["seeds"]["0"]) == SEED_KEYS | {"note"}
    assert d["seeds"]["0"]["bleu4"] == 0.12 and d["seeds"]["0"]["best_epoch"] == 10
    assert "captioning_bleu4_rnn" in d["seeds"]["0"]["note"] and "seed 0 is the headline run" in d["how"]
    assert d["decoding"] == "greedy (beam_bleu4: beam 3)" and "900 training images" in d["protocol"]
    assert "distillation" in d["protocol"]  # the rnn's recipe distills
    lstm = by_metric["captioning_bleu4_seed_mean_lstm"]  # no lstm headline rows: its seeds only
    assert list(lstm["details"]["seeds"]) == ["1"] and lstm["details"]["sd_bleu4"] is None
    assert lstm["value"] == 0.113
    assert d["shrink"] is None
    (shrunk,) = ce.seed_records({"lstm": study["lstm"]}, "fake data", "cpu", 900, shrink="max200q75")
    assert shrunk["details"]["shrink"] == "max200q75"


def test_seed_records_ignore_headline_rows_of_another_copy_or_backbone():
    study = {"rnn": {1: _study_entry(0.11, 0.12, 0.111, 10, 1.0), 2: _study_entry(0.13, 0.14, 0.122, 9, 1.0)}}
    for rows in (_headline_rows("another copy"), _headline_rows("fake data", REGNET, "c5")):
        (rec,) = ce.seed_records(study, "fake data", "cpu", 900, rows)
        assert list(rec["details"]["seeds"]) == ["1", "2"] and rec["value"] == pytest.approx(0.12)


def test_seed_study_writes_its_records(calls, monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(ce, "load_data", lambda: fake_data())
    out = ce.seed_study(("rnn",), (1, 2), backbone=REGNET, results_dir=tmp_path)
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["metric"] == "captioning_bleu4_seed_mean_rnn" and row["mode"] == "quick"
    assert row["value"] == pytest.approx((out["rnn"][1]["bleu4"] + out["rnn"][2]["bleu4"]) / 2)
    assert set(row["details"]) == DETAIL_KEYS and set(row["details"]["seeds"]["2"]) == SEED_KEYS
    assert "captioning_bleu4_seed_mean_rnn" in (tmp_path / "RESULTS.md").read_text()


# ---------------------------------------------------------------------------------------------
# Splits of the training images and cross-validation
# ---------------------------------------------------------------------------------------------
def _fake_features(data, channels=400, seed=0, num_crops=1):
    g = torch.Generator().manual_seed(seed)
    feats = {k: torch.randn(len(data[f"{k.split('_')[0]}_names"]), channels, 1, 1, generator=g)
             for k in ("train", "train_flip", "test", "test_flip")}
    feats["train_crops"] = torch.randn(num_crops, len(data["train_names"]), channels, 1, 1, generator=g)
    return feats


@pytest.mark.parametrize("start, stop", [(0, 4), (6, 10), (12, 16)])
def test_split_images_keeps_each_caption_with_its_own_image(start, stop):
    """Wherever the validation block lies, every caption keeps the features of its own image (plain
    and mirrored) on both sides of the split, no image is on both sides, and the last block is the
    headline's split_validation."""
    data = fake_data(num_train=16)
    feats = _fake_features(data)
    train, val = ce.split_images(data, feats, start, stop)
    owner = data["train_image_idxs"]
    is_val = (owner >= start) & (owner < stop)
    assert torch.equal(train["captions"], data["train_captions"][~is_val])
    assert torch.equal(val["captions"], data["train_captions"][is_val])
    for side, images in ((train, owner[~is_val]), (val, owner[is_val])):
        assert torch.equal(side["feats"][side["image_idxs"]], feats["train"][images])
        assert torch.equal(side["feats_flip"][side["image_idxs"]], feats["train_flip"][images])
    assert torch.equal(train["crops"][:, train["image_idxs"]], feats["train_crops"][:, owner[~is_val]])
    assert len(train["feats"]) + len(val["feats"]) == 16 and val["references"] == data["train_references"][start:stop]
    if stop == 16:
        old_train, old_val = ce.split_validation(data, feats, 16 - start)
        assert all(torch.equal(old_train[k], train[k]) for k in train)
    with pytest.raises(ValueError):
        ce.split_images(data, feats, 10, 17)


def test_cross_validate_gives_every_training_image_one_out_of_fold_caption(calls):
    """Each fold's captions are its own model's (greedy, flip-averaged, beam 3) of the fold's images;
    the pool covers every training image once and scores as corpus BLEU of the pool; a fold model
    differs from the others (it trained on other images)."""
    data = fake_data(num_train=12)
    feats = _fake_features(data)
    s = ce.settings("rnn", backbone=REGNET)
    out = ce.cross_validate(data, feats, "rnn", num_folds=3, s=s)
    itw = data["vocab"]["idx_to_token"]
    assert [f["images"] for f in out["folds"]] == [[0, 4], [4, 8], [8, 12]]
    for f, model in zip(out["folds"], out["models"]):
        a, b = f["images"]
        greedy = cd.greedy_captions(model, feats["train"][a:b], itw, s["max_length"])[0]
        assert out["hypotheses"]["greedy"][a:b] == greedy
        flip = cd.ensemble_greedy([model, model], [feats["train"][a:b], feats["train_flip"][a:b]], s["max_length"])
        assert out["hypotheses"]["flip_average"][a:b] == [c.split() for c in rlc.decode_captions(flip, itw)]
    for name in ce.CV_DECODERS:
        assert len(out["hypotheses"][name]) == 12 and None not in out["hypotheses"][name]
        assert out["scores"][name] == ce.bleu_scores(data["train_references"], out["hypotheses"][name])
    w0, w1 = (dict(m.named_parameters())["output.weight"] for m in out["models"][:2])
    assert not torch.equal(w0, w1)


# ---------------------------------------------------------------------------------------------
# Crop augmentation
# ---------------------------------------------------------------------------------------------
def test_random_resized_crop_is_a_resized_window_of_the_image():
    """Each crop equals some window of the requested area and aspect, resized back (bilinear,
    antialiased) and possibly mirrored; over many draws both orientations and several positions
    occur; the whole-image scale gives the image or its mirror."""
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=g)
    found = set()
    for _ in range(20):
        crop = ce.random_resized_crop(image, g, scale=(0.25, 0.25), ratio=(1.0, 1.0))
        assert crop.shape == image.shape and crop.dtype == torch.uint8
        matches = []
        for y in range(7):
            for x in range(7):
                window = F.interpolate(image[None, :, y:y + 6, x:x + 6].float(), size=(12, 12), mode="bilinear",
                                       antialias=True, align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
                matches += [(y, x, m) for m, w in ((False, window), (True, window.flip(-1))) if torch.equal(crop, w)]
        assert len(matches) == 1
        found.add(matches[0])
    assert {m for _, _, m in found} == {False, True} and len({(y, x) for y, x, _ in found}) > 5
    whole = ce.random_resized_crop(image, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(whole, image) or torch.equal(whole, image.flip(-1))


class _MeanColour(nn.Module):
    """A deterministic stand-in encoder: each image's mean colour, (N, 3, 1, 1)."""

    def forward(self, images):
        return images.float().mean(dim=(2, 3), keepdim=True)


def test_extract_features_adds_crop_views_of_the_training_images(monkeypatch):
    """num_crops views of every training image, each the encoder's features of that image's crop
    (replayed with the generator seed CROP_SEED, view by view), in the image order; the encoder is
    built once; no crops for num_crops=0."""
    builds = []
    monkeypatch.setattr(ce, "build_encoder", lambda *a, **k: builds.append(a) or _MeanColour())
    data = fake_data(num_train=6, num_test=2, size=32)
    feats = ce.extract_features(data, num_crops=2)
    assert len(builds) == 1 and feats["train_crops"].shape == (2, 6, 3, 1, 1)
    g = torch.Generator().manual_seed(ce.CROP_SEED)
    for view in range(2):
        crops = torch.stack([ce.random_resized_crop(im, g) for im in data["train_images"]])
        assert torch.equal(feats["train_crops"][view], _MeanColour()(crops))
    assert not torch.allclose(feats["train_crops"][0], feats["train"])
    assert torch.equal(feats["train"], _MeanColour()(data["train_images"]))
    assert "train_crops" not in ce.extract_features(data, num_crops=0)


class _RecordingDecoder(nn.Module):
    """Stands in for a CaptioningRNN in train_on_features: records which features each caption got."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward_features(self, features, captions, feature_idx=None):
        self.seen.append((features[feature_idx].flatten(1)[:, 0].clone(), captions[:, 1].clone()))
        return (self.w ** 2).sum() + 1.0


def test_train_on_features_draws_every_view_of_the_captions_own_image():
    """With crops, each caption is trained on a view (plain, mirrored or one of the crops) of its own
    image; over the epochs every view occurs; without crops only plain and mirrored ones do."""
    n_img, caps = 5, 4
    image_idxs = torch.arange(n_img).repeat_interleave(caps)
    captions = torch.stack([torch.tensor([1, int(i), 0]) for i in image_idxs])  # word 1 = the image index
    value = lambda view, img: 100.0 * view + img  # noqa: E731
    full = lambda view: torch.tensor([value(view, i) for i in range(n_img)]).view(n_img, 1, 1, 1)  # noqa: E731
    crops = torch.stack([full(2), full(3), full(4)])
    for with_crops, views in ((True, {0, 1, 2, 3, 4}), (False, {0, 1})):
        model = _RecordingDecoder()
        ce.train_on_features(model, full(0), full(1), captions, image_idxs, num_epochs=6, batch_size=7,
                             learning_rate=0.1, crops=crops if with_crops else None)
        got = torch.cat([f for f, _ in model.seen]).long()
        image = torch.cat([c for _, c in model.seen])
        assert torch.equal(got % 100, image)
        assert set((got // 100).tolist()) == views
    with pytest.raises(ValueError, match="flip"):
        ce.train_on_features(_RecordingDecoder(), full(0), full(1), captions, image_idxs, 1, 7, 0.1, flip=False,
                             crops=crops)


def test_settings_crop_views_must_exist_in_the_features(calls):
    """fit_split trains on the settings' number of crop views (none by default) and refuses more
    than the features hold, saying how to extract them."""
    data = fake_data(num_train=8)
    feats = _fake_features(data, num_crops=1)
    train, _ = ce.split_images(data, feats, 0, 2)
    assert ce.crop_split_views(train, 0) is None and ce.crop_split_views(train, 1).shape[0] == 1
    s = {**ce.settings("rnn", backbone=REGNET), "crop_views": 0}
    hist = ce.fit_split(ce.make_model(data["vocab"], "rnn", s, feats=feats), train, {**s, "crop_views": 1})
    assert len(hist["epoch_losses"]) == s["max_epochs"]
    with pytest.raises(ValueError, match="num_crops=2"):
        ce.fit_split(ce.make_model(data["vocab"], "rnn", s, feats=feats), train, {**s, "crop_views": 2})


def test_only_the_rnn_trains_on_crops_and_the_default_features_hold_them():
    assert [ce.settings(c)["crop_views"] for c in ce.CELL_TYPES] == [1, 0, 0]  # quick mode
    assert ce.crop_views() == 1


def test_every_recipe_distills():
    assert [ce.settings(c)["distill"] for c in ce.CELL_TYPES] == [1, 1, 1]


# ---------------------------------------------------------------------------------------------
# Sequence-level distillation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell_type", ce.CELL_TYPES)
@pytest.mark.parametrize("max_length", [16, 2])
def test_teacher_captions_are_the_beam_captions_laid_out_like_the_data(calls, max_length, cell_type):
    """<START>, the beam search's words (never <NULL> or <START>, which this untrained model would
    write otherwise), one <END> (added where the beam ran to max_length), then <NULL>s; decoded, the
    same words as the beam search."""
    data = fake_data(num_train=6)
    feats = _fake_features(data)
    model = ce.make_model(data["vocab"], cell_type, ce.settings(cell_type, REGNET), feats=feats).eval()
    out = ce.teacher_captions(model, feats["train"], max_length, batch_size=4)  # two batches
    beam = cd.beam_search(model, feats["train"], ce.BEAM_SIZE, max_length, banned=(model._null, model._start))
    itw = data["vocab"]["idx_to_token"]
    assert out.shape == data["train_captions"][:6].shape and (out[:, 0] == model._start).all()
    assert rlc.decode_captions(out[:, 1:], itw) == rlc.decode_captions(beam, itw)
    assert ((out == model._end).sum(dim=1) == 1).all()
    end = (out == model._end).long().argmax(dim=1)
    after = torch.arange(out.shape[1])[None] > end[:, None]
    assert (out[after] == model._null).all() and not (out[~after][:, None] == model._null).any()
    with pytest.raises(ValueError, match="do not fit"):
        ce.teacher_captions(model, feats["train"], 17)


def test_distill_split_adds_copies_of_the_teachers_caption_to_each_image(calls):
    data = fake_data(num_train=8)
    feats = _fake_features(data)
    train, _ = ce.split_images(data, feats, 0, 2)
    teacher = ce.make_model(data["vocab"], "rnn", ce.settings("rnn", REGNET), feats=feats)
    out = ce.distill_split(teacher, train, 2, 16)
    extra = ce.teacher_captions(teacher, train["feats"], 16)
    assert torch.equal(out["captions"], torch.cat([train["captions"], extra, extra]))
    assert torch.equal(out["image_idxs"], torch.cat([train["image_idxs"], torch.arange(6), torch.arange(6)]))
    assert all(out[k] is train[k] for k in ("feats", "feats_flip", "crops"))


def test_fit_recipe_distills_and_the_refit_stops_each_model_at_its_epoch(calls):
    """distill=0 is fit_fresh; distill=1 trains a teacher, then a student on 12 human + 6 teacher
    captions (batch 4: 5 steps an epoch, against 3), both selected on the validation slice; the
    refit stops each at its selected epoch."""
    data = fake_data(num_train=8)
    feats = _fake_features(data, num_crops=1)
    train, val = ce.split_images(data, feats, 6, 8)
    s = {**ce.settings("rnn", REGNET), "batch_size": 4, "max_epochs": 3, "distill": 0}
    plain, plain_hist = ce.fit_recipe(data, feats, "rnn", s, train, val)
    again, _ = ce.fit_fresh(data, feats, "rnn", s, train, val)
    assert "teacher" not in plain_hist and ce.selected_epochs(plain_hist) == plain_hist["best_epoch"]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), again.state_dict().values()))
    assert len(plain_hist["loss_history"]) == 3 * 3
    s = {**s, "distill": 1}
    student, hist = ce.fit_recipe(data, feats, "rnn", s, train, val)
    assert len(hist["loss_history"]) == 3 * 5 and len(hist["teacher"]["loss_history"]) == 3 * 3
    assert hist["teacher"]["val_loss_history"] == plain_hist["val_loss_history"]  # the teacher: the plain recipe
    teacher_epoch, student_epoch = ce.selected_epochs(hist)
    assert (teacher_epoch, student_epoch) == (hist["teacher"]["best_epoch"], hist["best_epoch"])
    assert hist["seconds"] >= hist["student_seconds"] + hist["teacher"]["seconds"]
    _, refit = ce.fit_recipe(data, feats, "rnn", s, train, epochs=(2, 1))
    assert len(refit["teacher"]["epoch_losses"]) == 2 and len(refit["epoch_losses"]) == 1
    assert refit["teacher"]["best_epoch"] is None  # no validation: nothing selected, nothing restored


def test_headline_run_reuses_a_validation_run_trained_already(calls, monkeypatch):
    """val_run = step 1 trained elsewhere (the same computation): the same held-out captions and
    refit model as training it here, and only the refit's teacher and student train."""
    data = fake_data(num_train=12)
    feats = _fake_features(data, num_crops=1)
    s = {**ce.settings("rnn", REGNET), "batch_size": 8, "max_epochs": 2, "num_val": 4}
    assert s["distill"] and s["refit"]
    fresh = ce.headline_run(data, feats, "rnn", s=s, backbone=REGNET)
    train, val = ce.split_validation(data, feats, s["num_val"])
    val_run = ce.fit_recipe(data, feats, "rnn", s, train, val)
    trained = []
    fit_fresh = ce.fit_fresh
    monkeypatch.setattr(ce, "fit_fresh", lambda *a, **k: trained.append(a[4]) or fit_fresh(*a, **k))
    reused = ce.headline_run(data, feats, "rnn", s=s, backbone=REGNET, val_run=val_run)
    assert len(trained) == 2 and all(len(split["feats"]) == 12 for split in trained)  # the refit only
    assert reused["hypotheses"] == fresh["hypotheses"] and reused["scores"] == fresh["scores"]
    assert reused["val_history"] is val_run[1] and reused["val_model_scores"] == fresh["val_model_scores"]
    assert all(torch.equal(a, b) for a, b in zip(reused["model"].state_dict().values(),
                                                 fresh["model"].state_dict().values()))


def test_cross_validations_last_fold_is_the_headline_validation_run(calls):
    """validation_run(cross_validate(...)) trains nothing more and gives headline_run the same
    refit and held-out captions as training step 1 there; folds that are not the validation
    slice are refused."""
    data = fake_data(num_train=12)
    feats = _fake_features(data, num_crops=1)
    s = {**ce.settings("rnn", REGNET), "batch_size": 8, "max_epochs": 2, "num_val": 4}
    cv = ce.cross_validate(data, feats, "rnn", num_folds=3, s=s)
    assert len(cv["histories"]) == 3 and all("teacher" in h for h in cv["histories"])
    fresh = ce.headline_run(data, feats, "rnn", s=s, backbone=REGNET)
    reused = ce.headline_run(data, feats, "rnn", s=s, backbone=REGNET, val_run=ce.validation_run(cv, s["num_val"]))
    assert reused["val_history"]["val_loss_history"] == fresh["val_history"]["val_loss_history"]
    assert reused["hypotheses"] == fresh["hypotheses"] and reused["val_model_scores"] == fresh["val_model_scores"]
    with pytest.raises(ValueError, match="num_folds = 12 / 6"):
        ce.validation_run(cv, 6)


# ---------------------------------------------------------------------------------------------
# The course's loss checks and the loss floor of captions that share an image
# ---------------------------------------------------------------------------------------------
def test_first_captions_picks_each_images_first_caption():
    data = fake_data(num_train=5)
    data["train_image_idxs"] = torch.tensor([3, 1, 1, 0, 4, 2, 3, 0, 2, 4])  # shuffled: first rows 3, 1, 5, 0, 4
    assert ce.first_captions(data).tolist() == [3, 1, 5, 0, 4]
    assert ce.first_captions(data, num=2).tolist() == [3, 1]


def test_caption_loss_floor_is_the_entropy_of_each_images_captions():
    a, b, c, d, e = ([k] * 3 for k in range(5))
    captions = torch.tensor([a, b, c, d, e, a, a, b, c])
    image_idxs = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2])  # image 0: 5 distinct; image 1: a, a, b; image 2: c
    by_hand = (5 * math.log(5) - 2 * math.log(2 / 3) - math.log(1 / 3) + 0) / 9
    assert ce.caption_loss_floor(captions, image_idxs) == pytest.approx(by_hand, rel=1e-12)
    assert ce.caption_loss_floor(captions[:5], image_idxs[:5]) == pytest.approx(math.log(5), rel=1e-12)
    assert ce.caption_loss_floor(captions[[0, 8]], torch.tensor([0, 1])) == 0.0


def test_no_decoder_gets_below_the_loss_floor(calls):
    """Gibbs' inequality on a trained decoder: two random captions per image, so the floor is log 2;
    a decoder that memorizes them comes close to it (0.696 here) but never below."""
    data = fake_data(num_train=6)
    feats = _fake_features(data)
    floor = ce.caption_loss_floor(data["train_captions"], data["train_image_idxs"])
    assert floor == pytest.approx(math.log(2))
    s = {**ce.settings("lstm", backbone=REGNET), "dropout": 0.0, "word_dropout": 0.0}
    model = ce.make_model(data["vocab"], "lstm", s, feats=feats)
    ce.train_on_features(model, feats["train"], feats["train"], data["train_captions"], data["train_image_idxs"],
                         60, 12, 1e-2, flip=False)
    loss = ce.mean_loss(model, feats["train"], data["train_captions"], data["train_image_idxs"])
    assert floor < loss < floor + 0.2, f"memorized loss {loss:.3f} vs floor {floor:.3f}"


@pytest.mark.parametrize("cell_type", ce.CELL_TYPES)
def test_course_checks_train_on_one_caption_per_image_without_regularization(calls, monkeypatch, cell_type):
    data = fake_data(num_train=6)
    feats = _fake_features(data)
    seen = {}

    def spy(model, feats_, feats_flip, captions, image_idxs, num_epochs, batch_size, learning_rate, **kw):
        seen.update(captions=captions, image_idxs=image_idxs, batch_size=batch_size, lr=learning_rate, **kw,
                    dropout=model.drop.p, word_dropout=model.word_dropout, penalty=model.attention_penalty)
        return real(model, feats_, feats_flip, captions, image_idxs, num_epochs, batch_size, learning_rate, **kw)

    real = ce.train_on_features
    monkeypatch.setattr(ce, "train_on_features", spy)
    out = ce.course_loss_check(data, feats, cell_type, backbone=REGNET)
    assert seen["image_idxs"].tolist() == list(range(6)) and out["num_captions"] == 6
    assert torch.equal(seen["captions"], data["train_captions"][::2])  # 2 captions per image: the first of each
    assert (seen["batch_size"], seen["lr"], seen["flip"]) == (256, 1e-3, False)
    assert seen["dropout"] == seen["word_dropout"] == seen["penalty"] == 0
    assert out["final_loss"] == out["loss_history"][-1] and out["eval_loss"] > 0
    over = ce.overfit_small(data, feats, cell_type, num=4, backbone=REGNET)
    assert over["num_captions"] == 4 and seen["batch_size"] == 32
    assert seen["lr"] == (1e-2 if cell_type == "lstm" else 1e-3)


@pytest.mark.parametrize("loss_checks", [True, False])
def test_run_writes_the_loss_check_rows_only_when_asked(calls, monkeypatch, loss_checks):
    """run(loss_checks=False) (a rerun of the headline rows) leaves out the course's loss checks and
    keeps the rest; every row says how many threads it ran on."""
    monkeypatch.setattr(ce, "load_data", lambda: fake_data())
    monkeypatch.setattr(ce, "source_size_probe", lambda data, feats: None)  # reads the real photos
    rows = ce.run(cell_types=("rnn",), backbone=REGNET, verbose=False, loss_checks=loss_checks)
    metrics = {r["metric"] for r in rows}
    checks = {"captioning_overfit_loss_rnn", "captioning_course_loss_rnn"}
    assert (checks <= metrics) == loss_checks and bool(checks & metrics) == loss_checks
    assert {"captioning_train_loss_floor", "captioning_bleu4_rnn", "captioning_bleu4_consensus_baseline"} <= metrics
    assert all(r["details"]["threads"] == torch.get_num_threads() == 1 for r in rows)


def test_linear_probe_reads_a_linear_signal_and_not_noise():
    """Labels that a direction of the features encodes: accuracy ~1; labels independent of the
    features: about chance (here 0.7), not above it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 20, generator=g)
    signal = x[:, 3] + 0.5 * x[:, 7] > 0.3
    assert ce.linear_probe_accuracy(x, signal) > 0.9  # (the L2 penalty blurs the boundary a little)
    noise = torch.rand(300, generator=g) < 0.3
    chance = max(noise.double().mean().item(), 1 - noise.double().mean().item())
    assert ce.linear_probe_accuracy(x, noise) < chance + 0.05


# ---------------------------------------------------------------------------------------------
# Epoch selection and the image-dependence check
# ---------------------------------------------------------------------------------------------
def _train_with_scripted_validation(monkeypatch, losses, bleus, num_epochs, **kwargs):
    """train_on_features on a tiny fake set whose validation loss and BLEU-4 follow the scripts;
    returns (model, history, the state_dict at each validation)."""
    data = fake_data(num_train=6)
    feats = _fake_features(data)
    model = ce.make_model(data["vocab"], "rnn", ce.settings("rnn", backbone=REGNET), feats=feats)
    losses, bleus, states = iter(losses), iter(bleus), []

    def fake_mean_loss(m, *args, **kw):
        states.append({k: v.detach().clone() for k, v in m.state_dict().items()})
        return next(losses)

    def fake_bleu(*args, **kw):
        b = next(bleus)
        return {"bleu4": b, "bleu1": b}, None, None
    monkeypatch.setattr(ce, "mean_loss", fake_mean_loss)
    monkeypatch.setattr(ce, "evaluate_bleu", fake_bleu)
    train, val = ce.split_images(data, feats, 4, 6)
    hist = ce.train_on_features(model, train["feats"], train["feats_flip"], train["captions"], train["image_idxs"],
                                num_epochs=num_epochs, batch_size=4, learning_rate=1e-2, val=val, **kwargs)
    return model, hist, states


@pytest.mark.parametrize("select", ["loss", "bleu4"])
def test_train_on_features_restores_the_parameters_of_the_best_epoch(calls, monkeypatch, select):
    """Validation losses 3, 1, 2 (select="loss") or BLEU-4 0.1, 0.3, 0.2 (select="bleu4") over 3
    epochs: best_epoch is 2 and the model ends with exactly the parameters it had after epoch 2."""
    model, hist, states = _train_with_scripted_validation(monkeypatch, [3.0, 1.0, 2.0], [0.1, 0.3, 0.2], 3,
                                                          select=select)
    assert hist["best_epoch"] == 2 and hist["epochs"] == 3 and len(states) == 3
    final = model.state_dict()
    assert all(torch.equal(final[k], states[1][k]) for k in final)
    assert not all(torch.equal(states[2][k], states[1][k]) for k in final)  # epoch 3 moved the parameters


def test_train_on_features_stops_after_patience_epochs_without_improvement(calls, monkeypatch):
    """Losses 3, 1, 2, 2.5, 0.5 with patience 2: epochs 3 and 4 do not improve on epoch 2, so
    training stops after epoch 4 (the 0.5 of epoch 5 is never reached) with epoch 2's weights."""
    model, hist, states = _train_with_scripted_validation(monkeypatch, [3.0, 1.0, 2.0, 2.5, 0.5], [0.1] * 5, 5,
                                                          patience=2)
    assert hist["epochs"] == 4 and hist["best_epoch"] == 2 and len(states) == 4
    assert all(torch.equal(v, states[1][k]) for k, v in model.state_dict().items())


def test_image_dependence_scores_the_captions_with_shuffled_images(calls):
    """val_loss_shuffled_images is the mean teacher-forced loss of each caption given the features of
    image perm[i] (perm = randperm with the seeded generator), computed here with forward_features;
    it differs from the loss with the captions' own images."""
    data = fake_data(num_train=8)
    feats = _fake_features(data)
    model = ce.make_model(data["vocab"], "lstm", ce.settings("lstm", backbone=REGNET), feats=feats).eval()
    _, val = ce.split_images(data, feats, 2, 8)  # 6 validation images, 12 captions
    seed = 3
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
    assert not torch.equal(perm, torch.arange(6))
    out = ce.image_dependence(model, val, seed=seed)
    with torch.no_grad():
        own = model.forward_features(val["feats"][val["image_idxs"]], val["captions"]).item()
        shuffled = model.forward_features(val["feats"][perm][val["image_idxs"]], val["captions"]).item()
    assert out["val_loss"] == pytest.approx(own, rel=1e-5)
    assert out["val_loss_shuffled_images"] == pytest.approx(shuffled, rel=1e-5)
    assert abs(shuffled - own) > 1e-3


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_selected_epochs_order():
    """(teacher's, student's) best epochs (kills the swap)."""
    assert ce.selected_epochs({"best_epoch": 2, "teacher": {"best_epoch": 7}}) == (7, 2)


class _Cap(nn.Module):
    """Minimal stand-in for forward_features: loss = mean of params * features; records the features."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seen = []

    def forward_features(self, f, captions, feature_idx):
        self.seen.append(f[feature_idx].detach().clone())
        return (self.w * f[feature_idx].mean()) * 1e4  # a huge gradient


def test_train_on_features_flip_false_clips_and_is_seeded(monkeypatch):
    monkeypatch.setattr(ce, "decoder_parameters", lambda m: list(m.parameters()))
    feats, flip = torch.ones(4, 1, 1, 1), -torch.ones(4, 1, 1, 1)
    caps, idx = torch.zeros(8, 3, dtype=torch.long), torch.arange(8) % 4
    m = _Cap()
    ce.train_on_features(m, feats, flip, caps, idx, 1, 4, 1.0, flip=False)
    assert all((s > 0).all() for s in m.seen)  # kills dropping `if not flip: use_flip.zero_()`
    # clipped at norm 5, one AdamW step moves w by about lr=1 whatever the gradient; without
    # clipping the same: so check the clip through the gradient norm directly
    norms = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, c, *a, **k: norms.append(c) or real(p, c, *a, **k))
    ce.train_on_features(_Cap(), feats, flip, caps, idx, 1, 4, 1.0)
    assert norms and all(c == 5.0 for c in norms)  # kills the removed clip
    orders = []
    for seed in (0, 1):
        m = _Cap()
        ce.train_on_features(m, torch.arange(4.)[:, None, None, None] + 1, flip, caps, idx, 1, 8, 0.0, seed=seed)
        orders.append(torch.cat([s.flatten() for s in m.seen]))
    assert not torch.equal(orders[0], orders[1])  # kills manual_seed(0) for the batch generator


def test_teacher_captions_ban_null_and_start(monkeypatch):
    """The teacher's beam never writes <NULL> or <START> (kills banned=(null,))."""
    seen = {}

    def fake_beam(model, f, beam_size, max_length, banned):
        seen["banned"] = set(banned)
        return torch.full((len(f), max_length), 3, dtype=torch.long)

    monkeypatch.setattr(ce, "beam_search", fake_beam)
    m = nn.Linear(1, 1)
    m._null, m._start, m._end = 0, 1, 2
    out = ce.teacher_captions(m, torch.zeros(2, 1, 1, 1), max_length=4, length=7)
    assert seen["banned"] == {0, 1}
    assert out[0].tolist() == [1, 3, 3, 3, 3, 2, 0]  # <START> words <END> <NULL> (cut: closed)
