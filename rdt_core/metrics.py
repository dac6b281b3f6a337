"""Every metric name the platform reports, built and parsed here and nowhere else.

A name is ``/`` separated (``acc/id/hops_2/loop_03``). Each kind of name is one :class:`Kind`, a template
whose fields (``split``, ``hops``, ``loop``, ...) the producers fill in (``ACC_HOPS_LOOP.name(split="id",
hops=2, loop=3)``) and the readers get back (``parse("acc/id/hops_2/loop_03")``). Loops are zero-padded
so that the MLflow UI lists them in order.

A trial reports every name to Ray Tune (a spec may optimise any of them). Its MLflow run holds far fewer
as metrics (:func:`is_headline`: accuracy per split at the trained and at the chosen loop budget, loss,
learning rate, phases, the configured halting rule) and the rest as tables (:func:`tables`), one row per
split, hop count, loop, rule, ... A table's rows are built from the names' fields, so a reader never
parses a name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# What a field of a template may hold, and which fields are numbers.
FIELD_PATTERNS = {
    "split": r"[a-z]+(?:_val)?",
    "hops": r"\d+",
    "loop": r"\d+",
    "pos": r"\d+",
    "prefix": r"\d+",
    "rule": r"kl_[^/]+_h_[^/]+",
    "target": r"answer|bridge_\d+",
    "point": r"state|injected",
    "model": r"patching|patching_null",
    "kind": r"trained|novel",
    "replica": r"\d+",
}
NUMBER_FIELDS = {"hops", "loop", "pos", "prefix", "replica"}
PADDED_FIELDS = {"loop"}  # written with two digits at least


@dataclass(frozen=True, eq=False)  # a kind is itself: compared and hashed by identity
class Kind:
    """One kind of metric name: its template, and where its final value goes in the run's tables.

    ``stats`` lists what a template's ``{stat}`` may be; the stat then names the table column the value
    goes to, else ``column`` does. ``implied`` adds columns that the name implies but does not spell out
    (the configured halting rule is ``rule = configured``)."""

    template: str
    table: str | None = None
    column: str = "value"
    stats: tuple[str, ...] = ()
    implied: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fields(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.template)

    @property
    def pattern(self) -> re.Pattern:
        regex = re.escape(self.template)
        for name in self.fields:
            allowed = "|".join(map(re.escape, self.stats)) if name == "stat" else FIELD_PATTERNS[name]
            regex = regex.replace(re.escape(f"{{{name}}}"), f"(?P<{name}>{allowed})")
        return re.compile(regex)

    def name(self, **values: Any) -> str:
        """The metric name with these field values; a missing, extra or malformed one is a ValueError."""
        if set(values) != set(self.fields):
            raise ValueError(f"{self.template} takes {self.fields}, got {sorted(values)}")
        text = {key: f"{value:02d}" if key in PADDED_FIELDS else str(value) for key, value in values.items()}
        built = self.template.format(**text)
        if self.match(built) != values:
            raise ValueError(f"{built!r} is not a valid {self.template}")
        return built

    def match(self, name: str) -> dict[str, Any] | None:
        """The field values of ``name`` if it is of this kind, else None."""
        found = self.pattern.fullmatch(name)
        if found is None:
            return None
        return {key: int(value) if key in NUMBER_FIELDS else value for key, value in found.groupdict().items()}


HALTING_STATS = ("acc", "mean_loops", "fixed_acc", "gain")

# Scalars of the training loop and the run.
STEP = Kind("step")
LR = Kind("lr")
LOSS = Kind("loss/{split}")
TRAINED_LOOPS = Kind("loops/{split}")  # mean loop count unrolled in training (varies with sampled R)
CURRICULUM_MAX_HOPS = Kind("curriculum/max_hops")
ELAPSED_S = Kind("time/elapsed_s")
RESUMED_FROM_STEP = Kind("resume/from_step", "run", "resumed_from_step")  # above 0: the run was restarted
TRAIN_S = Kind("time/train_s")
N_PARAMS = Kind("model/n_params")
WORLD_SIZE = Kind("dist/world_size", "run", "world_size")  # 2+: a data-parallel trial
# 1.0 in a run's last report only: it trained to its last step and ran the final analysis. A trial that
# a scheduler stopped early never sends it.
FINISHED = Kind("trial/finished")

# Accuracy (rdt_core.eval): at the trained loop count, at the budget chosen on validation, the oracle.
ACC = Kind("acc/{split}", "accuracy", "trained_loops")
ACC_CHOSEN = Kind("acc/{split}/chosen", "accuracy", "chosen")
ACC_ORACLE = Kind("acc/{split}/oracle", "accuracy", "oracle")
ORACLE_LOOP = Kind("oracle_loop/{split}", "accuracy", "oracle_loop")
ACC_HOPS = Kind("acc/{split}/hops_{hops}", "accuracy", "trained_loops")
ACC_HOPS_CHOSEN = Kind("acc/{split}/hops_{hops}/chosen", "accuracy", "chosen")
LOOPS_CHOSEN = Kind("loops_chosen/{split}/hops_{hops}", "accuracy", "loops_chosen")
ACC_PREFIX = Kind("acc/{split}/hops_{hops}/prefix_{kind}/chosen", "accuracy_by_prefix", "chosen")
OVERTHINKING = Kind("overthinking/{split}/hops_{hops}/{stat}", "accuracy",
                    stats=("peak_acc", "peak_loop", "final_acc", "drop"))
ACC_LOOP = Kind("acc/{split}/loop_{loop}", "accuracy_by_loop", "accuracy", implied={"hops": "all"})
ACC_HOPS_LOOP = Kind("acc/{split}/hops_{hops}/loop_{loop}", "accuracy_by_loop", "accuracy")
STATE_NORM = Kind("state_norm/loop_{loop}", "state_norm", "norm")

# Halting (rdt_core.halting): the configured rule, KL alone beside it, every rule of the grid.
HALTING = Kind("halting/{split}/{stat}", "halting", stats=HALTING_STATS, implied={"hops": "all", "rule": "configured"})
HALTING_KL_ONLY = Kind("halting/{split}/kl_only/{stat}", "halting", stats=HALTING_STATS,
                       implied={"hops": "all", "rule": "kl_only"})
HALTING_HOPS = Kind("halting/{split}/hops_{hops}/{stat}", "halting", stats=HALTING_STATS,
                    implied={"rule": "configured"})
HALTING_HOPS_KL_ONLY = Kind("halting/{split}/hops_{hops}/kl_only/{stat}", "halting", stats=HALTING_STATS,
                            implied={"rule": "kl_only"})
HALTING_RULE = Kind("halting/{split}/{rule}/{stat}", "halting", stats=HALTING_STATS, implied={"hops": "all"})
LOOPS_SAVED = Kind("halting/{split}/loops_saved", "halting", "loops_saved", implied={"hops": "all", "rule": "configured"})

# Grokking phases (rdt_core.train): the step at which a split's accuracy first reached the level.
PHASE_STEP = Kind("phase/{split}/step", "phases", "step")
PHASE_REACHED = Kind("phase/{split}/reached", "phases", "reached")

# Structural nulls (rdt_core.data.nulls), the logit lens (rdt_core.lens), patching (rdt_core.patching).
NULL_CHANCE = Kind("null/chance", "nulls", "chance")
NULL = Kind("null/{split}/hops_{hops}/{stat}", "nulls", stats=("answer_elimination", "last_relation", "structural"))
LENS_TOP1 = Kind("lens/{split}/hops_{hops}/{target}/top1/loop_{loop}", "lens", "top1")
LENS_RESOLVED = Kind("lens/{split}/hops_{hops}/{target}/resolved_loop", "lens", "resolved_loop")
PREFIX_LENS_RESOLVED = Kind("lens_prefix/{split}/hops_{hops}/prefix_{prefix}/resolved_loop", "lens_prefix",
                            "resolved_loop")
PATCHING = Kind("{model}/{point}/hops_{hops}/loop_{loop}/pos_{pos}", "patching", "recovery")
PATCHING_GAP = Kind("{model}/{point}/hops_{hops}/gap", "patching_gap", "gap")

# Replicas (rdt_core.train.replicas): a trial training K models at once reports their mean under the usual
# names, and each replica's headline values (and its seed) in one table row, their spread in another table.
REPLICA_HEADLINE = (
    [LOSS.name(split="train")]
    + [kind.name(split=split) for split in ("train", "id", "ood") for kind in (ACC, ACC_CHOSEN, ACC_ORACLE)]
    + [kind.name(split=split) for split in ("train", "id", "ood") for kind in (PHASE_STEP, PHASE_REACHED)]
    + [HALTING.name(split=split, stat=stat) for split in ("id", "ood") for stat in ("acc", "mean_loops")]
)
REPLICA = Kind("replica/{replica}/{stat}", "replicas", stats=("seed", *REPLICA_HEADLINE))
REPLICA_STD = Kind("replica_std/{stat}", "replica_spread", stats=tuple(REPLICA_HEADLINE))

KINDS = [value for value in list(globals().values()) if isinstance(value, Kind)]

# The per-loop accuracy of a split at the end of a run, logged to MLflow as one curve: its step is the
# inference loop, not the optimizer step.
ACC_BY_LOOP_CURVE = Kind("acc_by_loop/{split}")

# What a run's MLflow metrics hold over training (everything else goes to its tables).
HEADLINE_KINDS = {
    STEP, LR, LOSS, TRAINED_LOOPS, CURRICULUM_MAX_HOPS, ELAPSED_S, RESUMED_FROM_STEP, TRAIN_S, N_PARAMS, WORLD_SIZE,
    FINISHED,
    ACC, ACC_CHOSEN, ACC_ORACLE, PHASE_STEP,
}
HEADLINE_HALTING_STATS = ("acc", "mean_loops", "gain")


def parse(name: str) -> tuple[Kind, dict[str, Any]] | None:
    """The kind of ``name`` and its field values; None for a name that is not the platform's."""
    for kind in KINDS:
        if (values := kind.match(name)) is not None:
            return kind, values
    return None


def is_headline(name: str) -> bool:
    """Whether a run's MLflow metrics hold ``name`` over training: accuracy per split at the trained
    and the chosen loop budget and its oracle, loss, learning rate, loop count, phases, time, size, the
    finished marker, and the configured halting rule's accuracy, cost and gain on the test splits."""
    parsed = parse(name)
    if parsed is None:
        return False
    kind, values = parsed
    if kind is HALTING:
        return values["stat"] in HEADLINE_HALTING_STATS and values["split"] != "train" and not is_validation(values["split"])
    return kind in HEADLINE_KINDS


VALIDATION_SUFFIX = "_val"  # the validation split of test split "id" is "id_val"


def validation_split(split: str) -> str:
    return f"{split}{VALIDATION_SUFFIX}"


def is_validation(split: str) -> bool:
    return split.endswith(VALIDATION_SUFFIX)


MEASURE, VALUE = "measure", "value"  # the two columns of a table's long form


def tables(metrics: Mapping[str, float]) -> dict[str, list[dict[str, Any]]]:
    """The values of every kind that has a table, in long form: one row per value, its kind's fields,
    then what it measures (the stat, or the kind's column) and the value. Long, because one table holds
    kinds of different fields and stats: pivoted, most of its cells were empty (the accuracy table: 63
    of 121) and the MLflow UI showed a few of its columns. Tables by name, rows in metric-name order."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(metrics):
        parsed = parse(name)
        if parsed is None or parsed[0].table is None:
            continue
        kind, values = parsed
        measure = values.pop("stat") if kind.stats else kind.column
        row = {**kind.implied, **values}
        if kind is HALTING_RULE:  # the thresholds as numbers, for a table sorted or filtered by them
            row["kl"], row["entropy"] = rule_thresholds(values["rule"])
        rows.setdefault(kind.table, []).append({**row, MEASURE: measure, VALUE: metrics[name]})
    return dict(sorted(rows.items()))


def from_tables(tables: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, float]:
    """The metrics that :func:`tables` turned into ``tables``, by name again (an empty cell, None or NaN,
    is no metric). Rows read back from JSON may hold integral floats (``2.0``) where numbers were. Runs
    logged before the long form hold pivoted rows (a column per measure); those are read too."""
    metrics: dict[str, float] = {}
    for table, rows in tables.items():
        kinds = [kind for kind in KINDS if kind.table == table]
        for raw in rows:
            row = {key: whole(key, value) for key, value in pivoted(raw).items() if not is_missing(value)}
            row_fields = {key for key in row if key in FIELD_PATTERNS}
            for kind in kinds:
                named = [name for name in kind.fields if name != "stat"]
                if row_fields != set(named) | set(kind.implied) or any(row[k] != v for k, v in kind.implied.items()):
                    continue
                values = {name: row[name] for name in named}
                for column in kind.stats or (kind.column,):
                    if column not in row:
                        continue
                    try:
                        name = kind.name(**values, **({"stat": column} if kind.stats else {}))
                    except ValueError:  # the row is of another kind of the table
                        break
                    metrics[name] = float(row[column])
    return metrics


def pivoted(row: Mapping[str, Any]) -> dict[str, Any]:
    """A long-form row as the pivoted row of its one value (``{..., measure: acc, value: 0.5}`` ->
    ``{..., acc: 0.5}``); a pivoted row as it is."""
    if MEASURE not in row:
        return dict(row)
    fields = {key: value for key, value in row.items() if key not in (MEASURE, VALUE)}
    return {**fields, row[MEASURE]: row[VALUE]}


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def whole(key: str, value: Any) -> Any:
    """A number field read back as a float (``2.0``) as the int it was."""
    return int(value) if key in NUMBER_FIELDS and isinstance(value, float) and value.is_integer() else value


def rule_name(kl: float | None, entropy: float | None, entropy_in_nats: bool) -> str:
    """A halting rule's name from its thresholds (None: off): ``kl_0.01_h_0.1`` (entropy relative to
    ln(n_classes)) or ``kl_0.01_h_0.5nats``. MLflow-safe (no ``+`` or ``=``), and free of ``_`` and ``/``
    inside a threshold, so that ``rule_thresholds`` reads it back."""

    def threshold(value: float | None) -> str:
        return "off" if value is None else f"{value:g}".replace("+", "")

    unit = "nats" if entropy_in_nats and entropy is not None else ""
    return f"kl_{threshold(kl)}_h_{threshold(entropy)}{unit}"


def rule_thresholds(rule: str) -> tuple[str, str]:
    """The KL and entropy thresholds a halting rule's name (``kl_0.01_h_0.1``, see ``rule_name``) spells: ``("0.01", "0.1")``, ``off`` for a threshold that is off."""
    found = re.fullmatch(r"kl_(?P<kl>[^_/]+)_h_(?P<h>[^_/]+)", rule)
    if found is None:
        raise ValueError(f"{rule!r} is not a halting rule's name")
    return found["kl"], found["h"]


def by_loop_curves(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """``acc_by_loop/<split>`` -> {inference loop: accuracy over the split's queries}."""
    curves: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        if (values := ACC_LOOP.match(name)) is not None:
            curves.setdefault(ACC_BY_LOOP_CURVE.name(split=values["split"]), {})[values["loop"]] = value
    return curves


def ours(result: Mapping[str, Any]) -> dict[str, float]:
    """The platform's numeric metrics in a report, without what Ray Tune adds (``training_iteration``...)."""
    return {
        key: float(value)
        for key, value in result.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and parse(key) is not None
    }


def names_of(kind: Kind, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The names of one kind among ``names``, with their field values."""
    return {name: values for name in names if (values := kind.match(name)) is not None}
