"""Tests for audiossl.config: precedence, strictness, round trips, window checks."""

from __future__ import annotations

import typing

import pytest

from audiossl.config import (
    PRESETS,
    Config,
    ConfigError,
    build_config,
    build_settings,
    check_window,
    fields_by_key,
    parse_overrides,
    settings_help,
    validate,
)


def test_defaults_are_valid():
    cfg = build_config()
    validate(Config())
    assert cfg == Config()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid(preset):
    cfg = build_config(overrides={"preset": preset})
    for key, value in PRESETS[preset].items():
        assert cfg.flat()[key] == value


def test_precedence_preset_file_overrides(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("preset: cpc_small\nencoder_channels: 32\nlr: 0.01\ncontext: lstm\n")
    cfg = build_config(path, parse_overrides(["lr=0.5", "cpc_steps=4"]))
    assert cfg.model.context_dim == PRESETS["cpc_small"]["context_dim"]  # preset alone
    assert cfg.model.encoder_channels == 32  # file beats preset
    assert cfg.objective.cpc_steps == 4  # override beats preset
    assert cfg.train.lr == 0.5  # override beats file
    assert cfg.model.context == "lstm"  # file alone
    assert cfg.train.batch_size == Config().train.batch_size  # default


def test_overrides_are_coerced_from_strings():
    cfg = build_config(overrides=parse_overrides(
        ["encoder_kernels=3,3", "encoder_strides=2 2", "encoder_paddings=1,1", "cmvn=yes", "context-dim=32"]))
    assert cfg.model.encoder_kernels == [3, 3]
    assert cfg.model.encoder_strides == [2, 2]
    assert cfg.model.cmvn is True
    assert cfg.model.context_dim == 32


def test_yaml_values_are_coerced(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("lr: 1e-3\ncmvn: yes\nencoder_kernels: [3, 3]\nencoder_strides: [1, 2]\n"
                    "encoder_paddings: [0, 0]\ncpc_temperature: 1\n")
    cfg = build_config(path)
    assert cfg.train.lr == 0.001  # PyYAML reads 1e-3 as a string
    assert cfg.model.cmvn is True
    assert cfg.model.encoder_strides == [1, 2]
    assert isinstance(cfg.objective.cpc_temperature, float)


@pytest.mark.parametrize("overrides, key", [
    ({"no_such_key": 1}, "no_such_key"),
    ({"batch_size": "eight"}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"lr": "fast"}, "lr"),
    ({"cmvn": "maybe"}, "cmvn"),
    ({"encoder_kernels": "10 x"}, "encoder_kernels"),
    ({"frontend": 3}, "frontend"),
    ({"context": "rnn"}, "context"),
    ({"sampler": "random"}, "sampler"),
    ({"cpc_score": "dot"}, "cpc_score"),
    ({"precision": "fp16"}, "precision"),
    ({"batch_size": 0}, "batch_size"),
    ({"preset": "huge"}, "huge"),
])
def test_bad_settings_raise_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        build_config(overrides=overrides)
    message = str(error.value)
    assert key in message
    assert "\n" not in message


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text("lr: 0.001\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        build_config(path)


@pytest.mark.parametrize("text", ["model:\n  context: gru\n", "- a\n- b\n", "lr: [1, 2\n"])
def test_malformed_file_names_the_file(tmp_path, text):
    path = tmp_path / "conf.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="conf.yaml"):
        build_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        build_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("item", ["lr", "=3", ""])
def test_malformed_override(item):
    with pytest.raises(ConfigError):
        parse_overrides([item])


def test_round_trip_through_dict():
    cfg = build_config(overrides={"preset": "cpc_small", "context": "transformer", "context_heads": 2,
                                  "encoder_kernels": [4, 4], "encoder_strides": [2, 2],
                                  "encoder_paddings": [0, 0], "cmvn": True, "cpc_temperature": 0.5})
    again = Config.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert set(cfg.flat()) == {k for section in cfg.to_dict().values() for k in section}


def test_from_dict_refuses_unknown_keys():
    nested = Config().to_dict()
    nested["model"]["old_option"] = 1
    with pytest.raises(ConfigError, match="old_option"):
        Config.from_dict(nested)


def test_check_window_accepts_the_default():
    cfg = Config()
    check_window(cfg, num_frames=128, receptive_field=465)


def test_check_window_refuses_window_shorter_than_receptive_field():
    cfg = build_config(overrides={"window_samples": 400})
    with pytest.raises(ConfigError, match="receptive field"):
        check_window(cfg, num_frames=2, receptive_field=465)


def test_check_window_refuses_too_few_frames_for_the_steps():
    cfg = build_config(overrides={"window_samples": 1600, "cpc_steps": 12})
    with pytest.raises(ConfigError, match="cpc_steps"):
        check_window(cfg, num_frames=10, receptive_field=465)


@pytest.mark.parametrize("policy, negatives, ok", [
    ("sequence", 19, True), ("sequence", 20, False), ("batch", 79, True), ("batch", 80, False)])
def test_check_window_counts_negative_candidates(policy, negatives, ok):
    cfg = build_config(overrides={"window_samples": 3200, "cpc_steps": 3, "cpc_negatives": negatives,
                                  "cpc_negative_policy": policy, "batch_size": 4})
    if ok:
        check_window(cfg, num_frames=20, receptive_field=465)
    else:
        with pytest.raises(ConfigError, match="cpc_negatives"):
            check_window(cfg, num_frames=20, receptive_field=465)


def test_probe_settings_read_like_training_config(tmp_path):
    from audiossl.probes.abx.item_files import ItemABXSettings
    from audiossl.probes.classify import DEFAULT_SETTINGS
    from audiossl.probes.ctc.probe import DEFAULT_LR, CTCSettings
    from audiossl.probes.linear import ProbeSettings

    path = tmp_path / "probe.yaml"
    path.write_text("epochs: 7\nlr: 0.002\nhidden: 64\n")
    settings = build_settings(ProbeSettings, path, {"epochs": "9"}, base=DEFAULT_SETTINGS["speaker"])
    # the command line wins over the file, the file over the task's defaults, which win over the class's
    assert (settings.epochs, settings.lr, settings.hidden) == (9, 0.002, 64)
    assert (settings.batch_size, settings.patience) == (64, 20)
    with pytest.raises(ConfigError, match="unknown linear probe setting 'epoch'; known: epochs, batch_size"):
        build_settings(ProbeSettings, overrides={"epoch": "3"}, what="linear probe setting")
    with pytest.raises(ConfigError, match="expected an integer"):
        build_settings(ProbeSettings, overrides={"epochs": "many"})
    with pytest.raises(ConfigError, match="probe settings: epochs"):
        build_settings(ProbeSettings, overrides={"epochs": "0"})
    # X | None takes "none"; a derived default follows the field it derives from
    assert build_settings(CTCSettings, overrides={"head": "bilstm"}).lr == DEFAULT_LR["bilstm"]
    assert build_settings(CTCSettings, overrides={"head": "bilstm", "lr": "none"}).lr == DEFAULT_LR["bilstm"]
    assert build_settings(CTCSettings, overrides={"lr": "0.5"}).lr == 0.5
    # tuple[str, ...] fields are written as lists
    assert build_settings(ItemABXSettings, overrides={"context_modes": "any"}).context_modes == ("any",)
    assert build_settings(ItemABXSettings, overrides={"speaker_modes": "[within, across]"}).speaker_modes == (
        "within", "across")
    assert settings_help(ItemABXSettings).startswith("speaker_modes=within,across, context_modes=within,any")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf")])
@pytest.mark.parametrize("key", ["lr", "weight_decay", "clip_grad", "max_minutes", "cpc_temperature"])
def test_non_finite_numbers_are_refused_naming_the_key(key, value):
    """nan passes `lr <= 0` and inf passes any upper bound: every number must be finite, from text or YAML."""
    with pytest.raises(ConfigError, match=f"config key '{key}': expected a finite number"):
        build_config(overrides={key: value})


def test_non_finite_numbers_in_a_file_and_in_probe_settings_are_refused(tmp_path):
    from audiossl.probes.linear import ProbeSettings

    path = tmp_path / "conf.yaml"
    path.write_text("lr: .nan\n")  # YAML's own NaN: a float, not a string
    with pytest.raises(ConfigError, match="'lr': expected a finite number"):
        build_config(path)
    for value in ("nan", "inf", "1e400"):
        with pytest.raises(ConfigError, match="'lr': expected a finite number"):
            build_settings(ProbeSettings, overrides={"lr": value})


@pytest.mark.parametrize("seed, ok", [(-1, False), (0, True), (2**32 - 1, True), (2**32, False)])
def test_seeds_outside_what_numpy_takes_are_refused(seed, ok):
    """numpy refuses a negative seed mid-run, after config.yaml and the logs were written: refused up front."""
    from audiossl.probes.abx.labels import ABXSettings
    from audiossl.probes.linear import ProbeSettings

    for build in (lambda: build_config(overrides={"seed": seed}),
                  lambda: build_settings(ProbeSettings, overrides={"seed": str(seed)}),
                  lambda: build_settings(ABXSettings, overrides={"seed": str(seed)})):
        if ok:
            build()
        else:
            with pytest.raises(ConfigError, match="'seed' must be a seed in"):
                build()


def test_a_key_given_twice_is_refused(tmp_path):
    """PyYAML and a dict keep the last value silently; both are refused, naming the key."""
    path = tmp_path / "conf.yaml"
    path.write_text("lr: 0.1\nbatch_size: 4\nlr: 0.2\n")
    with pytest.raises(ConfigError, match=r"conf.yaml: key 'lr' is given twice \(lines 1 and 3\)"):
        build_config(path)
    with pytest.raises(ConfigError, match=r"override 'lr' is given twice \(lr=0.1 and lr=0.3\)"):
        parse_overrides(["lr=0.1", "lr=0.3"])
    with pytest.raises(ConfigError, match="override 'context_dim' is given twice"):
        parse_overrides(["context-dim=32", "context_dim=16"])
    # Once on the command line over the file is what an override is for.
    path.write_text("lr: 0.1\n")
    assert build_config(path, parse_overrides(["lr=0.3"])).train.lr == 0.3


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_bytes(b"lr: 0.1\n# caf\xe9\n")  # Latin-1
    with pytest.raises(ConfigError) as error:
        build_config(path)
    assert str(error.value) == (f"{path}: not a UTF-8 text file (byte 0xe9 at offset 13); config files are YAML "
                                "text")


def literal_keys() -> list[tuple[str, str, tuple[str, ...]]]:
    """(key, section, allowed values) of every config key typed ``Literal[...]``."""
    return [(key, section, typing.get_args(typ)) for key, (section, typ) in fields_by_key().items()
            if typing.get_origin(typ) is typing.Literal]


def test_choices_are_read_from_the_literal_types():
    keys = {key for key, _, _ in literal_keys()}
    assert {"sampler", "frontend", "encoder_norm", "context", "decay", "precision", "augment",
            "cpc_negative_policy", "cpc_loss", "mpc_head"} <= keys
    for key, section, allowed in literal_keys():
        overrides = {key: "bogus"}
        if section == "objective":  # an objective's keys are checked when it is the one chosen
            overrides["objective"] = key.split("_")[0]
            if overrides["objective"] == "mpc":
                overrides.update(context="transformer", context_causal="false")
        with pytest.raises(ConfigError) as raised:
            build_config(overrides=overrides)
        assert str(raised.value) == f"config key {key!r}: 'bogus' is not one of {', '.join(allowed)}"


def test_an_objective_that_is_not_chosen_leaves_its_choices_unread():
    assert build_config(overrides={"objective": "apc", "frontend": "logmel", "cpc_loss": "bogus"}).objective.cpc_loss \
        == "bogus"
