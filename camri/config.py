"""``TrainConfig``: everything that defines one training run, as one typed model validated in one place.

Every way into a run goes through this model: ``camri train``'s options are generated from its fields
(``add_arguments`` / ``from_args``), a profile's ``train:`` section and grid values are validated by it
(camri.profile), and a stored config.json is read back by it. Bad values are a ValueError naming the
field and what is allowed, raised before anything is written.

Units: ``margin`` is a tuple of radians after parsing (one, or one per important class); it may be given
as radians or in the paper's notation k·pi/d (``camri.losses.parse_margin``).
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError
from pydantic import model_validator
from pydantic_core import PydanticCustomError

from camri.losses import LOSS_NAMES, LOSSES, paper_margin, parse_margins

#: One margin in radians: 0 <= m < π (beyond π the margin-penalised cosine is not defined, losses.py).
MarginRadians = Annotated[float, Field(ge=0.0, lt=math.pi)]
#: Margins after parsing: a non-empty tuple of radians, from a number, a string such as "4pi/64" or a list.
Margins = Annotated[tuple[MarginRadians, ...], BeforeValidator(parse_margins)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]
#: Numbers are strict (a bool or a string is not a number) and finite.
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)]


def invalid(key: str, message: str) -> PydanticCustomError:
    """A validation error at ``key`` (dotted, below the field being validated), for ``describe_errors``."""
    return PydanticCustomError("camri", "{message}", {"key": key, "message": message})


class Model(BaseModel):
    """Base of camri's settings models: unknown keys are errors that list the allowed ones; a section
    given as null (an empty YAML mapping) takes every default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if data is None:
            return {}
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise invalid(str(key), f"unknown key; allowed are {', '.join(cls.model_fields)}")
        return data


class TrainConfig(Model):
    """Everything that defines a run. Saved to config.json; a run directory belongs to one config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field("digits", description="data set name (see `camri data`)")
    loss: Literal[LOSS_NAMES] = Field("ce", description="the loss (classification head)")
    important: tuple[StrictInt | str, ...] = Field(
        (), description="important class(es): index or name (e.g. 3 or cat); resolved to indices before training"
    )
    margin: Margins = Field(
        (paper_margin(4),),
        description="margin in radians or the paper's notation (4pi/64); one, or one per important class",
    )
    scale: Number = Field(16.0, gt=0, description="s of the angular losses")
    weight: Number = Field(2.0, gt=0, description="WCE weight / CRWWCE false-negative weight of the important classes")
    fp_weight: Number = Field(1.0, ge=0, description="CRWWCE false-positive weight")
    epochs: PositiveInt = 300
    batch_size: PositiveInt = 64
    lr: Number = Field(1e-3, gt=0, description="Adam's learning rate (at the first step under a schedule)")
    # The paper trains 300 epochs at a constant rate. A CPU-scale run of 10 epochs ends on a noisy sample of
    # that trajectory (GTSRB's test accuracy swung 0.93-0.96 from epoch to epoch, results/gtsrb-constant-lr/);
    # "cosine" anneals to 0 over the run's steps so its last epoch is a settled model (docs/protocol.md).
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning-rate schedule over the run: constant (the paper's) or cosine to 0"
    )
    width: Number = Field(1.0, gt=0, description="channel multiplier (1.0 = paper)")
    z_dim: PositiveInt = Field(512, description="feature dimension (512 = paper)")
    # PyTorch convention; 0.01 = Keras's 0.99, the authors' (see camri.models).
    bn_momentum: Number = Field(
        0.01, gt=0, le=1, description="BatchNorm momentum, PyTorch convention (0.01 = Keras 0.99, the paper's)"
    )
    seed: Annotated[StrictInt, Field(ge=0)] = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: Literal["auto", "bf16", "off"] = Field("auto", description="bf16 autocast (auto: on for CUDA)")
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="memory layout (auto: on for CUDA and CPU, off for MPS)"
    )
    augment: StrictBool = Field(False, description="random crop + flip (the paper uses none)")
    image_size: PositiveInt | None = Field(
        None, description="data sets that are resized (gtsrb, awa2); default: theirs"
    )
    eval_batch_size: PositiveInt = 1024
    # The protocol selects on a validation split (docs/protocol.md); 0 trains on the whole training set and
    # leaves only the test set, as the paper does (selection: test).
    validation_fraction: Number = Field(
        0.1,
        ge=0,
        lt=0.5,
        description="stratified share of the training set held out for selection (0: none, the paper's protocol)",
    )
    split_seed: Annotated[StrictInt, Field(ge=0)] = Field(
        0, description="seed of the validation split; the same for every method and seed of a profile"
    )
    # GTSRB's ~30 frames of one track are near-duplicates: split by image, validation images have twins in
    # training and validation accuracy saturates (0.997-0.999 against 0.974-0.979 on test, results/gtsrb-random-split/).
    validation_groups: StrictBool = Field(
        False,
        description="hold out whole groups of near-duplicate images (gtsrb: its tracks) rather than single images",
    )
    data_dir: str | None = Field(
        None, description="data directory (default $CAMRI_DATA_DIR or data/); not part of the run's identity"
    )

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError(describe_errors(error)) from None

    @model_validator(mode="after")
    def _loss_needs(self) -> TrainConfig:
        info = LOSSES[self.loss]
        if info.class_specific and not self.important:
            raise ValueError(f"loss {self.loss!r} needs at least one important class (important / --important)")
        if len(set(self.important)) != len(self.important):
            raise ValueError(f"important classes {list(self.important)} repeat a class: list each class once")
        if len(self.margin) > 1 and len(self.margin) != max(len(self.important), 1):
            raise ValueError(
                f"margin has {len(self.margin)} values but there are {len(self.important)} important "
                "classes: give one margin, or one per important class"
            )
        return self

    @classmethod
    def parse(cls, values: dict[str, Any], where: str = "config") -> TrainConfig:
        """``TrainConfig(**values)`` with pydantic's errors as one ValueError naming each bad field."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ValueError(describe_errors(error, where)) from None

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes``, validated like a new config."""
        return type(self).parse({**self.model_dump(), **changes})

    def to_json(self) -> dict:
        """The JSON form stored in config.json and summary.json (tuples as lists)."""
        return self.model_dump(mode="json")

    def identity(self) -> dict:
        """The fields that must match for an existing run directory to be resumed or skipped (JSON form)."""
        fields = self.to_json()
        fields.pop("data_dir")
        return fields


# Fields added after runs were first written, with the value that reproduces those runs: a stored config
# without the field is read with it (docs/run-format.md), so old results keep their identity.
LEGACY_VALUES = {"validation_fraction": 0.0, "split_seed": 0, "lr_schedule": "constant", "validation_groups": False}


def with_legacy_values(stored: dict) -> dict:
    """A stored config (JSON form) with the fields it predates filled in by ``LEGACY_VALUES``."""
    return {**LEGACY_VALUES, **stored}


def describe_errors(error: ValidationError, where: str = "") -> str:
    """pydantic's errors as ``<where>: <dotted key>: <message>; got <value>`` lines, joined by "; "."""
    lines = []
    for item in error.errors(include_url=False):
        location = [str(part) for part in item["loc"] if not isinstance(part, int)]
        context = item.get("ctx") or {}
        if item["type"] == "camri":
            location.append(context["key"])
            message = context["message"]
        else:
            message = "is required" if item["type"] == "missing" else item["msg"].removeprefix("Value error, ")
            if item["type"] != "missing" and not item["type"].startswith("value_error"):
                message += f"; got {item.get('input')!r}"
        lines.append(": ".join(filter(None, [where, ".".join(filter(None, location)), message])))
    return "; ".join(dict.fromkeys(lines))


# ---- command line: one option per field -------------------------------------------------------------


def _plain(annotation):
    """The annotation without Annotated / Optional wrappers."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0] if len(options) == 1 else str
        return _plain(annotation)
    return annotation


def add_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per TrainConfig field (help and choices from the field). Options not
    given stay out of the namespace (argparse.SUPPRESS), so the model's defaults apply."""
    for name, info in TrainConfig.model_fields.items():
        if name in exclude:
            continue
        annotation = _plain(info.annotation)
        origin = typing.get_origin(annotation)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": name}
        if annotation is bool:
            kwargs["action"] = "store_true"
        elif origin is Literal:
            kwargs["choices"] = typing.get_args(annotation)
        elif origin is tuple:
            kwargs.update(nargs="+", metavar=name.upper().removesuffix("S"))
        elif annotation in (int, float):
            kwargs["type"] = annotation
        default = info.get_default()
        shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        parts = [info.description, f"default: {shown}" if default not in (None, (), False) else None]
        kwargs["help"] = "; ".join(filter(None, parts))
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the options ``add_arguments`` declared and the user gave."""
    given = {name: getattr(args, name) for name in TrainConfig.model_fields if hasattr(args, name)}
    return TrainConfig.parse(given, "")
