"""Numbered experiment configs: the one source of experiment settings.

SCHEMA declares every key once: its type, default, allowed values and what it
means.  The same checks run on the numbered configs and on --overrides, so
every bad value is a one-line ConfigError naming the key and the value.

Numbers 7, 14 and 15 hold the original research code's config dicts of those
numbers; 37, 44 and 45 are its README's runs of 7, 14 and 15 as they ran (older
commits: best model by validation mean IoU, BatchNorm gamma U(0, 1), ...) as far
as this project's shards allow (README "Differences from the original" lists
what still differs); 32-34 are 14, 15 and 7 with this project's improvements;
100+ are small CPU configs for the demo and the tests.  Machine settings (paths, workers, device) live in
luigi.cfg, not here.  `resolve_config(n, overrides)` is what every task uses;
`parse_overrides(text)` turns a command line's --overrides into a checked dict.
"""
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

from .splits import _SPLIT_RE


class ConfigError(ValueError):
    pass


# ----------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """An allowed-values check and how to say it ('in [1, 4096]', "one of 'adam', 'sgd'").
    bounded: the rule has an upper limit; every number key needs one (a value no run can
    reach must fail here, not after hours of preprocessing): tests/test_config.py checks it.
    text may be a function, for rules whose wording is only known later (config numbers)."""
    text: object
    ok: Callable[[object], bool]
    bounded: bool = True


def at_least(lo):
    return Rule(f">= {lo}", lambda v: v >= lo, bounded=False)


def above(lo):
    return Rule(f"> {lo}", lambda v: v > lo, bounded=False)


def within(lo, hi, lo_open=False, hi_open=False):
    """lo <= v <= hi, '[lo, hi]'; an open end excludes its limit, written '(lo' or 'hi)'."""
    def ok(v):
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    return Rule(f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}", ok)


def one_of(*choices):
    return Rule("one of " + ", ".join(map(repr, choices)), lambda v: v in choices)


def text_of_at_most(n, what):
    """A string of at most n characters that `what` accepts (a Rule), e.g. a split name."""
    return Rule(f"{what.text or 'a string'} of at most {n} characters", lambda v: len(v) <= n and what.ok(v))


ANY = Rule("", lambda v: True, bounded=False)
# files_<split>.txt must stay a valid file name (255 bytes on common file systems)
SPLIT_NAME = text_of_at_most(100, Rule("a split name (letters, digits, '_', '-')",
                                       lambda v: bool(_SPLIT_RE.match(v))))
SEED = within(0, 2 ** 32 - 1)          # numpy and sklearn seeds are uint32
# a config number: CONFIGS is defined below, so the rule looks it up when used
CONFIG_NUMBER = Rule(lambda: f"among the configs {sorted(CONFIGS)}", lambda v: v in CONFIGS)


@dataclass(frozen=True)
class Key:
    """One config key: Python type (int, float, bool or str), default, allowed values, meaning.

    Types are strict, as JSON spells them: a bool key takes true/false only (not 1),
    an int key takes integers only (not 1.5 or 1e5); a float key also takes integers
    (stored as float).  optional=True also allows None (JSON null)."""
    type: type
    default: object
    rule: Rule
    doc: str
    optional: bool = False


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_value(name: str, value, where: str):
    """The value to store for key `name` (ints widened to float for float keys), or a
    ConfigError naming `where` (e.g. 'config 14', 'overrides'), the key and the value."""
    if name not in SCHEMA:
        close = difflib.get_close_matches(str(name), SCHEMA, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown config key {_short(name)}{hint}; valid keys: {sorted(SCHEMA)}")
    key = SCHEMA[name]
    if value is None and key.optional:
        return None
    given = value
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2 ** 1000 else math.inf   # inf fails below
    # bool is a subclass of int: type(...) is, not isinstance, keeps true out of int keys
    if type(value) is not key.type or (key.type is float and not math.isfinite(value)) \
            or not key.rule.ok(value):
        raise ConfigError(f"{where}: {name} must be {_wanted(key)}, got {_short(given)}")
    return value


def _wanted(key: Key) -> str:
    """'an integer in [1, 4096]', "one of 'adam', 'sgd'", 'an integer or null', ..."""
    text = key.rule.text() if callable(key.rule.text) else key.rule.text
    words = [text] if key.type is str and text else [_TYPE_WORDS[key.type], text]
    return " ".join(filter(None, words + ["or null" if key.optional else ""]))


def check_values(values: Mapping, where: str) -> dict:
    """check_value on every item of `values`; returns the checked dict."""
    return {name: check_value(name, value, where) for name, value in values.items()}


# ----------------------------------------------------------------------------- schema
# Most DEFAULTS are the original's behaviour (SGD, no flips, loss averaged over K ...), so a
# numbered config reads like the original's config dict, and the meaning of 7/14/15 cannot
# drift when such a default is "improved"; configs that want the improvements (32-34, 101,
# 102) say so explicitly.  Not the original's: val_split 'val' (its default was 'small'),
# n_clusters 16 (its command line's default was 32), seed (it seeded torch only, with 1337),
# best_by 'val_loss' and bn_gamma_init 'one' (its runs: 'mean_iou' and 'uniform'; the
# as-run configs 37/44/45 set them).
SCHEMA = dict(
    # -- data / labels (these decide which label shards are used; equal values share shards)
    # <= 4096: a 4K-wide photo's side; a width-1/16 FCN-32s step at batch 1 needs ~8 GB there
    # (pipeline/memory.py says what fits this machine)
    im_size=Key(int, 256, within(1, 4096), "network input side in pixels (shorter side resized, centre crop)"),
    # <= 65536: a shard holds up to 4x this: 262144 images of 32 px take ~3.4 GB to write (pipeline/memory.py)
    shard_size=Key(int, 256, within(1, 65_536), "expected images per HDF5 shard (content-defined boundaries)"),
    binning=Key(str, "soft", one_of("soft", "uniform"),
                "'soft': GMM fitted on hue/chroma; 'uniform': fixed sqrt(K) x sqrt(K) grid (pipeline.gmm)"),
    # <= 1024: 3x Zhang et al.'s 313 bins, a 32 x 32 uniform grid; each is a score map per pixel
    n_clusters=Key(int, 16, within(2, 1024), "K, colour clusters (uniform binning: a square >= 4)"),
    # <= 64: twice FCN-32s's output stride, beyond which the targets hold no more detail to learn
    img_lowpass=Key(int, 1, within(1, 64),
                    "f: targets blurred with sigma f and stored at im_size / f (1 = no low-pass, "
                    "as the original without img_lowpass)"),
    # sample sizes: <= 2M images (ImageNet's 1.28M train images all fit), <= 65536 pixels per
    # image (all of a 256 px image); the sample's memory is estimated (pipeline/memory.py)
    gmm_images=Key(int, 5000, within(1, 2_000_000), "images sampled for the GMM fit ..."),
    gmm_pixels=Key(int, 20, within(1, 65_536), "... pixels per image for the GMM fit ..."),
    gmm_pixels_few=Key(int, 1000, within(1, 65_536), "... or this many when fewer than 100 images are available"),
    gmm_seed=Key(int, 0, SEED, "GaussianMixture random_state and pixel sampling seed"),
    # <= 1e8 (400 MB of float32): the mean's standard error is then ~0.003 L units; more cannot change it
    mean_pixels=Key(int, 50_000, within(1, 100_000_000),
                    "pixels sampled (from up to 1000 images) to estimate the mean lightness; "
                    "the original: 1000 images x 50 pixels"),
    train_split=Key(str, "train", SPLIT_NAME, "split list used for training, GMM and mean lightness"),
    val_split=Key(str, "val", SPLIT_NAME, "split list used for validation"),
    # -- model
    # <= 4: 16x VGG16's parameters (2.2 G; a 256 px step with Adam ~50 GB), what one 80 GB GPU holds
    width=Key(float, 1.0, within(0, 4, lo_open=True), "channel multiplier of the VGG16 trunk; 1.0 = real VGG16 layout"),
    vgg_weights=Key(str, "", text_of_at_most(4096, ANY),       # 4096: PATH_MAX
                    "optional local torchvision vgg16_bn state_dict to start the trunk from"),
    # -- optimisation
    optim=Key(str, "sgd", one_of("adam", "sgd"),
              "optimiser; the original used SGD unless a config said optim='adam'"),
    # <= 1: Adam moves each weight by ~lr per step, and SGD's steps at lr > 1 outgrow the gradient
    lr=Key(float, 1e-6, within(0, 1, lo_open=True), "learning rate"),
    momentum=Key(float, 0.9, within(0, 1, hi_open=True), "SGD momentum (unused by Adam)"),
    # <= 1: a decay of 1 pulls as hard as a unit gradient; the usual values are 1e-4 to 5e-4
    weight_decay=Key(float, 5e-4, within(0, 1), "L2 weight decay (added to the gradient, as torch Adam/SGD)"),
    # <= 65536: the largest batches trained with (large-batch ImageNet runs: 8k-64k, many GPUs)
    batch_size=Key(int, 1, within(1, 65_536), "images per step (the global batch when distributed)"),
    # <= 10M steps: ~6 days at 20 steps/s (the tiny configs on a GPU); the original ran 100k
    max_iteration=Key(int, 100_000, within(1, 10_000_000), "optimiser steps in total"),
    interval_validate=Key(int, 50, within(1, 10_000_000), "validate + checkpoint every this many steps"),
    flip=Key(bool, False, ANY, "random horizontal flips of input and target together (the original: none)"),
    kl_reduction=Key(str, "mean_k", one_of("mean_k", "sum_k"),
                     "loss scale: 'sum_k' = per-pixel KL summed over the K clusters, mean over pixels "
                     "and images; 'mean_k' = that / K, the original's F.kl_div(size_average=True) "
                     "(mean over batch, K, H, W), which also makes weight decay K times stronger "
                     "relative to the data term"),
    rebalance=Key(float, 0.0, within(0, 1), "class rebalancing lambda (0 = off; Zhang et al. use 0.5)"),
    seed=Key(int, 0, SEED, "torch / numpy / loader seed, set once per run"),
    # -- arithmetic (the same model up to rounding; 'auto' picks what suits the device)
    precision=Key(str, "auto", one_of("auto", "fp32", "bf16"),
                  "network arithmetic in training and validation: 'bf16' = bf16 autocast (losses "
                  "and optimiser state stay float32), 'fp32', 'auto' = bf16 on CUDA, fp32 on the CPU"),
    channels_last=Key(str, "auto", one_of("auto", "on", "off"),
                      "images and weights in channels-last memory layout (faster convolutions on "
                      "GPUs): 'on', 'off', 'auto' = on CUDA only"),
    shuffle=Key(bool, True, ANY, "shuffle the training images every epoch (false: the split list's "
                                 "order, as the original's config-7 run)"),
    best_by=Key(str, "val_loss", one_of("val_loss", "mean_iou"),
                "which validation best.pt keeps: 'val_loss' the lowest validation loss, 'mean_iou' "
                "the highest validation mean IoU (the original's runs; train.best)"),
    bn_gamma_init=Key(str, "one", one_of("one", "uniform"),
                      "BatchNorm scale (gamma) at initialisation: 'one' (today's PyTorch), 'uniform' "
                      "U(0, 1) (the PyTorch 0.3 of the original's runs; models.fcn.init_bn_gamma)"),
    init_config=Key(int, None, CONFIG_NUMBER, "FCN-16s/8s: config number of the coarser run to start from "
                                    "(null = the same config)", optional=True),
)

DEFAULTS = {name: key.default for name, key in SCHEMA.items()}

# ----------------------------------------------------------------------------- configs
# The original's experiments.  Its configs 0-31 kept their numbers; only these three
# are reproduced (README "Experiment configs").
_ORIGINAL_7 = dict(                 # tiny over-fit: 9 images, validated on the same 9
    train_split="tiny", val_split="tiny", binning="soft", n_clusters=32, img_lowpass=1,
    optim="sgd", lr=1e-8, momentum=0.9, weight_decay=5e-4, max_iteration=10_000,
    interval_validate=50, flip=False, kl_reduction="mean_k")
_ORIGINAL_14 = dict(                # FCN-32s on the full train list, 8x low-pass targets
    train_split="train", val_split="small", im_size=256, binning="soft", n_clusters=16,
    img_lowpass=8, optim="adam", lr=1e-6, momentum=0.8, weight_decay=5e-4,
    max_iteration=100_000, interval_validate=50, flip=False, kl_reduction="mean_k")

# This project's improvements on top of them (not re-tuned at full scale):
# - kl_reduction 'sum_k': the loss is the per-pixel KL in nats (K times the original's),
#   so weight decay 5e-4 weighs K times less against the data term.  (Neither reduction is
#   the FCN reference's weighting: it sums its cross-entropy over all pixels, unnormalised.)
# - flips (FCN-32s/16s): twice the distinct training inputs;
# - Adam for the tiny over-fit, at the lr of the original's own Adam debug configs
#   (9-11: 1e-4): SGD at lr 1e-8 on a K-times-smaller loss barely moves.
_IMPROVED = dict(kl_reduction="sum_k")

# The original's README runs as they ran, as far as this project's shards allow (checked
# against its git history: 7 ran at commit 0cbf69f, 14 at db517d6, 15 at 8b659a0, all before
# its 256x256 resize c2dd224): best.pt by the highest validation mean IoU, BatchNorm gamma
# U(0, 1) (the PyTorch 0.3 of the time), 7 unshuffled, the GMM of 14 and 15 fitted on 1,000
# images x 20 pixels.  What still differs (500 px longer side there, Lab, precomputed
# targets, the fixes, 15's own unseeded GMM): README "Differences from the original".
# im_size 376: the original scaled the longer side to 500 px, aspect kept; ImageNet's usual
# 500 x 375 photo then has a 375 px shorter side, which 376 (a multiple of img_lowpass 8) keeps,
# so the sigma-8 target blur and the 32 px output stride cover the same share of the content
# (at 256 ~1.5x coarser for such photos, ~2x for square ones); the crop still drops the longer
# side's ends.  precision fp32: the original ran fp32 (no autocast existed then).
_AS_RUN = dict(best_by="mean_iou", bn_gamma_init="uniform", im_size=376, precision="fp32")

CONFIGS = {
    # 7: the original's tiny over-fit of 9 images, 32 soft bins, SGD.
    7: _ORIGINAL_7,
    # 14: the original's FCN-32s, 16 clusters, 8x low-pass targets, Adam.
    14: _ORIGINAL_14,
    # 15: the original's FCN-16s initialised from the best config-14 FCN-32s, same settings.
    15: dict(_ORIGINAL_14, init_config=14),
    # 32: improved FCN-32s: config 14 with flips and the loss summed over K.
    32: dict(_ORIGINAL_14, **_IMPROVED, flip=True),
    # 33: improved FCN-16s from the best config-32 FCN-32s, same settings.
    33: dict(_ORIGINAL_14, **_IMPROVED, flip=True, init_config=32),
    # 34: improved tiny over-fit: config 7 with Adam (lr 1e-4) and the loss summed over K;
    # no flips: it checks that 9 images can be memorised, and validates on them unflipped.
    34: dict(_ORIGINAL_7, **_IMPROVED, optim="adam", lr=1e-4),
    # 37: config 7 as its README run ran: unshuffled (the tiny list's order), best by mean IoU.
    37: dict(_ORIGINAL_7, **_AS_RUN, shuffle=False),
    # 44: config 14 as its README run ran: GMM on 1,000 images x 20 pixels, best by mean IoU.
    44: dict(_ORIGINAL_14, **_AS_RUN, gmm_images=1000),
    # 45: config 15 as its README run ran: FCN-16s from the best-IoU config-44 FCN-32s.  The
    # original refit its own unseeded GMM here (clusters not those of the FCN-32s it started
    # from); that cannot be reproduced with shared clusters: 45 uses 44's GMM.
    45: dict(_ORIGINAL_14, **_AS_RUN, gmm_images=1000, init_config=44),
    # 101: CPU demo on the bundled photos: over-fit a narrow network in minutes.  Like
    # config 7 it validates on its training photos (a sanity check that the model can
    # learn the targets); evaluate on 'val' for held-out numbers.  Sets every key whose
    # default is the original's behaviour, so its run does not change with the defaults.
    101: dict(im_size=96, shard_size=4, n_clusters=16, img_lowpass=4, width=0.25,
              optim="adam", lr=1e-3, weight_decay=0.0, batch_size=4, max_iteration=300,
              interval_validate=50, flip=True, kl_reduction="sum_k", mean_pixels=100_000,
              train_split="train", val_split="train"),
    # 102: tests: tiny images, tiny network, a few dozen steps (same explicit settings as 101).
    # (FCN-32s cannot resolve finer than ~8 px targets on 32 px images, hence low-pass 8)
    102: dict(im_size=32, shard_size=4, n_clusters=4, img_lowpass=8, width=1 / 16,
              optim="adam", lr=3e-3, weight_decay=0.0, batch_size=4, max_iteration=20,
              interval_validate=10, flip=True, kl_reduction="sum_k", gmm_pixels_few=200,
              mean_pixels=10_000),
}


# ----------------------------------------------------------------------------- resolving
def resolve_config(number, overrides=None) -> dict:
    """DEFAULTS <- CONFIGS[number] <- overrides, every value checked against SCHEMA and the
    combination by _check_combination; a plain dict with cfg["config"] = number."""
    try:
        number = int(number)
    except (TypeError, ValueError):
        raise ConfigError(f"config must be a number, got {number!r}; valid configs: {sorted(CONFIGS)}") from None
    if number not in CONFIGS:
        raise ConfigError(f"unknown config {number}; valid configs: {sorted(CONFIGS)}")
    overrides = dict(overrides or {})
    cfg = dict(DEFAULTS)
    cfg.update(check_values(CONFIGS[number], f"config {number}"))
    cfg.update(check_values(overrides, "overrides"))
    _check_combination(cfg, config_name(number, overrides))
    cfg["config"] = number
    return cfg


def config_name(number, overrides) -> str:
    """'config 14' or 'config 14 with overrides': where an error message says the problem is."""
    return f"config {number}" + (" with overrides" if overrides else "")


def _check_combination(cfg: dict, where: str) -> None:
    """Rules that involve more than one key."""
    k, side = cfg["n_clusters"], math.isqrt(cfg["n_clusters"])
    if cfg["binning"] == "uniform" and (side * side != k or side < 2):
        raise ConfigError(f"{where}: binning 'uniform' needs n_clusters a square >= 4 "
                          f"(a sqrt(K) x sqrt(K) grid), got n_clusters {k}")
    if cfg["im_size"] % cfg["img_lowpass"]:
        raise ConfigError(f"{where}: im_size {cfg['im_size']} must be a multiple of "
                          f"img_lowpass {cfg['img_lowpass']}")


def parse_overrides(value) -> dict:
    """--overrides as given (a JSON object string, a mapping, or None/'' for none) -> a
    checked dict; anything else is a one-line ConfigError.  Rules involving several keys
    (e.g. im_size a multiple of img_lowpass) need the config: resolve_config checks them."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as e:
            raise ConfigError(f"overrides {_short(value)} are not valid JSON ({e.msg} at column "
                              f"{e.colno}); write e.g. '{{\"lr\": 1e-5}}'") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"overrides must be a JSON object like '{{\"lr\": 1e-5}}', got "
                          f"{type(value).__name__} {_short(value)}")
    return check_values(value, "overrides")


def _no_duplicate_keys(pairs):
    seen = {}
    for name, v in pairs:
        if name in seen:
            raise ConfigError(f"overrides: key {name!r} given twice")
        seen[name] = v
    return seen


def _short(value, limit=200) -> str:
    """repr on one line, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
