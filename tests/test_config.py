"""camri.config: TrainConfig validated in one place, its command line generated from its fields, and the
margin parsed into a tuple of radians (camri.losses.parse_margin)."""

import argparse
import math

import pytest

from camri.config import TrainConfig, add_arguments, from_args
from camri.losses import LOSSES, parse_margin


@pytest.mark.parametrize("value", [None, [0.1], True, "4pi/0", "4pi/", "", float("inf")])
def test_parse_margin_failures_are_value_errors_naming_the_parameter(value):
    with pytest.raises(ValueError, match=r"^margin\b"):
        parse_margin(value)
    with pytest.raises(ValueError, match=r"^fig3.margin\b"):
        parse_margin(value, "fig3.margin")


def test_parse_margin_notations():
    assert parse_margin("4pi/64") == parse_margin("4*pi/64") == parse_margin("4π/64") == pytest.approx(math.pi / 16)
    assert parse_margin("pi/16") == pytest.approx(math.pi / 16) and parse_margin(0.2) == 0.2


@pytest.mark.parametrize("margin", ["4pi/64", 0.19634954084936207, ["4pi/64"], ("4pi/64",)])
def test_margin_is_always_a_tuple_of_radians(margin):
    config = TrainConfig(margin=margin)
    assert config.margin == (pytest.approx(math.pi / 16),) and isinstance(config.margin, tuple)
    assert config.to_json()["margin"] == [pytest.approx(math.pi / 16)]  # config.json keeps a list


@pytest.mark.parametrize(
    "values, message",
    [
        ({"margin": None}, r"margin: margin must be a number"),
        ({"margin": 4}, r"margin: Input should be less than 3.14"),
        ({"epochs": True}, r"epochs: Input should be a valid integer"),
        ({"scale": 0}, r"scale: Input should be greater than 0"),
        ({"lr": float("nan")}, r"lr: Input should be a finite number"),
        ({"loss": "focal"}, r"loss: Input should be 'ce', 'wce'"),
        ({"colour": 1}, r"colour: unknown key; allowed are dataset, loss"),
        ({"loss": "camri"}, r"needs at least one important class"),
        ({"loss": "camri", "important": [3, 5], "margin": [0.1, 0.2, 0.3]}, r"margin has 3 values"),
    ],
)
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.parse(values)


def test_command_line_has_one_option_per_field():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = {a.dest for a in parser._actions if a.dest != "help"}
    assert options == set(TrainConfig.model_fields)
    args = parser.parse_args(
        ["--loss", "camri", "--important", "3", "cat", "--margin", "4pi/64", "0.1", "--augment", "--z-dim", "2"]
    )
    config = from_args(args)
    assert (config.loss, config.important, config.augment, config.z_dim) == ("camri", ("3", "cat"), True, 2)
    assert config.margin == (pytest.approx(math.pi / 16), 0.1)
    assert from_args(parser.parse_args([])) == TrainConfig()  # options not given take the model's defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["--loss", "focal"])  # choices come from the loss registry


def test_loss_registry_is_complete():
    assert set(LOSSES) == {"ce", "wce", "crwwce", "l2softmax", "arcface", "camri"}
    assert {name for name, info in LOSSES.items() if info.class_specific} == {"wce", "crwwce", "camri"}
    assert sorted(info.rank for info in LOSSES.values()) == list(range(len(LOSSES)))
    for info in LOSSES.values():
        assert set(info.axes) <= set(TrainConfig.model_fields)
