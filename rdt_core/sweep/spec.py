"""The sweep spec: one YAML file per research question, validated in full before anything starts.

A spec names the experiment, a base config (only what differs from the defaults), a search space over
dotted config keys, the metric to optimise, the number of trials and the resources of each trial.
Every problem is raised as a :class:`SpecError` naming the file and the dotted key at fault, so that
``sweeps/run.py`` can print one line and exit 2 before Ray or MLflow is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from rdt_core.config import ConfigError, ExperimentConfig, StrictModel, config_error_from
from rdt_core.train import reported_metric_names


class SpecError(ValueError):
    """Invalid sweep spec; the message is one line: ``FILE: KEY: what is wrong``."""


class IntRange(StrictModel):
    """Integers drawn uniformly from ``low`` to ``high``, both included."""

    type: Literal["int"]
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class FloatRange(StrictModel):
    """Floats drawn uniformly (``float``) or log-uniformly (``loguniform``) from ``low`` to ``high``."""

    type: Literal["float", "loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform range needs low > 0 (got {self.low})")
        return self

    def bounds(self) -> list[Any]:
        return [self.low, self.high]


class Choice(StrictModel):
    """One of ``values``."""

    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def bounds(self) -> list[Any]:
        return list(self.values)


Distribution = Annotated[Union[IntRange, FloatRange, Choice], Field(discriminator="type")]
DISTRIBUTION_TYPES = frozenset({"int", "float", "loguniform", "choice"})


class Resources(StrictModel):
    """What one trial asks of the cluster. More than one worker runs the trial in Ray Train."""

    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)


class SweepSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="MLflow experiment and Tune run name")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict, description="config values that differ from defaults")
    search_space: dict[str, Distribution] = Field(default_factory=dict)
    metric: str = "acc/id"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(4, ge=1, description="trials")
    max_concurrent_trials: int = Field(2, ge=1)
    seed: int = Field(0, ge=0, description="seed of the Optuna sampler")
    resources: Resources = Resources()
    tracking_uri: str | None = Field(None, description="MLflow store, unless MLFLOW_TRACKING_URI is set")
    storage_path: str | None = Field(None, description="Ray Tune results; default ./ray_results")

    def base_config(self) -> ExperimentConfig:
        return ExperimentConfig.from_dict(self.base)


def load_spec(path: str | Path) -> SweepSpec:
    """Read, parse and validate the spec at ``path``; any problem is a one-line :class:`SpecError`."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(f"{path}: {where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: (top level): expected a mapping of keys, got {type(raw).__name__}")
    return validate_spec(raw, path)


def validate_spec(raw: dict[str, Any], path: str | Path) -> SweepSpec:
    """Validate the schema, then the configs it implies and the metric it names."""
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(f"{path}: {config_error_from(error, DISTRIBUTION_TYPES)}") from None
    try:
        base = spec.base_config()
    except ConfigError as error:
        raise SpecError(f"{path}: base.{error}") from None
    for key, distribution in spec.search_space.items():
        for value in distribution.bounds():  # every end of every range must give a valid config
            try:
                ExperimentConfig.from_dict(spec.base, {key: value})
            except ConfigError as error:
                detail = error.message if error.key in (key, "(top level)") else str(error)
                at = "" if error.message == "unknown key" else f" (at {value!r})"
                raise SpecError(f"{path}: search_space.{key}: {detail}{at}") from None
    if spec.metric not in reported_metric_names(base):
        raise SpecError(f"{path}: metric: no trial reports {spec.metric!r} (try 'acc/id')")
    return spec
