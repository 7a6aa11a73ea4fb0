"""FCN models: output geometry and alignment, 32s -> 16s init, frozen upsamplers, VGG16 loading.

CPU only and fast: forward passes use width 1/16; width 1 is only built on the
meta device (shapes, no compute) or for the weight-loading test (no forward).
"""
import pytest
import torch
import torch.nn as nn

import models.fcn as fcn
from models.colorizer import Colorizer
from models.fcn import bilinear_kernel, bilinear_upsampler, crop, init_from_fcn, load_vgg16_bn_weights
from models.registry import ARCHITECTURES, build_network as build_model
from models.vgg import VGGTrunk
from pipeline.gmm import uniform_grid

ARCHS = list(ARCHITECTURES)
W = 1 / 16  # channels 4, 8, 16, 32, 32, fc 256


@pytest.mark.parametrize("arch", ARCHS)
def test_output_size_equals_input_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, n_classes=5, width=W).eval()
    with torch.no_grad():
        for h, w in [(1, 1), (7, 9), (33, 47), (64, 64), (257, 255)]:
            assert model(torch.randn(2, 1, h, w)).shape == (2, 5, h, w)


def test_width1_shapes_and_parameter_count():
    # meta device: real shapes and parameter counts without allocating or computing
    with torch.device("meta"):
        model = build_model("fcn8s", n_classes=21)
        assert model(torch.empty(1, 1, 33, 47)).shape == (1, 21, 33, 47)
        fcn32s = build_model("fcn32s", n_classes=21)
    n_all = sum(p.numel() for p in fcn32s.parameters())
    n_trainable = sum(p.numel() for p in fcn32s.parameters() if p.requires_grad)
    # measured: 134,456,277 in all, 134,370,261 trainable (the frozen 64x64
    # upscore is 21 * 4096). The reference FCN-32s (RGB, no BN) is ~134.5M.
    assert n_all == 134_456_277
    assert n_all - n_trainable == 21 * 64 * 64
    assert 134e6 < n_trainable < 135e6


def test_trunk_names_and_channels():
    trunk = VGGTrunk(width=W)
    names = [n for n, _ in trunk.named_parameters()]
    assert names[:4] == ["conv1_1.weight", "conv1_1.bias", "bn1_1.weight", "bn1_1.bias"]
    assert names[-4:] == ["fc7.weight", "fc7.bias", "bn7.weight", "bn7.bias"]
    assert trunk.conv1_1.padding == (100, 100) and trunk.conv5_3.out_channels == 32
    assert VGGTrunk(width=1e-3).conv1_1.out_channels == 1  # at least one channel
    pool3, pool4, fc7 = trunk.eval()(torch.randn(1, 1, 30, 50))
    # P = H + 198: pool3 ceil(P/8), pool4 ceil(P/16), fc7 ceil(P/32) - 6
    assert pool3.shape == (1, 16, 29, 31) and pool4.shape == (1, 32, 15, 16) and fc7.shape == (1, 256, 2, 2)


def test_colorizer_settings_round_trip_gives_the_same_outputs():
    torch.manual_seed(0)
    colorizer = Colorizer("fcn16s", n_classes=9, width=W, im_size=32, mean_L=47.5, gmm=uniform_grid(9)).eval()
    for p in colorizer.parameters():             # the fresh skip layers are zero: make them count
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    settings = colorizer.settings()
    assert {k: settings[k] for k in ("arch", "n_classes", "width", "im_size", "mean_L")} == \
        {"arch": "fcn16s", "n_classes": 9, "width": W, "im_size": 32, "mean_L": 47.5}
    copy = Colorizer.from_checkpoint({"settings": settings, "state_dict": colorizer.state_dict()}).eval()
    L = torch.rand(2, 1, 32, 32) * 100
    with torch.no_grad():
        torch.testing.assert_close(copy(L), colorizer(L), rtol=0, atol=0)
    torch.testing.assert_close(copy.posteriors(L), colorizer.posteriors(L), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unknown architecture 'fcn4s'; registered: \['fcn16s', 'fcn32s', 'fcn8s'\]"):
        build_model("fcn4s", 7)


def test_colorizer_centres_its_input_with_the_mean_lightness():
    torch.manual_seed(0)
    colorizer = Colorizer("fcn32s", n_classes=4, width=W, im_size=32, mean_L=40.0, gmm=uniform_grid(4)).eval()
    L = torch.rand(1, 1, 32, 32) * 100
    with torch.no_grad():
        torch.testing.assert_close(colorizer(L), colorizer.net(L - 40.0))


def test_crop_pads_past_the_edge():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    assert torch.equal(crop(x, 1, 2, 2), x[:, :, 1:3, 1:3])
    y = crop(x, 2, 3, 3)  # would need rows 2..4 and cols 2..4 of a 3x4 map
    assert y.shape == (1, 1, 3, 3)
    assert torch.equal(y[0, 0, 0, :2], x[0, 0, 2, 2:]) and y[0, 0, 1:].abs().sum() == 0 and y[0, 0, :, 2].abs().sum() == 0


def test_bilinear_upsampler_interpolates():
    assert torch.allclose(bilinear_kernel(4)[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) / 4)
    up = bilinear_upsampler(2, 8)  # (h, w) -> ((h+1)*8, (w+1)*8)
    ramp = torch.arange(5.0).expand(1, 2, 5, 5)  # value = column index
    y = up(ramp)
    assert y.shape == (1, 2, 48, 48)
    # away from the borders a linear ramp stays linear: one input step per 8 pixels
    interior = y[0, 0, 20, 12:36]
    assert torch.allclose(interior.diff(), torch.full((23,), 1 / 8), atol=1e-5)


def test_upsamplers_frozen_and_untouched_by_optimiser():
    torch.manual_seed(0)
    model = build_model("fcn8s", n_classes=3, width=W)
    ups = {n: m for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)}
    assert sorted(ups) == ["upscore2", "upscore8", "upscore_pool4"]
    before = {n: m.weight.clone() for n, m in ups.items()}
    opts = [torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1),
            torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)]
    for opt in opts:
        opt.zero_grad()
        model(torch.randn(2, 1, 20, 24)).square().mean().backward()
        opt.step()
    for n, m in ups.items():
        assert m.bias is None and not m.weight.requires_grad and m.weight.grad is None
        assert torch.equal(m.weight, before[n])
        assert torch.equal(m.weight[0, 0], bilinear_kernel(m.kernel_size[0]))
    assert model.score_fr.weight.grad is not None  # the optimiser did run


def test_backward_reaches_score_pool4():
    torch.manual_seed(0)
    model = build_model("fcn16s", n_classes=4, width=W)
    assert model.score_pool4.weight.abs().sum() == 0  # zero init
    target = torch.randint(0, 4, (2, 33, 47))
    nn.functional.cross_entropy(model(torch.randn(2, 1, 33, 47)), target).backward()
    assert model.score_pool4.weight.grad.abs().sum() > 0
    assert model.trunk.conv1_1.weight.grad.abs().sum() > 0


def trained_ish(model, seed):
    """model with random BN affines and BN running stats from a train-mode pass.

    Fresh running stats (0, 1) under default conv init make the eval-mode output
    almost independent of the input; stats from real batches keep it alive.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.uniform_(-0.2, 0.2, generator=g)
            bn.momentum = 1.0  # running stats := this batch's stats
        model.train()(torch.randn(4, 1, 96, 96, generator=g))
        for bn in bns:
            bn.momentum = 0.1
            bn.num_batches_tracked.fill_(123)
        model.score_fr.bias.zero_()
    return model.eval()


def mirror_symmetric(model, seed):
    """model with random conv weights (fc6/fc7 and score layers included) that are
    symmetric under left-right and up-down flips, and random biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if type(m) is nn.Conv2d:                  # not the frozen bilinear ConvTranspose2d
                w = torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5
                m.weight.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
                m.bias.normal_(0, 0.1, generator=g)
    return model


def mirror_asymmetry(arch):
    """max |f(flip x) - flip f(x)| / max |f(x)| over both flips, for a net with flip-symmetric
    kernels (trained-ish BN) on a 58 x 90 input.

    Why this measures the crop offsets: with H + 198 a multiple of 32 (H = 26 mod 32) every
    ceil-mode pool sees an even size and is flip-equivariant, so are the symmetric convs, BN,
    ReLU and the bilinear upsamplers; a crop is then flip-equivariant only when it removes as
    many rows at the top as at the bottom.  Those centred offsets are exactly the reference
    ones (19 for 32s; 5 and 27 for 16s; 5, 9 and 31 for 8s).  An offset one pixel off shifts
    the output (or a skip) by a pixel: measured 0.05 (32s 19 -> 18) to 1.6 (8s 9 -> 8),
    against ~2e-6 of float rounding for the real offsets.
    """
    torch.manual_seed(0)
    model = trained_ish(mirror_symmetric(build_model(arch, n_classes=3, width=W), seed=0), seed=1)
    x = torch.randn(2, 1, 58, 90, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x)
        return max(float((model(x.flip(d)).flip(d) - y).abs().max() / y.abs().max()) for d in (-1, -2))


@pytest.mark.parametrize("arch", ARCHS)
def test_crop_offsets_centre_the_output_on_the_input(arch):
    """Alignment, not just size: a flip of the input flips the output (see mirror_asymmetry)."""
    assert mirror_asymmetry(arch) < 1e-4


@pytest.mark.parametrize("arch, skip, offset", [
    ("fcn32s", None, 18), ("fcn16s", None, 26), ("fcn16s", 0, 4), ("fcn8s", 1, 8), ("fcn8s", None, 32)])
def test_a_crop_offset_one_pixel_off_is_caught(monkeypatch, arch, skip, offset):
    """The test above can fail: move one crop (final or a skip's) by a pixel."""
    skips, (name, factor, _) = fcn.HEADS[arch]
    if skip is None:
        head = (skips, (name, factor, offset))
    else:
        skips = list(skips)
        skips[skip] = skips[skip][:2] + (offset,)
        head = (tuple(skips), (name, factor, fcn.HEADS[arch][1][2]))
    monkeypatch.setitem(fcn.HEADS, arch, head)
    assert mirror_asymmetry(arch) > 0.01


def test_fcn16s_from_fcn32s_copies_params_and_bn_stats():
    torch.manual_seed(0)
    src = trained_ish(build_model("fcn32s", n_classes=21, width=W), seed=0)
    dst = build_model("fcn16s", n_classes=21, width=W)
    copied = init_from_fcn(dst, src)

    src_state, dst_state = src.state_dict(), dst.state_dict()
    shared = [k for k in dst_state if k in src_state]
    assert sorted(copied) == sorted(shared)  # 32s and 16s differ only in their upsamplers
    for k in shared:
        assert torch.equal(dst_state[k], src_state[k]), k
    for k in ["trunk.bn3_1.running_mean", "trunk.bn7.running_var", "trunk.bn1_1.num_batches_tracked"]:
        assert k in copied
    assert dst.trunk.bn7.num_batches_tracked == 123
    assert dst.score_pool4.weight.abs().sum() == 0 and dst.score_pool4.bias.abs().sum() == 0

    dst.eval()
    x = torch.randn(2, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y32, y16 = src(x), dst(x)
        # exact: the 16s is the 32s's scores pushed through the 2x -> 16x upsamplers
        fc7 = src.trunk(x)[2]
        assert torch.allclose(y16, crop(dst.upscore16(dst.upscore2(src.score_fr(fc7))), 27, 96, 96), atol=1e-5)
    # 2x-then-16x bilinear is a smoother interpolator than 32x bilinear, so the
    # outputs differ a little. Measured here: max |diff| = 0.20 of y32's range,
    # mean |diff| = 0.12 of mean |y32|, argmax agrees on 91% of pixels (random
    # nets have close class scores). Broken inits measured on the same input:
    # BN stats not copied 0.51 / 0.92 / 2%; random score_pool4 2.8 / 5.2 / 4%.
    diff = (y16 - y32).abs()
    assert diff.max() < 0.35 * (y32.max() - y32.min())
    assert diff.mean() < 0.25 * y32.abs().mean()
    assert (y16.argmax(1) == y32.argmax(1)).float().mean() > 0.8


def test_fcn8s_from_fcn16s_keeps_score_pool4_and_zero_score_pool3():
    torch.manual_seed(0)
    src = build_model("fcn16s", n_classes=3, width=W)
    nn.init.normal_(src.score_pool4.weight)
    dst = build_model("fcn8s", n_classes=3, width=W)
    copied = init_from_fcn(dst, src)
    assert "score_pool4.weight" in copied and not any(k.startswith("score_pool3") for k in copied)
    assert torch.equal(dst.score_pool4.weight, src.score_pool4.weight)
    assert dst.score_pool3.weight.abs().sum() == 0
    # a different class count does not copy the score layers, the trunk still goes across
    copied = init_from_fcn(build_model("fcn16s", n_classes=5, width=W), src)
    assert "trunk.fc7.weight" in copied and "score_fr.weight" not in copied


def test_load_vgg16_bn_weights(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16_bn(weights=None)
    with torch.no_grad():
        for m in vgg.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path / "vgg16_bn.pth"
    vgg_state = vgg.state_dict()
    torch.save(vgg_state, path)
    del vgg

    model = build_model("fcn32s", n_classes=5)  # width 1; no forward pass (slow)
    bn6_before = model.trunk.bn6.weight.clone()
    loaded = load_vgg16_bn_weights(model, path)
    assert len(loaded) == 2 * 13 + 2
    trunk = model.trunk
    assert torch.allclose(trunk.conv1_1.weight, vgg_state["features.0.weight"].mean(1, keepdim=True))
    assert torch.equal(trunk.conv1_2.weight, vgg_state["features.3.weight"])
    assert torch.equal(trunk.bn1_1.running_mean, vgg_state["features.1.running_mean"])
    assert torch.equal(trunk.bn5_3.running_var, vgg_state["features.41.running_var"])
    assert torch.equal(trunk.conv5_3.bias, vgg_state["features.40.bias"])
    assert torch.equal(trunk.fc6.weight, vgg_state["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(trunk.fc6.weight[5, 17, 2, 3], vgg_state["classifier.0.weight"][5, 17 * 49 + 2 * 7 + 3])
    assert torch.equal(trunk.fc7.weight[:, :, 0, 0], vgg_state["classifier.3.weight"])
    assert torch.equal(trunk.bn6.weight, bn6_before)  # no counterpart in vgg16_bn

    with pytest.raises(FileNotFoundError, match="not found"):
        load_vgg16_bn_weights(model, tmp_path / "missing.pth")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a vgg16_bn"):
        load_vgg16_bn_weights(model, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth is not a vgg16_bn state_dict: not a PyTorch weights file, or truncated$") as e:
        load_vgg16_bn_weights(model, tmp_path / "junk.pth")
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)   # never torch's unsafe advice
    with pytest.raises(ValueError, match="width 1"):
        load_vgg16_bn_weights(build_model("fcn32s", n_classes=5, width=W), path)


class _Pickled:
    """Not a tensor: torch.load(weights_only=True) refuses a file holding one."""


def test_vgg16_bn_weights_errors_never_advise_an_unsafe_load(tmp_path):
    model = build_model("fcn32s", n_classes=5)  # width 1; no forward pass
    torch.save({"features.0.weight": _Pickled()}, tmp_path / "pickled.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "pickled.pth").read_bytes()[:50])
    messages = {}
    for name in ("pickled.pth", "junk.pth", "cut.pth"):
        with pytest.raises(ValueError) as info:
            load_vgg16_bn_weights(model, tmp_path / name)
        messages[name] = str(info.value)
    for msg in messages.values():
        assert "weights_only" not in msg and "False" not in msg and "\n" not in msg, msg
    assert "could run code: refused" in messages["pickled.pth"]
    assert messages["junk.pth"].endswith("not a PyTorch weights file, or truncated")
    assert messages["cut.pth"].endswith("not a PyTorch weights file, or truncated")
