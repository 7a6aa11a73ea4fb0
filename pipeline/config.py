"""Numbered experiment configs: the one source of experiment settings.

Numbers 7, 14 and 15 carry the original research code's values; 100+ are small
CPU configs for the demo and the tests.  Machine settings (paths, workers,
device) live in luigi.cfg, not here.  `resolve_config(n, overrides)` is what
every task uses; unknown numbers or keys are a one-line error listing the valid
ones.
"""
DEFAULTS = dict(
    # -- data / labels (these decide which label shards are used; equal values share shards)
    im_size=256,            # network input side in pixels (shorter side resized, centre crop)
    shard_size=256,         # expected images per HDF5 shard (content-defined boundaries)
    binning="soft",         # 'soft': GMM fitted on hue/chroma; 'uniform': fixed sqrt(K) x sqrt(K) grid
    n_clusters=16,          # K, colour clusters
    img_lowpass=8,          # f: targets blurred with sigma f and stored at im_size / f
    gmm_images=5000,        # images sampled for the GMM fit
    gmm_pixels=20,          # pixels per image for the GMM fit ...
    gmm_pixels_few=1000,    # ... or this many when fewer than 100 images are available
    gmm_seed=0,             # GaussianMixture random_state and pixel sampling seed
    mean_pixels=100_000,    # pixels sampled to estimate the mean lightness
    train_split="train",    # split list used for training, GMM and mean lightness
    val_split="val",        # split list used for validation
    # -- model
    width=1.0,              # channel multiplier of the VGG16 trunk; 1.0 = real VGG16 layout
    vgg_weights="",         # optional local torchvision vgg16_bn state_dict to start the trunk from
    # -- optimisation
    optim="adam",           # 'adam' or 'sgd'
    lr=1e-6,                # learning rate
    momentum=0.8,           # SGD momentum (unused by Adam, kept as in the original)
    weight_decay=5e-4,      # L2 weight decay
    batch_size=1,           # images per step
    max_iteration=100_000,  # optimiser steps in total
    interval_validate=50,   # validate + checkpoint every this many steps
    flip=True,              # random horizontal flips (input and target together)
    rebalance=0.0,          # class rebalancing lambda (0 = off; Zhang et al. use 0.5)
    seed=0,                 # torch / numpy / loader seed, set once per run
    init_config=None,       # FCN-16s: config number of the FCN-32s run to start from (None = same config)
)

CONFIGS = {
    # 7: tiny over-fit of 9 images, 32 soft bins.
    7: dict(train_split="tiny", val_split="tiny", n_clusters=32, img_lowpass=1, lr=1e-8,
            max_iteration=10_000, interval_validate=50),
    # 14: FCN-32s, 16 clusters, 8x low-pass targets, Adam.
    14: dict(n_clusters=16, img_lowpass=8, optim="adam", lr=1e-6, momentum=0.8,
             weight_decay=5e-4, max_iteration=100_000, interval_validate=50,
             train_split="train", val_split="small", im_size=256),
    # 15: FCN-16s initialised from the best config-14 FCN-32s, same settings.
    15: dict(n_clusters=16, img_lowpass=8, optim="adam", lr=1e-6, momentum=0.8,
             weight_decay=5e-4, max_iteration=100_000, interval_validate=50,
             train_split="train", val_split="small", im_size=256, init_config=14),
    # 101: CPU demo on the bundled photos: over-fit a narrow network in minutes.  Like
    # config 7 it validates on its training photos (a sanity check that the model can
    # learn the targets); evaluate on 'val' for held-out numbers.
    101: dict(im_size=96, shard_size=4, n_clusters=16, img_lowpass=4, width=0.25,
              lr=1e-3, weight_decay=0.0, batch_size=4, max_iteration=300,
              interval_validate=50, train_split="train", val_split="train"),
    # 102: tests: tiny images, tiny network, a few dozen steps.
    # (FCN-32s cannot resolve finer than ~8 px targets on 32 px images, hence low-pass 8)
    102: dict(im_size=32, shard_size=4, n_clusters=4, img_lowpass=8, width=1 / 16,
              lr=3e-3, weight_decay=0.0, batch_size=4, max_iteration=20,
              interval_validate=10, gmm_pixels_few=200, mean_pixels=10_000),
}


class ConfigError(ValueError):
    pass


def resolve_config(number, overrides=None) -> dict:
    """Defaults <- CONFIGS[number] <- overrides, with unknown numbers/keys rejected."""
    try:
        number = int(number)
    except (TypeError, ValueError):
        raise ConfigError(f"config must be a number, got {number!r}; valid: {sorted(CONFIGS)}") from None
    if number not in CONFIGS:
        raise ConfigError(f"unknown config {number}; valid configs: {sorted(CONFIGS)}")
    cfg = dict(DEFAULTS)
    for source in (CONFIGS[number], dict(overrides or {})):
        unknown = sorted(set(source) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(DEFAULTS)}")
        cfg.update(source)
    _check(cfg)
    cfg["config"] = number
    return cfg


def _check(cfg):
    if cfg["binning"] not in ("soft", "uniform"):
        raise ConfigError(f"binning must be 'soft' or 'uniform', got {cfg['binning']!r}")
    if cfg["binning"] == "uniform" and round(cfg["n_clusters"] ** 0.5) ** 2 != cfg["n_clusters"]:
        raise ConfigError(f"uniform binning needs a square n_clusters, got {cfg['n_clusters']}")
    if cfg["optim"] not in ("adam", "sgd"):
        raise ConfigError(f"optim must be 'adam' or 'sgd', got {cfg['optim']!r}")
    if cfg["im_size"] % cfg["img_lowpass"]:
        raise ConfigError(f"im_size {cfg['im_size']} must be a multiple of img_lowpass {cfg['img_lowpass']}")
    for key in ("im_size", "shard_size", "n_clusters", "img_lowpass", "batch_size",
                "max_iteration", "interval_validate"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")


# Config keys that decide the label shards (and GMM / mean lightness) a run uses.
LABEL_KEYS = ("im_size", "shard_size", "binning", "n_clusters", "img_lowpass", "gmm_images",
              "gmm_pixels", "gmm_pixels_few", "gmm_seed", "mean_pixels", "train_split", "val_split")
