"""Configs: the schema's one-line errors, --overrides parsing, the original's values, the uniform grid."""
import numpy as np
import pytest

from pipeline.color import ab_to_hue_chroma
from pipeline.config import (ANY, CONFIGS, DEFAULTS, SCHEMA, ConfigError, Key, above, at_least, one_of,
                             parse_overrides, resolve_config, within)
from pipeline.gmm import posteriors, uniform_grid


def _one_line_error(fn, *args, match):
    with pytest.raises(ConfigError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("overrides, match", [
    ({"lr": -1}, r"overrides: lr must be a number in \(0, 1\], got -1$"),
    ({"lr": "fast"}, r"lr must be a number in \(0, 1\], got 'fast'$"),
    ({"lr": float("nan")}, r"lr must be a number in \(0, 1\], got nan$"),
    ({"rebalance": 2}, r"rebalance must be a number in \[0, 1\], got 2$"),
    ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1\.0$"),
    ({"gmm_images": 0}, r"gmm_images must be an integer in \[1, 2000000\], got 0$"),
    ({"n_clusters": 1}, r"n_clusters must be an integer in \[2, 1024\], got 1$"),
    ({"width": 0}, r"width must be a number in \(0, 4\], got 0$"),
    ({"img_lowpass": 0}, r"img_lowpass must be an integer in \[1, 64\], got 0$"),
    ({"flip": 1}, r"flip must be true or false, got 1$"),
    ({"max_iteration": 1.5}, r"max_iteration must be an integer in \[1, 10000000\], got 1\.5$"),
    ({"max_iteration": True}, r"max_iteration must be an integer in \[1, 10000000\], got True$"),
    ({"batch_size": "4"}, r"batch_size must be an integer in \[1, 65536\], got '4'$"),
    ({"optim": "Adam"}, r"optim must be one of 'adam', 'sgd', got 'Adam'$"),
    ({"kl_reduction": "mean"}, r"kl_reduction must be one of 'mean_k', 'sum_k', got 'mean'$"),
    ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\], got -1$"),
    ({"val_split": "../x"}, r"val_split must be a split name .* of at most 100 characters, got '../x'$"),
    ({"init_config": "14"}, r"init_config must be an integer among the configs .* or null, got '14'$"),
    ({"init_config": 3}, r"overrides: init_config must be an integer among the configs \[7, 14, .*\] or null, got 3$"),
    ({"lrate": 1e-5}, r"overrides: unknown config key 'lrate' \(did you mean 'lr'\?\); valid keys"),
    ({"binning": "uniform", "n_clusters": 15}, r"binning 'uniform' needs n_clusters a square >= 4.*got n_clusters 15"),
    ({"im_size": 100}, r"config 14 with overrides: im_size 100 must be a multiple of img_lowpass 8"),
])
def test_every_bad_value_is_a_one_line_error_naming_key_and_value(overrides, match):
    _one_line_error(resolve_config, 14, overrides, match=match)


# The values issue 16 found accepted: each would have failed only after work, or never ended.
@pytest.mark.parametrize("overrides, match", [
    ({"width": 1000}, r"overrides: width must be a number in \(0, 4\], got 1000$"),
    ({"width": 1e308}, r"overrides: width must be a number in \(0, 4\], got 1e\+308$"),
    ({"im_size": 40000}, r"overrides: im_size must be an integer in \[1, 4096\], got 40000$"),
    ({"n_clusters": 1e9}, r"overrides: n_clusters must be an integer in \[2, 1024\], got 1000000000\.0$"),
    ({"n_clusters": 10 ** 9}, r"overrides: n_clusters must be an integer in \[2, 1024\], got 1000000000$"),
    ({"batch_size": 10 ** 12}, r"overrides: batch_size must be an integer in \[1, 65536\], got 1000000000000$"),
    ({"max_iteration": 10 ** 29}, r"overrides: max_iteration must be an integer in \[1, 10000000\], got 10{29}$"),
    ({"interval_validate": 10 ** 8}, r"interval_validate must be an integer in \[1, 10000000\], got 100000000$"),
    ({"shard_size": 65_537}, r"shard_size must be an integer in \[1, 65536\], got 65537$"),
    ({"img_lowpass": 128}, r"img_lowpass must be an integer in \[1, 64\], got 128$"),
    ({"gmm_images": 2_000_001}, r"gmm_images must be an integer in \[1, 2000000\], got 2000001$"),
    ({"gmm_pixels": 65_537}, r"gmm_pixels must be an integer in \[1, 65536\], got 65537$"),
    ({"gmm_pixels_few": 10 ** 6}, r"gmm_pixels_few must be an integer in \[1, 65536\], got 1000000$"),
    ({"mean_pixels": 10 ** 9}, r"mean_pixels must be an integer in \[1, 100000000\], got 1000000000$"),
    ({"lr": 1.5}, r"lr must be a number in \(0, 1\], got 1\.5$"),
    ({"weight_decay": 2}, r"weight_decay must be a number in \[0, 1\], got 2$"),
    ({"seed": 2 ** 32}, r"seed must be an integer in \[0, 4294967295\], got 4294967296$"),
    ({"vgg_weights": "w" * 4097}, r"vgg_weights must be a string of at most 4096 characters, got 'www"),
    ({"train_split": "s" * 101}, r"train_split must be a split name .* of at most 100 characters, got 'sss"),
])
def test_values_above_the_upper_bound_are_refused(overrides, match):
    _one_line_error(resolve_config, 14, overrides, match=match)


def test_the_upper_bounds_themselves_are_accepted():
    cfg = resolve_config(14, {"width": 4, "im_size": 4096, "n_clusters": 1024, "batch_size": 65_536,
                              "max_iteration": 10_000_000, "shard_size": 65_536, "img_lowpass": 64, "lr": 1,
                              "gmm_images": 2_000_000, "mean_pixels": 100_000_000, "vgg_weights": "w" * 4096})
    assert (cfg["width"], cfg["im_size"], cfg["max_iteration"]) == (4.0, 4096, 10_000_000)


def unbounded_keys(schema) -> list:
    """Keys whose values have no upper limit: numbers without one, strings of any length."""
    return [name for name, key in schema.items() if key.type is not bool and not key.rule.bounded]


def test_every_key_has_an_upper_bound():
    # a new key needs one too: at_least / above / ANY leave numbers and strings unbounded
    assert unbounded_keys(SCHEMA) == []
    probe = {"n": Key(int, 1, at_least(1), ""), "x": Key(float, 1.0, above(0), ""), "s": Key(str, "", ANY, ""),
             "b": Key(bool, False, ANY, ""), "k": Key(int, 1, within(1, 9), ""), "o": Key(str, "a", one_of("a"), "")}
    assert unbounded_keys(probe) == ["n", "x", "s"]


def test_accepted_values_are_normalised():
    cfg = resolve_config(14, {"lr": 1, "weight_decay": 0, "init_config": None, "binning": "uniform",
                              "n_clusters": 9})
    assert cfg["lr"] == 1.0 and type(cfg["lr"]) is float and type(cfg["weight_decay"]) is float
    assert cfg["config"] == 14 and type(cfg) is dict and set(cfg) == set(SCHEMA) | {"config"}


@pytest.mark.parametrize("number", sorted(CONFIGS))
def test_every_config_resolves(number):
    cfg = resolve_config(number)
    assert cfg["config"] == number
    if cfg["init_config"] is not None:
        assert resolve_config(cfg["init_config"])["init_config"] is None   # a FCN-32s run to start from


def test_unknown_config_number():
    _one_line_error(resolve_config, 999, match=r"unknown config 999; valid configs: \[7, 14, 15, ")
    _one_line_error(resolve_config, "x", match=r"config must be a number, got 'x'")


@pytest.mark.parametrize("text, match", [
    ("{lr: 1e-5}", r"overrides '\{lr: 1e-5\}' are not valid JSON \(Expecting property name.* at column 2\)"),
    ('{"lr": 1e-5,}', r"not valid JSON"),
    ("[1, 2]", r"overrides must be a JSON object like .*, got list \[1, 2\]"),
    ('"lr"', r"got str 'lr'"),
    ("5", r"got int 5"),
    ('{"lr": 1, "lr": 2}', r"overrides: key 'lr' given twice"),
    ('{"lr": -1}', r"overrides: lr must be a number in \(0, 1\], got -1$"),
    ('{"flip": 1}', r"flip must be true or false, got 1$"),
    ('{"lr": 1e-5,\n "nope": 1}', r"unknown config key 'nope'"),
])
def test_parse_overrides_rejects_with_one_line(text, match):
    _one_line_error(parse_overrides, text, match=match)


def test_parse_overrides_accepts_json_or_mapping():
    assert parse_overrides('{"lr": 1e-5, "flip": true, "max_iteration": 10}') == \
        {"lr": 1e-5, "flip": True, "max_iteration": 10}
    assert parse_overrides({"weight_decay": 0}) == {"weight_decay": 0.0}
    assert parse_overrides("") == parse_overrides(None) == parse_overrides("{}") == {}
    _one_line_error(parse_overrides, 3, match="got int 3")


@pytest.mark.parametrize("number, optim, lr, momentum", [(7, "sgd", 1e-8, 0.9), (14, "adam", 1e-6, 0.8),
                                                          (15, "adam", 1e-6, 0.8)])
def test_original_configs_match_the_original(number, optim, lr, momentum):
    cfg = resolve_config(number)
    assert (cfg["optim"], cfg["lr"], cfg["momentum"], cfg["weight_decay"]) == (optim, lr, momentum, 5e-4)
    assert cfg["flip"] is False and cfg["kl_reduction"] == "mean_k" and cfg["batch_size"] == 1
    assert cfg["binning"] == "soft" and cfg["rebalance"] == 0
    assert (cfg["gmm_images"], cfg["gmm_pixels"], cfg["gmm_pixels_few"], cfg["gmm_seed"]) == (5000, 20, 1000, 0)
    assert cfg["mean_pixels"] == 1000 * 50
    expected = {7: dict(n_clusters=32, img_lowpass=1, max_iteration=10_000, train_split="tiny", val_split="tiny"),
                14: dict(n_clusters=16, img_lowpass=8, max_iteration=100_000, im_size=256, val_split="small"),
                15: dict(n_clusters=16, img_lowpass=8, init_config=14)}[number]
    assert {k: cfg[k] for k in expected} == expected and cfg["interval_validate"] == 50


def test_improved_configs_differ_only_in_the_improvements():
    def diff(a, b):
        return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "config"}
    assert diff(resolve_config(14), resolve_config(32)) == {"flip": (False, True), "kl_reduction": ("mean_k", "sum_k")}
    assert diff(resolve_config(32), resolve_config(33)) == {"init_config": (None, 32)}
    assert diff(resolve_config(7), resolve_config(34)) == {"optim": ("sgd", "adam"), "lr": (1e-8, 1e-4),
                                                          "kl_reduction": ("mean_k", "sum_k")}


def test_demo_and_test_configs_do_not_follow_the_defaults():
    for number in (101, 102):
        cfg = CONFIGS[number]
        assert (cfg["optim"], cfg["flip"], cfg["kl_reduction"]) == ("adam", True, "sum_k")
        assert cfg["mean_pixels"] != DEFAULTS["mean_pixels"]


def test_uniform_grid_is_the_originals_linspace():
    g = uniform_grid(16)
    axis = np.linspace(0, 1, 4)
    np.testing.assert_allclose(g["means"][:, 0], np.tile(axis, 4))      # hue varies fastest
    np.testing.assert_allclose(g["means"][:, 1], np.repeat(axis, 4))
    np.testing.assert_allclose(g["covariances"], np.tile(np.eye(2) * (1 / 3) ** 2 / 2, (16, 1, 1)))
    # gray pixels (a = b = 0) belong to a chroma-0 centre; the most saturated sRGB blue
    # (chroma/128 ~ 1.05) to a chroma-1 centre: the grid spans the feature range
    gray, blue = ab_to_hue_chroma([0.0, 79.2], [0.0, -107.9])
    p = posteriors(np.stack([gray, blue]), g)
    assert g["means"][p[0].argmax(), 1] == 0 and g["means"][p[1].argmax(), 1] == 1
    with pytest.raises(ValueError, match="square number of clusters >= 4"):
        uniform_grid(1)
