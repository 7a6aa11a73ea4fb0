"""FCN-32s / FCN-16s / FCN-8s heads on the VGG16-BN trunk (Long et al. 2015).

All three are one class: the head starts from score_fr (stride 32), then for
each skip layer upsamples 2x, adds that pool's 1x1 scores (cropped to line up)
and finally upsamples by the remaining stride and crops to the input size.
Crop offsets are the reference ones for a conv1_1 padding of 100.
"""
import os
import pickle
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vgg import VGGTrunk, conv_names

# arch -> (skips, final upsampler).  A skip is (pool, 2x upsampler name, crop
# offset of the pool scores); the final one is (name, factor, crop offset).
HEADS = {
    "fcn32s": ((), ("upscore", 32, 19)),
    "fcn16s": ((("pool4", "upscore2", 5),), ("upscore16", 16, 27)),
    "fcn8s": ((("pool4", "upscore2", 5), ("pool3", "upscore_pool4", 9)), ("upscore8", 8, 31)),
}


def bilinear_kernel(size):
    """(size, size) bilinear interpolation kernel, as used by FCN/Caffe."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    r = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (r[:, None] * r[None, :]).float()


def bilinear_upsampler(channels, factor):
    """Frozen ConvTranspose2d that upsamples each channel by `factor` bilinearly.

    Kernel 2*factor, stride factor: an (h, w) map becomes ((h+1)*factor, (w+1)*factor).
    Grouped (one kernel per channel) rather than a dense KxK diagonal weight,
    which would be K*K*(2f)^2 floats (1.6 GB for K=313 at 32x).
    """
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, groups=channels, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(2 * factor).expand_as(up.weight))  # (C, 1, 2f, 2f)
    up.weight.requires_grad_(False)
    return up


def crop(x, offset, h, w):
    """x[:, :, offset:offset+h, offset:offset+w], zero-padding bottom/right if x is too small."""
    pad_h = max(0, offset + h - x.shape[2])
    pad_w = max(0, offset + w - x.shape[3])
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x[:, :, offset:offset + h, offset:offset + w]


class FCN(nn.Module):
    """(N, 1, H, W) -> (N, n_classes, H, W) class scores, for any H, W >= 1."""

    def __init__(self, arch: str, n_classes: int, width: float = 1.0):
        super().__init__()
        if arch not in HEADS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(HEADS)}")
        self.arch, self.n_classes, self.width = arch, n_classes, width
        self.skips, self.final = HEADS[arch]
        self.trunk = VGGTrunk(width, in_channels=1)  # the Lab lightness
        self.score_fr = nn.Conv2d(self.trunk.out_channels["fc7"], n_classes, 1)
        for pool, up_name, _ in self.skips:
            score = nn.Conv2d(self.trunk.out_channels[pool], n_classes, 1)
            # zero: a fresh skip adds nothing at first.  The finer net's output still
            # differs from the coarser one it starts from (2x then 16x bilinear
            # upsampling instead of 32x: up to ~3.5 logits apart), so it needs training.
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            setattr(self, f"score_{pool}", score)
            setattr(self, up_name, bilinear_upsampler(n_classes, 2))
        name, factor, _ = self.final
        setattr(self, name, bilinear_upsampler(n_classes, factor))

    def forward(self, x):
        h, w = x.shape[2:]
        pool3, pool4, fc7 = self.trunk(x)
        pools = {"pool3": pool3, "pool4": pool4}
        score = self.score_fr(fc7)  # (N, K, ceil((H+198)/32) - 6, ...)
        for pool, up_name, offset in self.skips:
            score = getattr(self, up_name)(score)  # 2x: now at the pool's stride
            skip = getattr(self, f"score_{pool}")(pools[pool])
            score = score + crop(skip, offset, score.shape[2], score.shape[3])
        name, _, offset = self.final
        return crop(getattr(self, name)(score), offset, h, w)  # (N, K, H, W)


def build(arch: str, n_classes: int, width: float = 1.0) -> nn.Module:
    """FCN for arch in HEADS on a 1-channel (mean-centred lightness) input; the
    registry (models.registry) calls this."""
    return FCN(arch, n_classes, width)


BN_GAMMA_INITS = ("one", "uniform")


@torch.no_grad()
def init_bn_gamma(net: nn.Module, mode: str) -> None:
    """Set every BatchNorm scale (gamma) of a fresh `net` as config key bn_gamma_init says:
    'one' leaves today's PyTorch default (1); 'uniform' draws U(0, 1) from torch's global RNG
    in module order, as PyTorch 0.3's BatchNorm did (the original's runs).  Biases stay 0."""
    if mode not in BN_GAMMA_INITS:
        raise ValueError(f"bn_gamma_init must be one of {BN_GAMMA_INITS}, got {mode!r}")
    if mode == "uniform":
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                m.weight.uniform_(0, 1)


@torch.no_grad()
def init_from_fcn(dst, src):
    """Copy into dst every parameter and buffer of src with the same name and shape.

    Used to start FCN-16s from a trained FCN-32s (or 8s from 16s/32s). Buffers
    include the BatchNorm running_mean/var and num_batches_tracked: without
    them the copied trunk would normalise with default stats in eval mode.
    dst's new score_pool* layers have no counterpart and stay zero.
    Returns the copied names.
    """
    src_state = src.state_dict()
    copied = []
    for name, t in dst.state_dict().items():  # tensors share storage with dst
        if name in src_state and src_state[name].shape == t.shape:
            t.copy_(src_state[name])
            copied.append(name)
    return copied


@torch.no_grad()
def _why_not_weights(path, error: Exception) -> str:
    """Why torch.load(weights_only=True) refused a weights file, in one line without torch's
    text (which advises weights_only=False: loading a pickle that way could run code)."""
    if isinstance(error, OSError):
        return f"cannot read it ({error.strerror or type(error).__name__})"
    if isinstance(error, pickle.UnpicklingError) and zipfile.is_zipfile(path):    # torch.save's format
        return ("it holds more than tensors and plain values, and loading it could run code: refused "
                "(torchvision's vgg16_bn-*.pth is a plain state_dict and loads as it is)")
    return "not a PyTorch weights file, or truncated"


def load_vgg16_bn_weights(model, path):
    """Initialise model.trunk from a local torchvision vgg16_bn state_dict file.

    features.* convs and BNs map in order onto conv1_1/bn1_1 ... conv5_3/bn5_3;
    conv1_1's RGB filters are averaged to one channel; classifier.0
    (Linear 25088->4096) becomes the 7x7 fc6 conv and classifier.3 the 1x1 fc7
    conv; bn6/bn7 keep their default init. Returns the trunk names loaded.
    """
    trunk = model.trunk
    if trunk.width != 1:
        raise ValueError(f"VGG16 weights only fit width 1, model has width {trunk.width}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vgg16_bn weights not found: {path} (nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's message advises an unsafe load: never repeat it
        raise ValueError(f"{path} is not a vgg16_bn state_dict: {_why_not_weights(path, e)}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a vgg16_bn state_dict")

    # features.<i> is a BN if it has running stats, else a conv (ReLU/pool have no weights)
    def layer_indices(is_bn):
        return sorted(int(k.split(".")[1]) for k in state
                      if k.startswith("features.") and k.endswith(".weight")
                      and (f"features.{k.split('.')[1]}.running_mean" in state) == is_bn)
    convs, bns = layer_indices(False), layer_indices(True)
    names = conv_names()
    fc_shapes = {"classifier.0.weight": (4096, 512 * 7 * 7), "classifier.3.weight": (4096, 4096)}
    if (len(convs), len(bns)) != (len(names), len(names)) or any(
            k not in state or tuple(state[k].shape) != s for k, s in fc_shapes.items()):
        raise ValueError(f"{path} is not a vgg16_bn state_dict "
                         f"(found {len(convs)} convs, {len(bns)} BNs in features.*)")

    loaded = []

    def load(name, prefix, reshape=lambda w: w):
        for key, t in getattr(trunk, name).state_dict().items():
            src = state[f"{prefix}.{key}"]
            t.copy_(reshape(src) if key == "weight" else src)
        loaded.append(name)

    def rgb_to_gray(w):  # (64, 3, 3, 3) -> (64, 1, 3, 3): a gray input has R = G = B
        return w.mean(1, keepdim=True) if trunk.in_channels == 1 else w

    try:
        for name, i_conv, i_bn in zip(names, convs, bns):
            load(f"conv{name}", f"features.{i_conv}", rgb_to_gray if name == "1_1" else (lambda w: w))
            load(f"bn{name}", f"features.{i_bn}")
        load("fc6", "classifier.0", lambda w: w.view(4096, 512, 7, 7))  # Linear input is (C, y, x) flat
        load("fc7", "classifier.3", lambda w: w.view(4096, 4096, 1, 1))
    except (KeyError, RuntimeError) as e:  # missing entry or wrong shape
        raise ValueError(f"{path} is not a vgg16_bn state_dict: {e}") from e
    return loaded
