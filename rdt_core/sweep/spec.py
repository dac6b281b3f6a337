"""The sweep spec: one YAML file per research question, validated in full before anything starts.

A spec names the experiment, a base config (only what differs from the defaults), a search space over
dotted config keys, the metric to optimise, the number of trials and the resources of each trial.
Every problem is raised as a :class:`SpecError` naming the file and the dotted key at fault, so that
``sweeps/run.py`` can print one line and exit 2 before Ray or MLflow is touched.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import ConfigDict, Field, ValidationError, model_validator

from rdt_core.config import (
    ConfigError,
    ExperimentConfig,
    StrictModel,
    config_error_from,
    flatten,
    parse_override,
    read_yaml_mapping,
    set_dotted,
)
from rdt_core.data.splits import check_data
from rdt_core.metrics import ACC
from rdt_core.train import reported_metric_names


class SpecError(ValueError):
    """Invalid sweep spec; the message is one line: ``FILE: KEY: what is wrong``."""


# The search-space key of the replicate index (0..seeds-1) of a replicated grid sweep: one more grid
# dimension, logged as a param of each child run. The report reads it by the same name.
REPLICATE_KEY = "replicate"


class SpecModel(StrictModel):
    """A section of the spec. Its types are strict: YAML reads ``yes``, ``true`` and ``on`` as booleans,
    which pydantic would otherwise take for the number 1 (``num_samples: yes`` running one trial);
    strings are not read as numbers either. Infinite and NaN numbers are refused: no range or
    resource is meant by them."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class IntRange(SpecModel):
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

    def n_values(self) -> int:
        return self.high - self.low + 1


class FloatRange(SpecModel):
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

    def n_values(self) -> None:
        return None  # a continuum: no count of values to cover


class Choice(SpecModel):
    """One of ``values`` (``choice``: sampled; ``grid``: every value, with ``sampler.type: grid``)."""

    type: Literal["choice", "grid"]
    values: list[Any] = Field(min_length=1)

    def bounds(self) -> list[Any]:
        return list(self.values)

    def n_values(self) -> int:
        return len(self.values)


Distribution = Annotated[Union[IntRange, FloatRange, Choice], Field(discriminator="type")]
DISTRIBUTION_TYPES = frozenset({"int", "float", "loguniform", "choice", "grid"})


class Sampler(SpecModel):
    """Optuna's sampler: TPE (default), CMA-ES, random, NSGA-II (several objectives) or a full grid."""

    type: Literal["tpe", "cmaes", "random", "nsga2", "grid"] = "tpe"
    # Optuna's samplers take seeds below 2**32, and a resumed sweep adds its trial count to this one.
    seed: int = Field(0, ge=0, lt=2**31)


class Scheduler(SpecModel):
    """Early stopping of unpromising trials, counted in evaluations (``train.eval_every`` steps each)."""

    type: Literal["fifo", "asha", "hyperband"] = "fifo"
    grace_period: int = Field(1, ge=1, description="evaluations before a trial may be stopped (asha)")
    reduction_factor: float = Field(3.0, gt=1.0)


PhaseDiagram = Literal["overthinking", "grokking", "halting", "depth"]


class TrainedModel(SpecModel):
    """An already trained model for an inference-only sweep: a checkpoint file or a trial's MLflow run."""

    checkpoint: str | None = Field(None, description="path of a model.pt written by a trial")
    mlflow_run: str | None = Field(None, description="id of a trial's MLflow run (its checkpoint artifact)")

    @model_validator(mode="after")
    def _exactly_one(self) -> "TrainedModel":
        if (self.checkpoint is None) == (self.mlflow_run is None):
            raise ValueError("give exactly one of checkpoint and mlflow_run")
        return self


class Resources(SpecModel):
    """What one trial asks of the cluster. More than one worker runs the trial in Ray Train."""

    workers_per_trial: int = Field(1, ge=1, le=1024)
    cpus_per_worker: float = Field(1.0, ge=0.01, le=512)
    gpus_per_worker: float = Field(0.0, ge=0, le=16)

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> "Resources":
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            raise ValueError(
                f"gpus_per_worker {self.gpus_per_worker}: a share of one GPU, or a whole number of GPUs"
            )
        return self


class SweepSpec(SpecModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="MLflow experiment and Tune run name")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict, description="config values that differ from defaults")
    search_space: dict[str, Distribution] = Field(default_factory=dict)
    metric: str | list[str] = Field(ACC.name(split="id"), description="objective(s); a list for several")
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"
    num_samples: int | None = Field(None, ge=1, description="trials; default 4, or the grid's size")
    seeds: int = Field(
        1, ge=1, description="replicates of every grid setting; replicate i adds i to train.seed and data.seed"
    )
    max_concurrent_trials: int = Field(2, ge=1)
    sampler: Sampler = Sampler()
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    max_failures: int = Field(
        3, ge=-1, description="restarts of a trial whose process dies, each from its latest checkpoint; -1 no limit"
    )
    tracking_uri: str | None = Field(None, description="MLflow store, unless MLFLOW_TRACKING_URI is set")
    storage_path: str | None = Field(
        None, description="Ray Tune results and checkpoints; default $RDT_STORAGE_PATH, else ./ray_results"
    )
    optuna_storage: str | None = Field(
        None, description="SQLAlchemy URL of the Optuna study; default optuna.db beside a SQLite MLflow store"
    )
    phase_diagrams: list[PhaseDiagram] = Field(default_factory=list, description="drawn at the end")
    trained_model: TrainedModel | None = Field(
        None, description="search only inference settings (eval.*) of this model; no training"
    )

    def inconsistency(self) -> tuple[str, str] | None:
        """The first (dotted key, problem) among keys that are valid alone but not together."""
        metrics, modes = self.objectives()
        if len(metrics) != len(modes):
            return "mode", f"{len(metrics)} metrics but {len(modes)} modes: give one mode per metric"
        if len(metrics) > 1 and self.scheduler.type != "fifo":
            return "scheduler.type", f"{self.scheduler.type!r} stops trials on one metric, not {len(metrics)}"
        if len(metrics) > 1 and self.sampler.type == "cmaes":
            return "sampler.type", "'cmaes' optimises one metric; use 'nsga2' for several"
        if self.seeds > 1 and self.sampler.type != "grid":
            return "seeds", (
                f"{self.seeds} replicates of searched settings need sampler.type: grid "
                f"(not {self.sampler.type!r}; replicas inside a trial come later)"
            )
        if self.seeds > 1 and self.trained_model is not None:
            return "seeds", "with trained_model nothing is trained: replicates (train.seed, data.seed) need training"
        for key, distribution in self.search_space.items():
            if distribution.type == "grid" and self.sampler.type != "grid":
                return f"search_space.{key}", "a grid needs sampler.type 'grid'"
            if self.sampler.type == "grid" and distribution.type not in ("grid", "choice"):
                return f"search_space.{key}", f"sampler 'grid' needs values (grid or choice), not a {distribution.type} range"
        if self.trained_model is not None:
            for key in [*self.search_space, *(f"{section}." for section in self.base if section != "eval")]:
                if not key.startswith("eval."):
                    where = f"search_space.{key}" if key in self.search_space else f"base.{key.rstrip('.')}"
                    return where, "with trained_model only inference settings (eval.*) may change"
            if self.trained_model.checkpoint and not Path(self.trained_model.checkpoint).is_file():
                return "trained_model.checkpoint", f"no such file {self.trained_model.checkpoint}"
        if self.sampler.type == "grid":
            if not self.search_space:
                return "search_space", "sampler 'grid' needs at least one grid of values"
            if self.num_samples is not None and self.num_samples != self.grid_size():
                replicated = f" ({self.seeds} seeds each)" if self.seeds > 1 else ""
                return "num_samples", f"{self.num_samples} differs from the grid's {self.grid_size()} points{replicated}"
        return None

    def uncovered(self) -> list[tuple[str, str]]:
        """(dotted key, problem) for each searched parameter with more values (an int range's integers,
        a choice's values) than the sweep has trials: some of them are never tried, whatever the
        sampler does. Valid all the same (a sweep may mean to sample a wide range sparsely), so the
        command warns instead of refusing. A grid sweep tries every value by construction."""
        if self.sampler.type == "grid":
            return []
        trials = self.trial_count()
        problems = []
        for key, distribution in self.search_space.items():
            n_values = distribution.n_values()
            if n_values is not None and n_values > trials:
                problems.append((
                    f"search_space.{key}",
                    f"{n_values} values but {trials} trials (num_samples): "
                    f"at least {n_values - trials} of them are never tried",
                ))
        return problems

    def objectives(self) -> tuple[list[str], list[str]]:
        """The metrics and their modes, as lists (one entry for a single objective)."""
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        return metrics, modes

    def grid(self) -> dict[str, list[Any]]:
        """The values of every search key, and the replicate index (``0..seeds-1``) when ``seeds > 1``."""
        grid = {key: dist.bounds() for key, dist in self.search_space.items()}
        if self.seeds > 1:
            grid[REPLICATE_KEY] = list(range(self.seeds))
        return grid

    def grid_size(self) -> int:
        """Grid points (trials of a grid sweep): settings times seeds."""
        return math.prod(len(values) for values in self.grid().values())

    def trial_count(self) -> int:
        if self.num_samples is not None:
            return self.num_samples
        return self.grid_size() if self.sampler.type == "grid" else 4

    def base_config(self) -> ExperimentConfig:
        return ExperimentConfig.from_dict(self.base)


def trial_config(base: Mapping[str, Any], params: Mapping[str, Any]) -> ExperimentConfig:
    """One trial's config: ``base`` (nested) under the trial's search-space values (dotted keys). The
    replicate index i, when there is one, adds i to the setting's ``train.seed`` and ``data.seed``, so
    that replicate 0 is the setting itself and the others train other models on other graphs."""
    overrides = dict(params)
    replicate = int(overrides.pop(REPLICATE_KEY, 0))
    config = ExperimentConfig.from_dict(base, overrides)
    if not replicate:
        return config
    seeds = {"train.seed": config.train.seed + replicate, "data.seed": config.data.seed + replicate}
    return ExperimentConfig.from_dict(config.model_dump(), seeds)


def trial_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial's MLflow run logs as params: its whole config, flattened (real seeds included),
    and its replicate index when it has one."""
    logged = trial_config(base, params).to_flat_dict()
    if REPLICATE_KEY in params:
        logged[REPLICATE_KEY] = params[REPLICATE_KEY]
    return logged


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read, parse, override (``--set key=value`` items) and validate the spec at ``path``; any problem
    is a one-line :class:`SpecError`."""
    path = Path(path)
    try:
        raw = read_yaml_mapping(path, "spec file")
        if raw is None:
            raise ConfigError("(top level)", "the spec is empty; it needs at least a name")
        for item in overrides or []:
            apply_override(raw, *parse_override(item))
    except ConfigError as error:  # the file as a whole is named by its path alone
        raise SpecError(f"{path}: {error.message if error.key == '(file)' else error}") from None
    return validate_spec(raw, path)


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """``--set`` of a dotted spec key (``base.train.steps``, ``num_samples``). Under ``search_space`` the
    config key keeps its dots: ``search_space.train.lr.high=0.1`` sets one bound of an entry,
    ``search_space.train.lr={type: choice, values: [0.01]}`` the whole entry, a new one included."""
    if key.startswith("search_space."):
        space = raw.setdefault("search_space", {})
        if not isinstance(space, dict):
            raise ConfigError("search_space", f"expected a mapping of search keys, got {type(space).__name__}")
        entry_key = key.removeprefix("search_space.")
        if entry_key in space or isinstance(value, dict) or "." not in entry_key:
            space[entry_key] = value
            return
        entry_key, field = entry_key.rsplit(".", 1)
        if not isinstance(space.get(entry_key), dict):
            raise ConfigError(f"--set {key}", f"no search_space entry {entry_key!r} to change")
        space[entry_key][field] = value
        return
    try:
        set_dotted(raw, key, value)
    except ConfigError as error:
        raise ConfigError(f"--set {key}", str(error)) from None


def validate_spec(raw: dict[str, Any], path: str | Path) -> SweepSpec:
    """Validate the schema, then the configs it implies and the metric it names."""
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(f"{path}: {config_error_from(error, DISTRIBUTION_TYPES)}") from None
    problem = spec.inconsistency()
    if problem:
        raise SpecError(f"{path}: {problem[0]}: {problem[1]}")
    try:
        base = spec.base_config() if spec.trained_model is None else trained_config(spec)
    except ConfigError as error:
        raise SpecError(f"{path}: base.{error}") from None
    for key, distribution in spec.search_space.items():
        for value in distribution.bounds():  # every end of every range must give a valid config
            try:
                ExperimentConfig.from_dict(base.model_dump(), {key: value})
            except ConfigError as error:
                detail = error.message if error.key in (key, "(top level)") else str(error)
                at = "" if error.message == "unknown key" else f" (at {value!r})"
                raise SpecError(f"{path}: search_space.{key}: {detail}{at}") from None
    reported = reported_metric_names(base)
    for metric in spec.objectives()[0]:
        if metric not in reported:
            raise SpecError(f"{path}: metric: no trial reports {metric!r} (try 'acc/id')")
    if spec.trained_model is None:
        check_graphs(spec, path)
    return spec


def check_graphs(spec: SweepSpec, path: str | Path) -> None:
    """Check the query splits of every graph the sweep's trials will use (a grid's settings and seeds;
    for a searched space, the ends of each searched data key), so that a graph too small for its splits
    (an inferred ratio or a test split asking for more distinct queries than it holds) stops the sweep
    here with one line, instead of failing in a trial's worker after others have trained for minutes."""
    if spec.sampler.type == "grid":
        points = [dict(zip(spec.grid(), values)) for values in itertools.product(*spec.grid().values())]
    else:
        points = [{}] + [{key: value} for key, dist in spec.search_space.items() if key.startswith("data.")
                         for value in dist.bounds()]
    built = set()
    for point in points:
        data = trial_config(spec.base, point).data
        if data in built:
            continue
        built.add(data)
        try:
            check_data(data)
        except ConfigError as error:
            searched = error.key in spec.search_space
            where = f"search_space.{error.key}" if searched else f"base.{error.key}"
            at = ", ".join(f"{key} {value}" for key, value in point.items() if key != error.key or searched)
            at = f" (trial with {at}, data.seed {data.seed})" if at else f" (data.seed {data.seed})"
            raise SpecError(f"{path}: {where}: {error.message}{at}") from None


def trained_config(spec: SweepSpec) -> ExperimentConfig:
    """The config an inference-only sweep starts from: the checkpoint's own, under the spec's ``eval``
    settings. For a model named by its MLflow run, the defaults stand in until the run is read."""
    from rdt_core.train import read_checkpoint_config

    trained = spec.trained_model.checkpoint
    values = read_checkpoint_config(Path(trained)).model_dump() if trained else {}
    return ExperimentConfig.from_dict(values, flatten({"eval": spec.base.get("eval", {})}))
