"""pipeline/memory.py: the estimate's network counts are the real network's, exactly; its
training-step figure is within 25 % of measured peak RSS; shard figures follow the shards'
real arrays; the machine's memory and the verdict."""
import h5py
import pytest
import torch

from models.registry import build_network
from pipeline import memory
from pipeline.config import ConfigError, resolve_config
from pipeline.gmm import uniform_grid
from pipeline.memory import Machine, Need
from pipeline.preprocess import build_lab_shard, build_label_shard


@pytest.mark.parametrize("arch, k, width", [("fcn32s", 16, 1.0), ("fcn16s", 313, 0.3), ("fcn8s", 4, 1 / 16),
                                             ("fcn8s", 64, 2.0)])
def test_parameter_count_is_the_networks(arch, k, width):
    net = build_network(arch, k, width)
    trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    assert memory.parameter_count(arch, k, width) == (trained, frozen)


@pytest.mark.parametrize("im_size, width", [(32, 1 / 16), (45, 0.1)])
def test_trunk_maps_are_the_networks_feature_maps(im_size, width):
    net = build_network("fcn32s", 4, width).eval()
    seen = []
    for name, module in net.trunk.named_children():
        if name.startswith("bn"):          # one map per conv + BN + ReLU (fc6 / fc7 included)
            module.register_forward_hook(lambda m, i, out: seen.append(out[0].numel()))
    pools = []
    real_pool = torch.nn.functional.max_pool2d

    def pool(*args, **kwargs):
        out = real_pool(*args, **kwargs)
        pools.append(out[0].numel())
        return out
    torch.nn.functional.max_pool2d = pool
    try:
        with torch.no_grad():
            net(torch.zeros(1, 1, im_size, im_size))
    finally:
        torch.nn.functional.max_pool2d = real_pool
    maps = memory.trunk_maps(im_size, width)
    assert [n for n, kind in maps if kind in ("conv", "fc")] == seen
    assert [n for n, kind in maps if kind == "pool"] == pools


# Peak RSS of CPU training steps, measured by bench/memory_estimate.py (2 steps of
# train_one_epoch, torch on 1 thread, 2-core Linux box, 2026-12-07): (arch, im_size, width,
# batch, K, img_lowpass, optim) -> MB.  The estimate was within 0.89-1.03 of each.
MEASURED_MB = {
    ("fcn32s", 64, 1 / 8, 4, 16, 8, "adam"): 912,
    ("fcn32s", 160, 1 / 4, 4, 16, 8, "adam"): 1481,
    ("fcn32s", 256, 1 / 4, 8, 16, 8, "adam"): 2204,
    ("fcn8s", 256, 1 / 16, 4, 256, 1, "adam"): 2704,
    ("fcn16s", 128, 1 / 2, 2, 64, 4, "sgd"): 1803,
    ("fcn32s", 32, 1.0, 1, 16, 8, "adam"): 3718,
}


@pytest.mark.parametrize("point", sorted(MEASURED_MB))
def test_training_step_estimate_is_within_a_quarter_of_the_measured_peak(point):
    arch, im_size, width, batch, k, lowpass, optim = point
    cfg = resolve_config(102, {"im_size": im_size, "width": width, "batch_size": batch, "n_clusters": k,
                               "img_lowpass": lowpass, "optim": optim, "momentum": 0.9})
    ratio = memory.training_step_bytes(cfg, arch, "cpu") / (MEASURED_MB[point] << 20)
    assert 0.75 <= ratio <= 1.25, ratio


def test_the_step_grows_with_each_setting_and_halves_its_activations_in_bf16():
    cfg = resolve_config(14)
    base = memory.training_step_bytes(cfg, "fcn32s", "cpu")
    for key, value in (("im_size", 512), ("width", 2.0), ("batch_size", 2), ("n_clusters", 64)):
        assert memory.training_step_bytes({**cfg, key: value}, "fcn32s", "cpu") > base, key
    assert memory.training_step_bytes({**cfg, "optim": "sgd", "momentum": 0.0}, "fcn32s", "cpu") < base
    big = {**cfg, "batch_size": 64}
    cpu, cuda = memory.training_step_bytes(big, "fcn16s", "cpu"), memory.training_step_bytes(big, "fcn16s", "cuda")
    assert 0.5 < cuda / cpu < 0.75          # trunk in bf16; weights, optimiser and loss stay float32
    assert memory.training_step_bytes({**big, "precision": "fp32"}, "fcn16s", "cuda") > cuda
    # config 14 as the original ran it: ~4.3 GB on a CPU, 3.0 GB of it the 134 M weights with their
    # gradients, Adam's two moments and its temporaries
    assert 4.2e9 < base < 4.5e9


def test_shard_figures_follow_the_shards_real_arrays(tmp_path, photo_dataset):
    files = [f"train/p{i:02d}.png" for i in range(4)]
    cfg = resolve_config(102, {"shard_size": 1, "n_clusters": 4, "img_lowpass": 4})   # 4 images: 4 x shard_size
    lab, labels = tmp_path / "lab.h5", tmp_path / "labels.h5"
    build_lab_shard(photo_dataset, files, cfg["im_size"], lab)
    build_label_shard(lab, uniform_grid(4), cfg["img_lowpass"], labels)
    with h5py.File(lab) as f:
        lab_bytes = f["L"].nbytes + f["ab"].nbytes
    with h5py.File(labels) as f:
        label_bytes = f["posteriors"].nbytes
    assert 2 * lab_bytes == memory.lab_shard_bytes(cfg) - memory.SHARD_RUNTIME      # arrays + HDF5 image
    batch = memory.LABEL_BATCH * (memory.LABEL_BATCH_MAPS * 4 * 4 * 8 * 8 + 4 * 2 * 32 * 32)
    assert 2 * label_bytes == memory.label_shard_bytes(cfg) - memory.SHARD_RUNTIME - batch


def test_gmm_fit_figure():
    cfg = resolve_config(14)      # 5000 images x 20 pixels, K=16: 100k samples
    assert memory.gmm_fit_bytes(cfg) == memory.SHARD_RUNTIME + 100_000 * (32 + 24 * 16)
    assert memory.gmm_fit_bytes({**cfg, "gmm_images": 50}) == memory.SHARD_RUNTIME + 50 * 1000 * (32 + 24 * 16)
    assert memory.gmm_fit_bytes({**cfg, "im_size": 4, "img_lowpass": 1}) == \
        memory.SHARD_RUNTIME + 5000 * 16 * (32 + 24 * 16)              # 20 pixels of a 4x4 image: 16
    assert memory.gmm_fit_bytes({**cfg, "binning": "uniform", "n_clusters": 16}) == 0


def test_machine_memory_picks_the_training_device(monkeypatch):
    ram = memory.ram_bytes()
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    assert 0 < ram <= total
    gpus = ((0, 80 << 30), (1, 40 << 30), (2, 140 << 30))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert memory.machine_memory("cpu", gpus) == Machine(ram)
    assert memory.machine_memory("auto", ()) == Machine(ram)                 # no GPU: trains on the CPU
    assert memory.machine_memory("auto", gpus) == Machine(ram, 80 << 30, "GPU 0")
    assert memory.machine_memory("cuda:2", gpus) == Machine(ram, 140 << 30, "GPU 2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert memory.machine_memory("cuda", gpus) == Machine(ram, 40 << 30, "GPU 1")
    assert memory.machine_memory("cuda:1", gpus) == Machine(ram, 140 << 30, "GPU 2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2e")
    assert memory.machine_memory("cuda", gpus) == Machine(ram, 40 << 30, "the smallest GPU")


def test_verdict_refuses_what_does_not_fit_and_warns_above_half():
    machine = Machine(ram=16 * 10 ** 9, device=80 * 10 ** 9, device_name="GPU 0")
    small = Need("building a Lab shard", 10 ** 9, "ram")
    large = Need("a training step of fcn32s", 60 * 10 ** 9, "device")
    assert memory.verdict([small], machine, "config 14") == []
    assert memory.verdict([small, large], machine, "config 14") == [
        "config 14: a training step of fcn32s needs about 60.0 GB, 75% of this machine's 80.0 GB of GPU 0 memory"]
    with pytest.raises(ConfigError) as e:
        memory.verdict([small, Need("a training step of fcn32s", 60 * 10 ** 9, "ram")], machine, "config 14")
    assert str(e.value) == ("config 14: a training step of fcn32s needs about 60.0 GB, more than this machine's "
                            "16.0 GB of RAM; lower batch_size, im_size, width or n_clusters")


def test_shard_and_training_needs():
    cfg = resolve_config(102)
    assert [n.what for n in memory.shard_needs(cfg)] == ["building a Lab shard", "building a label shard",
                                                         "the GMM fit"]
    loader, step = memory.training_needs(cfg, "fcn16s", "cuda")
    assert step == Need("a training step of fcn16s", memory.training_step_bytes(cfg, "fcn16s", "cuda"), "device")
    assert loader == Need("the training loader's batches", 6 * 4 * 4 * (32 * 32 + 4 * 4 * 4), "ram")
    [step] = memory.training_needs(cfg, "fcn16s", "cpu")          # on a CPU both are RAM
    assert step.bytes == memory.training_step_bytes(cfg, "fcn16s", "cpu") + loader.bytes


def test_every_registered_architecture_has_a_head_in_the_estimate():
    from models.registry import ARCHITECTURES
    assert set(ARCHITECTURES) <= set(memory.FINAL_FACTOR) == set(memory.SKIP_STRIDES)


@pytest.mark.parametrize("device_kind, precision, expected", [
    ("cuda", None, 2), ("cpu", None, 4), ("cuda", "auto", 2), ("cpu", "auto", 4), ("cpu", "bf16", 2),
    ("cuda", "fp32", 4), ("cuda", "bf16", 2)])
def test_activation_bytes_follow_the_precision_key(device_kind, precision, expected):
    cfg = {} if precision is None else {"precision": precision}       # configs from before the key: auto
    assert memory.activation_bytes(device_kind, cfg) == expected
