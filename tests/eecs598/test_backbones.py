"""The offline pretrained backbone: architecture matches the shipped checkpoint and it really
recognizes ImageNet content (VOC photos from the data root)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eecs598.backbones import EfficientNetLite0, SameConv2d, build_backbone
from eecs598.data import store
from eecs598.data.voc import IMAGENET_MEAN, IMAGENET_STD
from eecs598.testing import shared_data_available


def test_same_padding_matches_tensorflow_rule():
    # TF "SAME": output = ceil(in / stride); the odd extra pixel of padding goes bottom/right.
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, 3, stride=2).double()
    x = torch.randn(1, 2, 8, 7, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, (1, 1, 0, 1)), conv.weight, stride=2)  # W: 7->pad 2, H: 8->pad 1
    out = conv(x)
    assert out.shape == (1, 3, 4, 4)
    assert torch.allclose(out, expected)


def test_feature_taps_shapes_and_strides():
    net = build_backbone(pretrained=False)
    feats = net(torch.zeros(2, 3, 96, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "c3": (2, 40, 12, 8), "c4": (2, 112, 6, 4), "c5": (2, 320, 3, 2)}
    assert net.out_channels == {"c3": 40, "c4": 112, "c5": 320}


def test_checkpoint_loads_every_parameter():
    net = EfficientNetLite0(pretrained=True)  # load_state_dict is strict: names and shapes match
    assert sum(p.numel() for p in net.parameters()) == 4_652_008


@pytest.mark.skipif(not shared_data_available("voc2007"), reason="VOC 2007 not in the data root")
@pytest.mark.parametrize("name, imagenet_ids", [
    ("000117", {404}),                   # aeroplane -> airliner
    ("000132", {779, 874, 654}),         # bus -> school bus / trolleybus / minibus
    ("000246", set(range(151, 269))),    # dog -> one of the dog breeds
])
@pytest.mark.parametrize("input_normalization", ["imagenet", "lite"])
def test_pretrained_weights_recognize_voc_photos(name, imagenet_ids, input_normalization):
    path = store.dataset_dir("voc2007") / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{name}.jpg"
    image = Image.open(path).convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    net = EfficientNetLite0(pretrained=True, input_normalization=input_normalization).eval()
    with torch.no_grad():
        top1 = net(x[None]).argmax(1).item()
    assert top1 in imagenet_ids


def test_lite_input_normalization_feeds_the_weights_their_own_pixel_scaling():
    """The backbone takes ImageNet-normalized input; "lite" runs the network on
    (pixel - 127) / 128, the scaling of TensorFlow's EfficientNet-Lite weights, and "imagenet"
    (the default) on the input unchanged. Reference: the "imagenet" network fed (pixel - 127) / 128."""
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, 40, 36)).double()
    x = (pixels / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    lite = build_backbone(pretrained=False, input_normalization="lite").double().eval()
    unchanged = build_backbone(pretrained=False).double().eval()
    assert unchanged.input_normalization == "imagenet" == EfficientNetLite0(pretrained=False).input_normalization
    unchanged.load_state_dict(lite.state_dict())  # same weights; the scaling is not in the state dict
    with torch.no_grad():
        ours, reference = lite(x), unchanged((pixels - 127) / 128)
        plain = unchanged(x)
    for level in ("c3", "c4", "c5"):
        assert torch.allclose(ours[level], reference[level], atol=1e-10, rtol=1e-10), level
    assert not torch.allclose(plain["c5"], ours["c5"])
    assert lite.state_dict().keys() == unchanged.state_dict().keys()  # checkpoints stay compatible
    unchanged.input_normalization = "lite"  # settable after construction (A5's settings do so)
    with torch.no_grad():
        assert torch.equal(unchanged(x)["c5"], ours["c5"])
    with pytest.raises(ValueError, match="input_normalization"):
        unchanged.input_normalization = "tf"
    with pytest.raises(ValueError, match="input_normalization"):
        build_backbone(pretrained=False, input_normalization="tf")
    with pytest.raises(ValueError, match="ImageNet-normalized input only"):
        build_backbone("regnet_x_400mf", input_normalization="lite")


def test_head_tap_matches_the_classifier_features():
    torch.manual_seed(0)
    full = EfficientNetLite0(pretrained=True).eval()
    taps = build_backbone(with_head=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        head = taps(x)["head"]
        expected = full._fc.weight @ head.mean(dim=(2, 3))[0] + full._fc.bias
        assert torch.allclose(full(x)[0], expected, atol=1e-4)
    assert taps.out_channels["head"] == 1280 and head.shape == (1, 1280, 2, 2)


def test_feature_taps_are_the_ends_of_their_stages():
    """c3 / c4 / c5 are the outputs of the last blocks of the 40-, 112- and 320-channel stages:
    the inputs of blocks 5 and 11 and the output of block 15 (block 9 also has 112 channels at
    stride 16, so shapes alone cannot tell)."""
    torch.manual_seed(0)
    taps = build_backbone(pretrained=False).eval()
    seen, blocks = {}, taps.net._blocks
    blocks[5].register_forward_pre_hook(lambda m, a: seen.__setitem__("c3", a[0]))
    blocks[11].register_forward_pre_hook(lambda m, a: seen.__setitem__("c4", a[0]))
    blocks[15].register_forward_hook(lambda m, a, o: seen.__setitem__("c5", o))
    with torch.no_grad():
        features = taps(torch.randn(1, 3, 64, 64))
    for name in ("c3", "c4", "c5"):
        assert torch.equal(features[name], seen[name]), name



def test_damaged_weights_name_their_file_and_the_remedy(monkeypatch, tmp_path):
    import eecs598.backbones as backbones
    damaged = tmp_path / "lite0.pth"
    damaged.write_bytes(b"PK\x03\x04 not a checkpoint")
    monkeypatch.setattr(backbones, "efficientnet_lite0_weights_path", lambda: damaged)
    with pytest.raises(RuntimeError, match=r"lite0\.pth: cannot read the EfficientNet-Lite0 weights.*force-reinstall"):
        EfficientNetLite0(pretrained=True)



def test_regnet_weights_download_under_a_socket_timeout(monkeypatch):
    """torch.hub downloads torchvision's weights with no timeout of its own: the RegNet taps build
    the model under a bounded socket timeout and restore the previous one afterwards (a stand-in
    torchvision records the timeout in force)."""
    import socket
    import sys
    import types

    import eecs598.backbones as backbones
    seen = []

    def regnet_x_400mf(weights=None):
        seen.append((weights, socket.getdefaulttimeout()))
        raise RuntimeError("stand-in: no model")

    models = types.SimpleNamespace(RegNet_X_400MF_Weights=types.SimpleNamespace(IMAGENET1K_V1="imagenet"),
                                   regnet_x_400mf=regnet_x_400mf)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))
    socket.setdefaulttimeout(None)
    with pytest.raises(RuntimeError, match="stand-in"):
        build_backbone("regnet_x_400mf")
    assert seen == [("imagenet", backbones.DOWNLOAD_TIMEOUT_S)] and socket.getdefaulttimeout() is None
