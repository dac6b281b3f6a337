"""Typed experiment configuration: data, model and training, with defaults and dotted overrides.

Every key is declared here with its type and range, and an unknown key is an error: a typo in a sweep
spec must stop the sweep before it starts, not silently train the default. Validation errors are raised
as :class:`ConfigError` carrying the dotted key at fault (``train.lr``), so that the command line can
print one line naming the file and the key.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """Invalid configuration: ``key`` is the dotted path of the value at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self):
        """Rebuilt from key and message: a trial's error crosses processes pickled (Ray), and the default
        (one argument, the formatted text) would fail there, hiding this error behind a TypeError."""
        return type(self), (self.key, self.message)


def refuse(message: object, status: int = 2) -> int:
    """A command's refusal: ``error: MESSAGE`` as one line on stderr. Returns the exit status to end with:
    2 for bad input (every command here refuses it so, before anything starts), 1 for a service that does
    not answer."""
    print(f"error: {message}", file=sys.stderr)
    return status


def read_utf8_file(path: Path, what: str = "file") -> str:
    """A YAML file's text, read as UTF-8: a missing file, a directory or a byte that is not UTF-8 (named by
    its line and column) is a ``ConfigError`` keyed ``(file)`` or ``line L, column C``, where a plain
    read would end in a traceback. ``what`` names the file in the message (``spec file``)."""
    if path.is_dir():
        raise ConfigError("(file)", f"is a directory, not a {what}")
    if not path.is_file():
        raise ConfigError("(file)", f"no such {what}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError("(file)", f"cannot be read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8")  # valid up to the first bad byte
        raise ConfigError(
            line_and_column(before, len(before)), f"not UTF-8 text (byte 0x{data[error.start]:02x}); save it as UTF-8"
        ) from None


def read_yaml_mapping(path: Path, what: str = "file") -> dict[str, Any] | None:
    """The mapping a YAML file holds (None for an empty file), read as sweep specs and single-run configs
    both are: every problem is a ``ConfigError`` keyed by where it is (``(file)``, ``line L, column C``,
    ``(top level)``), so each command prints it as one line naming the file."""
    text = read_utf8_file(path, what)
    try:
        raw = yaml.safe_load(text)
    except yaml.reader.ReaderError as error:  # a character YAML does not allow: no mark, a position
        raise ConfigError(line_and_column(text, error.position), f"invalid YAML: {error.reason}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top level)"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(where, f"invalid YAML: {problem}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError("(top level)", "invalid YAML: nested too deeply") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError("(top level)", f"expected a mapping of keys, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` as (dotted key, value read as YAML), the one reading of every command's ``--set``;
    a problem is a ``ConfigError`` keyed ``--set KEY``."""
    key, separator, text = item.partition("=")
    if not separator or not key:
        raise ConfigError(f"--set {item}", "expected KEY=VALUE")
    if "" in key.split("."):
        raise ConfigError(f"--set {key}", "an empty part in the dotted key")
    try:
        return key, yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"--set {key}", "the value is not valid YAML") from None


def line_and_column(text: str, position: int) -> str:
    """``line L, column C`` of the character at ``position`` in ``text``, both counted from 1."""
    line_start = text.rfind("\n", 0, position) + 1
    line = text.count("\n", 0, position) + 1
    return f"line {line}, column {position - line_start + 1}"


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigSection(StrictModel):
    """A config section, whose numbers are never booleans: YAML reads ``yes`` and ``true`` as booleans,
    which pydantic would take for 1 (``train.steps: yes``, one step)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if not takes_numbers_only(cls.model_fields[info.field_name].annotation):
            return value
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(item, bool) for item in value)):
            raise ValueError("a boolean where a number belongs")
        return value


def takes_numbers_only(annotation: Any) -> bool:
    """Whether a field of this type takes numbers (``int``, ``float | None``, ``list[float]``) and no
    boolean."""
    types = get_args(annotation) or (annotation,)
    return bool not in types and any(kind in (int, float) for kind in types)


class DataConfig(ConfigSection):
    """The knowledge graph and its query splits: generated (``construction``) or read from a directory in
    one of the paper's layouts (``paper_dir``)."""

    n_entities: int = Field(32, ge=2, description="entities in the graph")
    n_relations: int = Field(4, ge=1, description="relations; each is a random permutation")
    construction: Literal["permutation", "composition"] = Field(
        "permutation",
        description="permutation: each relation a random bijection of the entities (the paper's depth data, "
        "getNhopfact.py); composition: each fact's tail drawn uniformly at random, tails may repeat (the "
        "Grokked-Transformer composition set of the paper's systematicity data)",
    )
    out_degree: int | None = Field(
        None, ge=1, description="relations each entity is the head of, drawn without replacement per entity "
        "(the paper's composition set: 20 of 200); default every relation",
    )
    ood_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="atomic facts held out of every trained multi-hop query"
    )
    # 2.5 on the default graph: its 512 distinct 2-hop queries hold 320 trained, 64 validation and 128 test.
    inferred_ratio: float = Field(
        2.5, ge=0.0, description="phi: trained multi-hop queries per in-distribution atomic fact"
    )
    n_train_per_hop: int | None = Field(
        None, ge=1, description="trained multi-hop queries per trained hop count, in place of inferred_ratio's "
        "share (the paper's depth data: 15,000)",
    )
    train_max_hops: int = Field(2, ge=1, description="multi-hop queries of 2..this many hops are trained")
    test_max_hops: int = Field(2, ge=2, description="test splits hold 2..this many hops")
    n_test_queries: int = Field(128, ge=1, description="test queries per split and hop count")
    n_val_queries: int | None = Field(
        None, ge=1, description="validation queries per split and hop count, where loop budgets are chosen; "
        "default half of n_test_queries"
    )
    seed: int = Field(0, ge=0, description="seed of the graph and its splits")
    paper_dir: str | None = Field(
        None, min_length=1, description="read the graph and its splits from this directory in one of the paper's "
        "layouts (rdt_core.data.paper) instead of generating them; n_entities, n_relations and the hop counts "
        "must state the directory's, and n_test_queries, n_val_queries and seed draw the validation split",
    )

    @property
    def n_validation(self) -> int:
        """Validation queries per split and hop count."""
        return self.n_val_queries or max(1, self.n_test_queries // 2)

    @field_validator("paper_dir")
    @classmethod
    def _paper_dir_absolute(cls, paper_dir: str | None) -> str | None:
        """Made absolute where the config is read: a trial's worker runs in another directory (Ray's)."""
        return None if paper_dir is None else str(Path(paper_dir).expanduser().absolute())

    @field_validator("out_degree")
    @classmethod
    def _out_degree_within_relations(cls, out_degree: int | None, info: ValidationInfo) -> int | None:
        n_relations = info.data.get("n_relations")
        if out_degree is not None and n_relations is not None and out_degree > n_relations:
            raise ValueError(f"{out_degree} is above n_relations ({n_relations})")
        return out_degree

    @property
    def n_facts(self) -> int:
        """Atomic facts in the graph: every entity is the head of ``out_degree`` relations."""
        return self.n_entities * (self.out_degree or self.n_relations)

    @field_validator("test_max_hops")
    @classmethod
    def _test_covers_training_depth(cls, test_max_hops: int, info: ValidationInfo) -> int:
        train_max_hops = info.data.get("train_max_hops", test_max_hops)
        if test_max_hops < train_max_hops:
            raise ValueError(f"{test_max_hops} is below train_max_hops ({train_max_hops})")
        return test_max_hops


class ModelConfig(ConfigSection):
    """The recurrent-depth transformer: prelude -> core looped R times -> coda -> tied readout."""

    d_model: int = Field(64, ge=8)
    n_heads: int = Field(2, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    # No prelude by default: the looped core then reads raw entity embeddings, the same form in which it
    # writes the bridge entity, so one lookup circuit serves every hop (measured: with one prelude layer
    # the default graph stayed near chance on held-out 2-hop queries after 3,000 steps; without, ~90%).
    n_prelude_layers: int = Field(0, ge=0)
    n_core_layers: int = Field(1, ge=1)
    n_coda_layers: int = Field(0, ge=0)
    max_loops: int = Field(8, ge=1, description="loops of the per-loop readout at evaluation")
    architecture: Literal["looped", "vanilla", "unshared"] = Field(
        "looped",
        description="vanilla: a plain transformer, train.train_loops distinct copies of the core run once, "
        "the input injected once; unshared: the same distinct copies with the input re-injected before "
        "each, the looped model's computation without the weight sharing",
    )
    injection: Literal["add", "norm", "concat", "none"] = Field(
        "add",
        description="how each loop takes in the input: add (state + input), norm (RMS-normalised state + "
        "input: the state entering a loop stays bounded), concat (a learnt adapter of [state; input], "
        "starting as their sum), none (the input enters once, before the first loop: the paper's "
        "systematicity models)",
    )
    block: Literal["rdt", "gpt2"] = Field(
        "rdt",
        description="rdt: RMSNorm, no biases, exact GELU; gpt2: the paper's GPT-2 block (LayerNorm eps 1e-5 and "
        "biases everywhere, tanh GELU, model.dropout, the paper's initialisation: embeddings N(0, 1), block weights "
        "N(0, 0.02) as a bare transformers GPT2Block draws them)",
    )
    positions: Literal["rope", "learned", "sinusoidal", "none"] = Field(
        "rope",
        description="rope: rotary, in attention (no cap on length); learned (the paper's systematicity models) or "
        "sinusoidal: added to the embedding, model.n_positions long; none",
    )
    n_positions: int = Field(64, ge=1, description="the position table's length (learned, sinusoidal positions)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="on embeddings, attention and residual branches (the paper: 0.1)")
    zero_init_output: bool = Field(
        True, description="the looped core's output projections start at zero: a loop starts as the identity"
    )
    readout: Literal["entities", "vocabulary"] = Field(
        "entities", description="the answer is read over the entity rows of the tied embedding, or over the whole "
        "vocabulary (the paper's argmax)",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        head_dim, remainder = divmod(self.d_model, self.n_heads)
        if remainder or head_dim % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must be n_heads ({self.n_heads}) times an even head size"
            )
        return self


class TrainConfig(ConfigSection):
    """AdamW on batches sampled from on-device tensors; evaluation every ``eval_every`` steps."""

    steps: int = Field(2000, ge=1, description="optimizer steps")
    batch_size: int = Field(128, ge=1, description="global batch, split across data-parallel workers")
    lr: float = Field(3e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1.0, ge=0.0, description="strong decay speeds up generalization")
    adam_beta2: float = Field(
        0.98, gt=0.0, lt=1.0, description="AdamW's second-moment decay (the paper's code: torch's default 0.999)"
    )
    warmup_steps: int = Field(50, ge=0)
    lr_schedule: Literal["cosine", "constant", "linear"] = Field(
        "cosine",
        description="after the linear warm-up: cosine to a tenth of lr at the last step; constant (the paper's "
        "code, in effect); linear to 0 at the last step",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="of the training loss over the entities (the paper's code: 0.1, over its vocabulary)"
    )
    grad_clip: float = Field(
        1.0, ge=0.0, description="the gradient's norm is clipped to this; 0 clips nothing (the paper's code)"
    )
    train_loops: int = Field(4, ge=1, description="R, or its mean when sampled")
    loops_sampling: Literal["fixed", "poisson"] = Field(
        "fixed",
        description="poisson: R drawn per batch from Poisson(train_loops), clipped to sampled_loops_min..sampled_loops_max",
    )
    sampled_loops_min: int = Field(1, ge=1, description="the least R a Poisson draw is clipped to (the paper: 2)")
    sampled_loops_max: int | None = Field(
        None, ge=1, description="the most R a Poisson draw is clipped to; default model.max_loops (the paper: 8)"
    )
    backprop_loops: int | None = Field(
        None, ge=1, description="truncated backprop: gradients flow through only the last this many loops"
    )
    progressive_loss_weight: float = Field(
        0.0, ge=0.0, description="weight of the mean loss over every loop, added to the final-loop loss"
    )
    curriculum: bool = Field(False, description="start at 2 hops; add hop k+1 once hop k is learnt")
    curriculum_level: float = Field(
        0.9, gt=0.0, le=1.0, description="accuracy at hop k (at its best inference loop count) that unlocks hop k+1"
    )
    curriculum_signal: Literal["train", "validation"] = Field(
        "train",
        description="whose accuracy at hop k unlocks hop k+1: the training sample's, or the id validation split's "
        "(held out, as the paper's code reads its test split)",
    )
    curriculum_restart: bool = Field(
        False, description="each curriculum stage starts with a fresh optimizer and its own warm-up (the paper's code)"
    )
    curriculum_lr_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="each curriculum stage's peak lr is this times the last one's (the paper: 0.9)"
    )
    curriculum_lr_floor: float = Field(
        0.0, ge=0.0, description="the least peak lr a decayed stage keeps (the paper: 2e-5)"
    )
    eval_every: int = Field(250, ge=1, description="steps between evaluations")
    checkpoint_every: int | None = Field(
        None,
        ge=0,
        description="steps between resumable checkpoints (a multiple of eval_every); default every evaluation, 0 none",
    )
    seed: int = Field(0, ge=0, description="seed of initialisation and batch sampling")
    replicas: int = Field(
        1, ge=1, description="independent models trained together in one vectorised pass, replica i with "
        "seed + i on the same graph; the trial reports their mean, spread and per-replica values"
    )
    compile: bool = Field(
        False, description="torch.compile the training forward; falls back to eager where it cannot compile"
    )

    @model_validator(mode="after")
    def _checkpoints_at_evaluations(self) -> "TrainConfig":
        if self.checkpoint_every and self.checkpoint_every % self.eval_every:
            raise ValueError(
                f"checkpoint_every ({self.checkpoint_every}) must be a multiple of eval_every ({self.eval_every}): "
                "a checkpoint travels with an evaluation's report"
            )
        return self

    @model_validator(mode="after")
    def _stages_share_one_optimizer_across_replicas(self) -> "TrainConfig":
        if self.replicas > 1 and (self.curriculum_restart or self.curriculum_lr_decay < 1.0):
            raise ValueError(
                "replicas > 1 needs curriculum_restart: false and curriculum_lr_decay: 1 (the replicas' stages "
                "begin at different steps, and one optimizer steps them all)"
            )
        if self.curriculum_lr_floor > self.lr:
            raise ValueError(f"curriculum_lr_floor ({self.curriculum_lr_floor}) exceeds lr ({self.lr})")
        return self

    @model_validator(mode="after")
    def _replicas_unroll_alike(self) -> "TrainConfig":
        if self.replicas > 1 and self.loops_sampling == "poisson":
            raise ValueError(
                "replicas > 1 needs loops_sampling: fixed (each replica would draw its own R, and one "
                "vectorised pass unrolls one depth)"
            )
        return self

    @property
    def checkpoint_interval(self) -> int:
        """Steps between resumable checkpoints; 0 for none."""
        return self.eval_every if self.checkpoint_every is None else self.checkpoint_every


class EvalConfig(ConfigSection):
    """What is measured, and on how many queries. Inference-only: never changes training."""

    n_train_eval_per_hop: int = Field(256, ge=1, description="training queries sampled per hop count")
    phase_level: float = Field(0.9, gt=0.0, le=1.0, description="accuracy that marks a grokking phase")
    halt_kl: float | None = Field(0.01, gt=0.0, description="halt once KL(p_t || p_t-1) is below this")
    halt_entropy: float | None = Field(0.1, gt=0.0, description="... and entropy H(p_t) below this")
    halt_entropy_scale: Literal["relative", "nats"] = Field(
        "relative",
        description="relative: entropy thresholds are fractions of ln(n_entities), the same on any graph",
    )
    halt_kl_grid: list[float] = Field([1e-4, 1e-3, 1e-2, 1e-1, 1.0], min_length=1)
    halt_entropy_grid: list[float] = Field([0.05, 0.1, 0.2, 0.4], min_length=1)
    n_lens_queries: int = Field(256, ge=1, description="queries per hop count for the logit lens")
    n_patching_queries: int = Field(64, ge=1, description="clean/corrupted pairs for activation patching")
    patching_loops: int | None = Field(
        None, ge=1, description="loops of the patched runs; default train.train_loops, the trained depth"
    )

    @model_validator(mode="after")
    def _some_halting_rule(self) -> "EvalConfig":
        if self.halt_kl is None and self.halt_entropy is None:
            raise ValueError("halt_kl and halt_entropy are both off: set at least one")
        return self


class ExperimentConfig(ConfigSection):
    """One training run: everything ``train_worker`` needs."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _loops_within_readout(self) -> "ExperimentConfig":
        if self.train.train_loops > self.model.max_loops:
            raise ValueError(
                f"train.train_loops ({self.train.train_loops}) exceeds "
                f"model.max_loops ({self.model.max_loops})"
            )
        query_length = self.data.test_max_hops + 1
        if self.model.positions in ("learned", "sinusoidal") and query_length > self.model.n_positions:
            raise ValueError(
                f"model.n_positions ({self.model.n_positions}) is shorter than the longest query "
                f"({query_length} tokens, data.test_max_hops + 1)"
            )
        stacks = self.model.block == "rdt" and self.model.positions != "learned" and self.model.readout == "entities"
        if self.train.replicas > 1 and not (stacks and self.model.dropout == 0.0):
            raise ValueError(
                "train.replicas > 1 stacks the default model only: model.block rdt, positions other than learned, "
                "readout entities, dropout 0"
            )
        if (self.train.sampled_loops_max or 0) > self.model.max_loops:
            raise ValueError(
                f"train.sampled_loops_max ({self.train.sampled_loops_max}) exceeds model.max_loops ({self.model.max_loops})"
            )
        if self.train.sampled_loops_min > (self.train.sampled_loops_max or self.model.max_loops):
            raise ValueError(
                f"train.sampled_loops_min ({self.train.sampled_loops_min}) exceeds the most R drawn "
                f"({self.train.sampled_loops_max or self.model.max_loops})"
            )
        if (self.eval.patching_loops or 0) > self.model.max_loops:
            raise ValueError(
                f"eval.patching_loops ({self.eval.patching_loops}) exceeds model.max_loops ({self.model.max_loops})"
            )
        if self.data.ood_fraction and self.data.train_max_hops < 2:
            raise ValueError("data.ood_fraction needs data.train_max_hops >= 2: nothing composes facts")
        return self

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None
    ) -> "ExperimentConfig":
        """Validate ``values`` (nested) after applying ``overrides`` (dotted keys)."""
        merged = copy.deepcopy(dict(values or {}))
        for dotted_key, value in (overrides or {}).items():
            set_dotted(merged, dotted_key, value)
        try:
            return cls.model_validate(merged)
        except ValidationError as error:
            raise config_error_from(error) from None

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"train.lr": 0.001, ...}``: the form logged as MLflow parameters."""
        return flatten(self.model_dump())


def set_dotted(target: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``target["a"]["b"] = value`` for ``dotted_key == "a.b"``, creating sections as needed."""
    *sections, leaf = dotted_key.split(".")
    node = target
    for depth, section in enumerate(sections):
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(sections[: depth + 1]), "is a value, not a section")
        node = child
    node[leaf] = value


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def config_error_from(error: ValidationError, hidden_loc_parts: frozenset[str] = frozenset()) -> ConfigError:
    """The first pydantic error as a :class:`ConfigError` with its dotted key and a short message.

    ``hidden_loc_parts`` are dropped from the key: pydantic puts the tag of a tagged union into the
    location (``search_space.train.lr.float``), which is no key a user wrote.
    """
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"] if part not in hidden_loc_parts)
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and first["type"] != "missing" and not isinstance(first["input"], dict):
        message = f"{message} (got {first['input']!r})"
    return ConfigError(key.rstrip(".") or "(top level)", message.removeprefix("Value error, "))
