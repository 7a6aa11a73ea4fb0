"""The memory a config needs, estimated from its settings before any work (no torch here).

Three figures, each the peak of one process:
  - a training step (training_step_bytes): weights, gradients and optimiser state of the
    FCN, plus the activations kept for the backward pass and the loss's K-channel maps; on
    CUDA it is device memory (activations in bf16 under autocast); the loader's batches
    waiting in RAM (loader_bytes) are added on a CPU, a need of their own with CUDA;
  - building one Lab shard and one label shard (lab_shard_bytes, label_shard_bytes): a shard
    holds up to 4 x shard_size images (pipeline/plan.py) and is assembled in memory, then
    copied into an in-memory HDF5 image (pipeline/shards.write_shard): twice its arrays;
  - the GMM fit (gmm_fit_bytes): sklearn's float64 samples and responsibilities.
shard_needs and training_needs list them; verdict() refuses (ConfigError, one line) what does not
fit in this machine's memory (machine_memory: RAM, or the GPU's memory read with nvidia-smi)
and returns one warning line for each figure above LARGE of it.

Accuracy: the training-step constants below were fitted to the peak RSS of real CPU training
steps (bench/memory_estimate.py measures them side by side with the estimate; its table is
in bench/README.md); tests/test_memory.py checks the parameter count and the feature-map
sizes against the real network exactly.  CUDA figures use the same counts with 2-byte
activations; they were not measured on a GPU.

The network's layout lives here (VGG16_BLOCKS, FC_CHANNELS, scaled) so that the estimate
needs no torch; models/vgg.py builds the network from the same constants.
"""
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from .config import ConfigError
from .preprocess import LABEL_BATCH
from .shards import LAB_BYTES_PER_PIXEL

# (number of convs, channels at width 1) for the five VGG16 blocks
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
FC_CHANNELS = 4096
CONV1_PAD = 100             # conv1_1's padding: the maps are S + 198 px a side
FINAL_FACTOR = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}   # the last bilinear upsampler's factor
SKIP_STRIDES = {"fcn32s": (), "fcn16s": (16,), "fcn8s": (16, 8)}   # K-channel skip score maps
HEAD_MARGIN = 96            # the final upsampled map is at most S + 94 px a side (FCN-8s), then cropped


def scaled(channels, width):
    """Channel count scaled by width, rounded, at least 1."""
    return max(1, round(channels * width))


# -------------------------------------------------------------------------- constants (fitted)
# Fitted by least squares to the peak RSS of CPU training steps (bench/memory_estimate.py,
# 6 points, 0.9-2.7 GB: every point within 8 %).  Per element of one image's maps, in bytes
# of the activation dtype (fp32 on CPU): TRUNK_SAVED for every trunk map (each conv's output
# and its ReLU's output are kept for the backward pass, plus the gradients in flight); a
# pool also keeps int64 indices (POOL_INDEX_BYTES).
TRUNK_SAVED = 2.0
POOL_INDEX_BYTES = 8
# float32 maps of K x side x side per image, counted at both sides: the upsampled scores
# (S + 96 before the crop) and the loss's (upsampled target, log-softmax, x log x, products)
# at S, with their gradients
LOSS_MAPS = 2.5
# parameter-sized float32 buffers besides the weights, gradients and optimiser state: the
# optimiser's temporaries (torch's foreach implementations) and the allocator's slack
OPTIMIZER_SCRATCH = 1.5
# torch's own (CPU: libraries, oneDNN's first-step allocations, the training imports: 756 MB
# fitted); CUDA: the context and cuDNN's workspace (not measured: 1 GiB)
RUNTIME_BYTES = {"cpu": 760 << 20, "cuda": 1 << 30}
LOADER_PREFETCH = 2 * 2 + 2       # batches alive at once: 2 workers x prefetch 2, + the step's own (x2: pinned)
LARGE = 0.5                       # warn above this fraction of the memory


@dataclass(frozen=True)
class Need:
    what: str        # "a training step of fcn32s"
    bytes: int
    where: str       # "ram" or "device"


# -------------------------------------------------------------------------- the network
def trunk_maps(im_size: int, width: float) -> list:
    """[(elements per image, kind)] of the trunk's feature maps for an S x S input, in forward
    order; kind is 'conv' (one per conv + BN + ReLU), 'pool' or 'fc'."""
    side, maps = im_size + 2 * CONV1_PAD - 2, []
    for n, c in VGG16_BLOCKS:
        channels = scaled(c, width)
        maps += [(channels * side * side, "conv")] * n
        side = -(-side // 2)                                   # ceil-mode 2x2 pools
        maps.append((channels * side * side, "pool"))
    fc_side = side - 6                                         # the 7x7 fc6 without padding
    maps += [(scaled(FC_CHANNELS, width) * fc_side * fc_side, "fc")] * 2
    return maps


def parameter_count(arch: str, n_clusters: int, width: float) -> tuple:
    """(trained, frozen) parameter counts of the FCN: convs, BatchNorm weights and biases,
    fc6/fc7, the score layers; frozen: the bilinear upsamplers (buffers of BatchNorm not counted)."""
    trained, c_in = 0, 1
    for n, c in VGG16_BLOCKS:
        c_out = scaled(c, width)
        for _ in range(n):
            trained += c_in * c_out * 9 + c_out + 2 * c_out    # 3x3 conv + bias, BN weight + bias
            c_in = c_out
    fc = scaled(FC_CHANNELS, width)
    trained += c_in * fc * 49 + fc + 2 * fc + fc * fc + fc + 2 * fc      # fc6 (7x7), fc7 (1x1), their BNs
    trained += fc * n_clusters + n_clusters                              # score_fr
    pool_channels = {16: scaled(512, width), 8: scaled(256, width)}
    trained += sum(pool_channels[s] * n_clusters + n_clusters for s in SKIP_STRIDES[arch])
    frozen = sum(n_clusters * 4 * 4 for _ in SKIP_STRIDES[arch])         # 2x upsamplers: kernel 4
    frozen += n_clusters * (2 * FINAL_FACTOR[arch]) ** 2
    return trained, frozen


def optimizer_states(cfg: dict) -> int:
    """Tensors the optimiser keeps per parameter: Adam 2 (moments), SGD 1 (momentum) or 0."""
    if cfg["optim"] == "adam":
        return 2
    return 1 if cfg["momentum"] > 0 else 0


def activation_bytes(device_kind: str, cfg: dict) -> int:
    """Bytes per activation, as config key `precision` says (models.device.use_bf16): 'bf16' 2,
    'fp32' 4, 'auto' (or no such key) bf16 on CUDA, float32 on the CPU."""
    precision = cfg.get("precision", "auto")
    if precision == "auto":
        return 2 if device_kind == "cuda" else 4
    return 2 if precision == "bf16" else 4


def training_step_bytes(cfg: dict, arch: str, device_kind: str = "cpu") -> int:
    """Peak memory of one training step of `arch` with cfg's settings (batch_size images of
    im_size px, width, n_clusters K, optimiser), on 'cpu' (RAM) or 'cuda' (device memory);
    the loader's batches waiting in RAM are loader_bytes."""
    s, k, batch, a = cfg["im_size"], cfg["n_clusters"], cfg["batch_size"], activation_bytes(device_kind, cfg)
    trained, frozen = parameter_count(arch, k, cfg["width"])
    weights = 4 * (trained * (2 + optimizer_states(cfg) + OPTIMIZER_SCRATCH) + frozen)   # + gradients, state
    maps = trunk_maps(s, cfg["width"])
    trunk = sum(n * (TRUNK_SAVED * a + (POOL_INDEX_BYTES if kind == "pool" else 0)) for n, kind in maps)
    side = s + 2 * CONV1_PAD - 2
    skips = sum(k * (-(-side // stride)) ** 2 for stride in SKIP_STRIDES[arch]) * a
    head = skips + LOSS_MAPS * 4 * k * ((s + HEAD_MARGIN) ** 2 + s * s)
    return int(RUNTIME_BYTES[device_kind] + weights + batch * (trunk + head))


def loader_bytes(cfg: dict) -> int:
    """RAM of the batches the training loader holds at once: float32 lightness (S x S) and
    target posteriors (K x s x s, s = S / img_lowpass) per image (train/data.py)."""
    s, target = cfg["im_size"], cfg["im_size"] // cfg["img_lowpass"]
    return int(LOADER_PREFETCH * cfg["batch_size"] * 4 * (s * s + cfg["n_clusters"] * target * target))


# -------------------------------------------------------------------------- shards and the GMM
SHARD_IMAGES = 4               # a shard holds at most 4 x shard_size images (pipeline/plan.py)
POSTERIOR_BYTES = 2            # float16 posteriors
LABEL_BATCH_MAPS = 6           # float32 K x s x s maps alive per image of a LABEL_BATCH batch
SHARD_RUNTIME = 200 << 20      # python, numpy, h5py, PIL and one decoded source image


def lab_shard_bytes(cfg: dict) -> int:
    """Peak RAM building one Lab shard: its arrays, and the in-memory HDF5 copy of them."""
    return int(SHARD_RUNTIME + 2 * SHARD_IMAGES * cfg["shard_size"] * cfg["im_size"] ** 2 * LAB_BYTES_PER_PIXEL)


def label_shard_bytes(cfg: dict) -> int:
    """Peak RAM building one label shard: the (n, K, s, s) float16 posteriors twice, and one
    batch's float32 maps (s = im_size / img_lowpass)."""
    s, k = cfg["im_size"] // cfg["img_lowpass"], cfg["n_clusters"]
    posteriors = 2 * SHARD_IMAGES * cfg["shard_size"] * k * s * s * POSTERIOR_BYTES
    batch = LABEL_BATCH * (LABEL_BATCH_MAPS * 4 * k * s * s + 4 * 2 * cfg["im_size"] ** 2)
    return int(SHARD_RUNTIME + posteriors + batch)


def gmm_fit_bytes(cfg: dict) -> int:
    """Peak RAM of the soft-binning GMM fit: N float64 (hue, chroma) samples and ~3 N x K
    float64 arrays (log densities, responsibilities, k-means distances); N as
    pipeline.preprocess.gmm_features samples (per-image counts capped by the image's pixels)."""
    if cfg["binning"] != "soft":
        return 0
    pixels = cfg["im_size"] ** 2
    n = max(cfg["gmm_images"] * min(cfg["gmm_pixels"], pixels),
            min(cfg["gmm_images"], 99) * min(cfg["gmm_pixels_few"], pixels))
    return int(SHARD_RUNTIME + n * (2 * 8 * 2 + 3 * 8 * cfg["n_clusters"]))


def shard_needs(cfg: dict) -> list:
    """[Need] of the preprocessing: one Lab shard, one label shard, the GMM fit (RAM)."""
    return [Need("building a Lab shard", lab_shard_bytes(cfg), "ram"),
            Need("building a label shard", label_shard_bytes(cfg), "ram"),
            Need("the GMM fit", gmm_fit_bytes(cfg), "ram")]


def training_needs(cfg: dict, arch: str, device_kind: str) -> list:
    """[Need] of training `arch` on 'cpu' (the step and the loader's batches in RAM) or 'cuda'
    (the step in the GPU's memory, the loader's batches in RAM)."""
    if device_kind == "cuda":
        return [Need("the training loader's batches", loader_bytes(cfg), "ram"),
                Need(f"a training step of {arch}", training_step_bytes(cfg, arch, "cuda"), "device")]
    return [Need(f"a training step of {arch}", training_step_bytes(cfg, arch, "cpu") + loader_bytes(cfg), "ram")]


# -------------------------------------------------------------------------- this machine
@dataclass(frozen=True)
class Machine:
    ram: int                 # bytes of RAM this process may use (cgroup limit or physical)
    device: int = None       # bytes of the training GPU's memory; None: training runs on the CPU
    device_name: str = ""

    @property
    def device_kind(self) -> str:
        return "cuda" if self.device else "cpu"


def ram_bytes() -> int:
    """Physical RAM, or the cgroup's memory limit when lower (containers)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


@lru_cache(maxsize=None)
def gpu_memory() -> tuple:
    """(index, bytes) of every NVIDIA GPU, read with nvidia-smi (torch is not imported here);
    () without nvidia-smi or GPUs."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        rows = [line.split(",") for line in out.splitlines() if line.strip()]
        return tuple((int(i), int(float(mib)) << 20) for i, mib in rows)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ()


def machine_memory(device: str = "auto", gpus=None) -> Machine:
    """What a run with luigi.cfg's `device` (auto, cpu, cuda, cuda:N) trains in.  'auto' and
    'cuda' train on a GPU when nvidia-smi lists one (as torch picks CUDA when it is available):
    the first one CUDA_VISIBLE_DEVICES shows, or GPU N for cuda:N; without a GPU the run trains
    on the CPU (models.device falls back to it) and the step's figure is compared with RAM."""
    gpus = dict(gpu_memory() if gpus is None else gpus)
    if device == "cpu" or not gpus:
        return Machine(ram_bytes())
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    order = [int(v) for v in visible if v.isdigit()] if visible else sorted(gpus)
    wanted = int(device.split(":")[1]) if ":" in device else 0
    if wanted < len(order) and order[wanted] in gpus:
        return Machine(ram_bytes(), gpus[order[wanted]], f"GPU {order[wanted]}")
    return Machine(ram_bytes(), min(gpus.values()), "the smallest GPU")     # UUIDs or unknown index


# -------------------------------------------------------------------------- the verdict
def gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def verdict(found, machine: Machine, where: str) -> list:
    """ConfigError (one line) naming the first need that does not fit `machine`; else one
    warning line per need above LARGE of its memory."""
    warnings = []
    for need in found:
        total, name = ((machine.device, f"{machine.device_name} memory") if need.where == "device"
                       else (machine.ram, "RAM"))
        if need.bytes > total:
            raise ConfigError(f"{where}: {need.what} needs about {gb(need.bytes)}, more than this "
                              f"machine's {gb(total)} of {name}; lower {_knobs(need.what)}")
        if need.bytes > LARGE * total:
            warnings.append(f"{where}: {need.what} needs about {gb(need.bytes)}, "
                            f"{math.floor(100 * need.bytes / total)}% of this machine's {gb(total)} of {name}")
    return warnings


def _knobs(what: str) -> str:
    if "training" in what:
        return "batch_size, im_size, width or n_clusters"
    if "GMM" in what:
        return "gmm_images, gmm_pixels or gmm_pixels_few"
    return "shard_size, im_size or n_clusters, or raise img_lowpass" if "label" in what else "shard_size or im_size"
