"""The numbers a results page quotes, as Markdown tables: per setting, the mean ± sample std over seeds,
beside the structural nulls, with the tests the page cites (``rdt_core.report.stats``).

Each kind of table is a function of the sweep and its options, named in ``TABLES``; a figure list
(``rdt_core.report.figure_list``) says which tables each sweep's section of the page holds, and with
which options. ``by`` names the params (one, a list, or a mapping to headings) whose values tell the
settings apart: they are a table's first columns, headed by their names or the headings given. Settings
are compared on test splits at loop budgets chosen on validation splits; the best over loops on a test
split is labelled an oracle wherever it appears. ``over_seeds`` tests the page's claims with the seed as
the unit (a replicate has its own graph and initialisation, so its test queries are not independent
samples): each seed's value, a t test over seeds, and Holm's correction over the table's family of tests.
"""

from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from rdt_core.metrics import (
    ACC,
    ACC_CHOSEN,
    ACC_HOPS_CHOSEN,
    ACC_HOPS_LOOP,
    ACC_LOOP,
    ACC_ORACLE,
    ACC_PREFIX,
    HALTING,
    HALTING_HOPS,
    HALTING_HOPS_KL_ONLY,
    HALTING_KL_ONLY,
    HALTING_RULE,
    LENS_TOP1,
    LOOPS_CHOSEN,
    NULL,
    PATCHING,
    PATCHING_GAP,
    PHASE_STEP,
    STATE_NORM,
    Kind,
    names_of,
)
from rdt_core.report.runs import (
    REPLICATE_PARAM,
    By,
    ReportError,
    Setting,
    Spread,
    Sweep,
    Trial,
    numbered_keys,
    param_names,
)
from rdt_core.report.stats import (
    binomial_upper_p,
    holm,
    one_sample_t,
    permutation_p,
    smallest_permutation_p,
    two_proportion_z,
    welch_t,
)
from rdt_core.report.summary import varying_params

PHASE_SPLITS = ("train", "id", "ood")


# --- cells and tables ----------------------------------------------------------------------------------


def spread(values: Iterable[float | None], digits: int = 3) -> str:
    """``mean ± std (n=k)`` of the finite values; ``—`` for none."""
    found = Spread.of(v for v in values if v is not None)
    return found.text(digits) if found.n else "—"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table and the blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def headings(by: By) -> list[str]:
    """The headings of the columns of ``by``: the headings it maps the params to, else their names."""
    return list(by.values()) if isinstance(by, dict) else list(param_names(by))


def values(setting: Setting, key: str) -> list[float | None]:
    """One metric of each replicate of a setting (None where a replicate lacks it)."""
    return [trial.metrics.get(key) for trial in setting.replicates]


def reached(setting: Setting, key: str) -> str:
    """A phase onset: its spread over the replicates that reached the phase, and how many did."""
    found = [v for v in values(setting, key) if v is not None]
    return f"{spread(found, 0)} of {setting.n}" if found else f"not reached (0 of {setting.n})"


def id_hops(setting: Setting) -> list[int]:
    """The hop counts of the ``id`` test split that the setting reports an accuracy for."""
    return sorted(numbered_keys(setting.metrics, ACC_HOPS_CHOSEN, "hops", split="id"))


def setting_where(sweep: Sweep, where: dict[str, object]) -> Setting | None:
    """The one setting whose params have the values ``where`` gives (``{model.architecture: looped}``)."""
    found = [s for s in sweep.settings if all(s.params.get(key) == str(value) for key, value in where.items())]
    if len(found) > 1:
        raise ReportError(f"{where} matches {len(found)} settings of {sweep.experiment!r}, not one")
    return found[0] if found else None


def shared_number(sweep: Sweep, param: str) -> int:
    """A whole-number param of the sweep's first trial (one that all trials share, such as the steps)."""
    return int(sweep.trials[0].params[param])


# --- tables of final accuracies --------------------------------------------------------------------------


def grokking(sweep: Sweep, by: By, hops: int) -> list[str]:
    """Systematic generalisation: each split's final accuracy (the budget chosen on validation; train
    and ood also at the trained loops), ood at the evaluation best on its validation split and the ood
    oracle, the ``hops``-hop structural nulls, and the phase onsets."""
    rows = [
        [
            *key,
            spread(values(setting, ACC.name(split="train"))),
            spread(values(setting, ACC_CHOSEN.name(split="id"))),
            spread(values(setting, ACC.name(split="ood"))),
            spread(values(setting, ACC_CHOSEN.name(split="ood"))),
            spread(validation_stopped(sweep, setting, "ood")),
            spread(values(setting, ACC_ORACLE.name(split="ood"))),
            spread(values(setting, NULL.name(split="ood", hops=hops, stat="structural"))),
            spread(values(setting, NULL.name(split="id", hops=hops, stat="structural"))),
            *(reached(setting, PHASE_STEP.name(split=split)) for split in PHASE_SPLITS),
        ]
        for key, setting in sweep.settings_by(by)
    ]
    return table(
        [*headings(by), "train", "id (chosen)", "ood (trained loops)", "ood (chosen)",
         "ood (chosen, at the step best on ood_val)", "ood oracle (test, not a result)", "ood structural null",
         "id structural null", "train onset", "id onset", "ood onset"],
        rows,
    )


def validation_stopped(sweep: Sweep, setting: Setting, split: str) -> list[float | None]:
    """Test accuracy (at the chosen budget) at the evaluation where the validation split's was highest:
    early stopping on validation, never on test."""
    picked = []
    for trial in setting.replicates:
        validation = sweep.history(trial, ACC_CHOSEN.name(split=f"{split}_val"))
        test = sweep.history(trial, ACC_CHOSEN.name(split=split))
        if not validation:
            picked.append(None)
            continue
        best = max(validation, key=lambda step: (validation[step], -step))  # the earliest of ties
        picked.append(test.get(best))
    return picked


def onsets(sweep: Sweep, by: By, hops: int) -> list[str]:
    """The phase onsets of the three splits and the final accuracies at the chosen budget, beside the
    ``hops``-hop structural nulls."""
    rows = [
        [
            *key,
            *(reached(setting, PHASE_STEP.name(split=split)) for split in PHASE_SPLITS),
            spread(values(setting, ACC_CHOSEN.name(split="id"))),
            spread(values(setting, ACC_CHOSEN.name(split="ood"))),
            spread(values(setting, NULL.name(split="id", hops=hops, stat="structural"))),
            spread(values(setting, NULL.name(split="ood", hops=hops, stat="structural"))),
        ]
        for key, setting in sweep.settings_by(by)
    ]
    return table(
        [*headings(by), "train onset", "id onset", "ood onset", "id (chosen)", "ood (chosen)", "id null",
         "ood null"],
        rows,
    )


def windows(sweep: Sweep, by: By, count: int) -> list[str]:
    """Per setting and test split, the chosen-budget accuracy over training in ``count`` equal windows of
    the steps: each seed's mean over the evaluations inside a window, then their spread over seeds."""
    steps = shared_number(sweep, "train.steps")
    spans = [(i * steps // count + 1, (i + 1) * steps // count) for i in range(count)]
    rows = []
    for key, setting in sweep.settings_by(by):
        for split in ("id", "ood"):
            cells = []
            for low, high in spans:
                per_seed = []
                for trial in setting.replicates:
                    history = sweep.history(trial, ACC_CHOSEN.name(split=split))
                    inside = [value for step, value in history.items() if low <= step <= high]
                    per_seed.append(statistics.fmean(inside) if inside else None)
                cells.append(spread(per_seed))
            rows.append([*key, split, *cells])
    intro = "Over training, at the budget chosen on validation (mean over seeds, then over the evaluations of a window):"
    return [intro, "", *table([*headings(by), "split", *(f"steps {low}-{high}" for low, high in spans)], rows)]


def overthinking(sweep: Sweep, by: By) -> list[str]:
    """Per setting and hop count of the id split: accuracy at the trained loops, at the budget chosen on
    validation and at the last loop, the fall from the chosen budget to the last loop with its pooled z,
    and the structural null."""
    max_loops = shared_number(sweep, "model.max_loops")
    rows = []
    for key, setting in sweep.settings_by(by):
        trained = int(setting.params["train.train_loops"])
        queries = int(setting.replicates[0].params["data.n_test_queries"])
        for hops in id_hops(setting):
            chosen = values(setting, ACC_HOPS_CHOSEN.name(split="id", hops=hops))
            last = values(setting, ACC_HOPS_LOOP.name(split="id", hops=hops, loop=max_loops))
            fall = [c - l for c, l in zip(chosen, last) if c is not None and l is not None]
            z = two_proportion_z(
                statistics.fmean(c for c in chosen if c is not None),
                statistics.fmean(l for l in last if l is not None),
                queries * len(fall),
            ) if fall else math.nan
            rows.append([
                *key, str(hops), spread(values(setting, ACC_HOPS_LOOP.name(split="id", hops=hops, loop=trained))),
                spread(values(setting, LOOPS_CHOSEN.name(split="id", hops=hops)), 1), spread(chosen), spread(last),
                spread(fall), f"{z:.1f}", spread(values(setting, NULL.name(split="id", hops=hops, stat="structural"))),
            ])
    return table(
        [*headings(by), "hops", "at R loops", "loops chosen (id_val)", "at chosen", f"at {max_loops} loops",
         f"fall chosen -> {max_loops}", "z (pooled, conservative)", "structural null"],
        rows,
    )


def state_norms(sweep: Sweep, by: By, loops: list[int]) -> list[str]:
    """The norm of the state at the answer position after each of ``loops``: does it settle or grow?"""
    rows = [[*key, *(spread(values(setting, STATE_NORM.name(loop=loop))) for loop in loops)]
            for key, setting in sweep.settings_by(by)]
    intro = "Norm of the state at the answer position after loop t (`state_norm/loop_<t>`):"
    return [intro, "", *table([*headings(by), *(f"loop {loop}" for loop in loops)], rows)]


def halting(sweep: Sweep, by: By) -> list[str]:
    """Per setting and hop count: the paper's rule (KL and entropy) and KL alone, the loops they save
    against the largest budget and the accuracy they lose to it, and their gain over a fixed budget of
    the same mean cost."""
    max_loops = shared_number(sweep, "model.max_loops")
    rows = []
    for key, setting in sweep.settings_by(by):
        for hops in id_hops(setting):
            at_max = values(setting, ACC_HOPS_LOOP.name(split="id", hops=hops, loop=max_loops))
            for rule, kind in (("KL + entropy", HALTING_HOPS), ("KL alone", HALTING_HOPS_KL_ONLY)):
                accuracy = values(setting, kind.name(split="id", hops=hops, stat="acc"))
                loops = values(setting, kind.name(split="id", hops=hops, stat="mean_loops"))
                saved = [1 - l / max_loops for l in loops if l is not None]
                lost = [m - a for m, a in zip(at_max, accuracy) if m is not None and a is not None]
                rows.append([
                    *key, str(hops), rule, spread(accuracy), spread(loops, 2), spread(saved, 2), spread(at_max),
                    spread(lost), spread(values(setting, kind.name(split="id", hops=hops, stat="fixed_acc"))),
                    spread(values(setting, kind.name(split="id", hops=hops, stat="gain"))),
                ])
    return table(
        [*headings(by), "hops", "rule", "accuracy", "mean loops", f"loops saved (of {max_loops})",
         f"accuracy at {max_loops} loops", f"lost against {max_loops} loops", "fixed budget, same mean cost",
         "gain over it"],
        rows,
    )


def depth(sweep: Sweep, by: By) -> list[str]:
    """Per setting and hop count: test accuracy at the budget chosen on validation, the loops chosen,
    the accuracy of queries whose prefix was trained and of those whose prefix was not, the null."""
    rows = [
        [
            *key, str(hops),
            spread(values(setting, ACC_HOPS_CHOSEN.name(split="id", hops=hops))),
            spread(values(setting, LOOPS_CHOSEN.name(split="id", hops=hops)), 1),
            spread(values(setting, ACC_PREFIX.name(split="id", hops=hops, kind="trained"))),
            spread(values(setting, ACC_PREFIX.name(split="id", hops=hops, kind="novel"))),
            spread(values(setting, NULL.name(split="id", hops=hops, stat="structural"))),
        ]
        for key, setting in sweep.settings_by(by)
        for hops in id_hops(setting)
    ]
    return table(
        [*headings(by), "hops", "id (chosen)", "loops chosen", "prefix trained", "prefix novel",
         "structural null"],
        rows,
    )


def hop_accuracy(sweep: Sweep, by: By, setting: str | None = None) -> list[str]:
    """Test accuracy at the chosen budget, a column per hop count, and a last row of the structural null
    (mean over every trial): the depth table at a glance. ``setting``: the settings in one column of that
    name, each the format of its values of ``by`` (``"{0}, curriculum {1}"``), in place of a column each."""
    keyed = sweep.settings_by(by)
    hops = sorted({h for _, found in keyed for h in id_hops(found)})
    named = ["setting"] if setting else headings(by)
    rows = [[*([setting.format(*key)] if setting else key),
             *(spread(values(found, ACC_HOPS_CHOSEN.name(split="id", hops=h)), 2) for h in hops)]
            for key, found in keyed]
    nulls = [Spread.of(v for _, s in keyed for v in values(s, NULL.name(split="id", hops=h, stat="structural"))
                       if v is not None) for h in hops]
    blank = [""] * (len(named) - 1)
    rows.append(["structural null (mean)", *blank, *(f"{null.mean:.3f}" for null in nulls)])
    return table([*named, *(f"{h} hops" for h in hops)], rows)


# --- the inside of a model -------------------------------------------------------------------------------


def lens(sweep: Sweep, where: dict[str, object], hops: int) -> list[str]:
    """The logit lens of the setting ``where`` picks, at the answer position: the top-1 share of the
    bridge entity and of the answer after each loop, on ``hops``-hop id and ood test queries."""
    setting = setting_where(sweep, where)
    if setting is None:
        return []
    loops = sorted({v["loop"] for v in names_of(LENS_TOP1, setting.metrics).values()})
    rows = [
        [split, target, *(spread(values(setting, LENS_TOP1.name(split=split, hops=hops, target=target, loop=loop)), 2)
                          for loop in loops)]
        for split in ("id", "ood")
        for target in ("bridge_1", "answer")
    ]
    described = ", ".join(map(str, where.values()))
    intro = f"Logit lens of the {described} model at the answer position, top-1 share ({hops}-hop test queries):"
    return [intro, "", *table(["split", "target", *(f"loop {loop}" for loop in loops)], rows)]


def patching(sweep: Sweep, where: dict[str, object], hops: int) -> list[str]:
    """Activation patching of the state of the setting ``where`` picks, first relation corrupted: the
    share of the logit gap recovered after each loop at each position, beside the same reading of a
    randomly initialised model, and the gap itself."""
    setting = setting_where(sweep, where)
    if setting is None:
        return []
    state = [v for v in names_of(PATCHING, setting.metrics).values() if v["point"] == "state" and v["hops"] == hops]
    loops, positions = sorted({v["loop"] for v in state}), sorted({v["pos"] for v in state})
    rows = [
        [model, f"pos {pos}", *(spread(values(setting, PATCHING.name(model=model, point="state", hops=hops, loop=loop,
                                                                      pos=pos)), 2) for loop in loops)]
        for pos in positions
        for model in ("patching", "patching_null")
    ]
    gaps = [f"{model}: {spread(values(setting, PATCHING_GAP.name(model=model, point='state', hops=hops)), 2)}"
            for model in ("patching", "patching_null")]
    intro = ("Activation patching of the state, first relation corrupted, share of the logit gap recovered "
             "(patching_null: a randomly initialised model of the same shape):")
    return [intro, "", *table(["model", "position", *(f"after loop {loop}" for loop in loops)], rows),
            f"Logit gap between the clean and the corrupted run (the shares' denominator): {'; '.join(gaps)}", ""]


# --- tests ---------------------------------------------------------------------------------------------------


def seed_tests(sweep: Sweep, split: str, hops: int, per_hop: bool = False) -> list[str]:
    """Each trial's final chosen-budget accuracy on ``split`` as a count of its test queries, with the
    one-sided binomial p against its own ``hops``-hop structural null; then each setting's seeds pooled
    (counts summed, against the mean of their nulls). ``per_hop``: the accuracy of ``hops``-hop queries
    alone (else the split's, which is the same where the split holds one hop count)."""
    rows, varying = [], varying_params(sweep.settings)
    for setting in sweep.settings:
        label = ", ".join(f"{key}={setting.params.get(key)}" for key in varying) or "-"
        found = [(trial.name, c) for trial in setting.replicates if (c := counts(trial, split, hops, per_hop)) is not None]
        if len(found) > 1:
            correct, n = sum(c[0] for _, c in found), sum(c[1] for _, c in found)
            found.append((f"all {len(found)} seeds", (correct, n, statistics.fmean(c[2] for _, c in found))))
        for name, (correct, n, null) in found:
            rows.append([name, label, f"{correct}/{n}", f"{null:.3f}", f"{binomial_upper_p(correct, n, null):.2g}"])
    return table(
        ["trial", "setting", f"{split} {hops}-hop correct (chosen)", "structural null", "binomial p (upper)"], rows
    )


def untrained_hop_tests(sweep: Sweep, split: str) -> list[str]:
    """``seed_tests`` of each hop count deeper than the trained ones (``data.train_max_hops``)."""
    trained = shared_number(sweep, "data.train_max_hops")
    hops = sorted({h for setting in sweep.settings for h in id_hops(setting)})
    return [line for h in hops if h > trained for line in seed_tests(sweep, split, h, per_hop=True)]


def counts(trial: Trial, split: str, hops: int, per_hop: bool) -> tuple[int, int, float] | None:
    """(correct test queries at the chosen budget, test queries, structural null) of one trial."""
    key = ACC_HOPS_CHOSEN.name(split=split, hops=hops) if per_hop else ACC_CHOSEN.name(split=split)
    accuracy = trial.metrics.get(key)
    null = trial.metrics.get(NULL.name(split=split, hops=hops, stat="structural"))
    if accuracy is None or null is None:
        return None
    n = int(trial.params["data.n_test_queries"])
    return round(accuracy * n), n, null


def permutation(sweep: Sweep, greater: dict[str, object], than: dict[str, object], split: str) -> list[str]:
    """The exact permutation test that the setting ``greater`` beats the setting ``than`` on the final
    chosen-budget accuracy of ``split``, with the smallest p its numbers of seeds allow."""
    settings = [setting_where(sweep, where) for where in (greater, than)]
    if None in settings:
        return []
    a, b = ([v for v in values(setting, ACC_CHOSEN.name(split=split)) if v is not None] for setting in settings)
    if not a or not b:
        return []
    p = permutation_p(a, b)
    named = [", ".join(map(str, where.values())) for where in (greater, than)]
    return [f"{named[0]} > {named[1]} on final {split} (chosen): exact permutation p = {p:.3f} "
            f"(n = {len(a)} + {len(b)}; the smallest possible p is {smallest_permutation_p(len(a), len(b)):.3f})", ""]


# --- statistics over seeds: the seed is the unit -------------------------------------------------------------

ALPHA = 0.05
SEED_IS_THE_UNIT = ("Seed is the unit: each replicate (its own graph and initialisation) gives one value; "
                    "{m} tests, Holm-corrected.")


@dataclass(frozen=True)
class SeedClaim:
    """One claim of the page, as the values it rests on: one per seed, in replicate order (None where a
    seed lacks a metric). ``than``: the other setting's values, for a claim that one setting beats
    another. ``both_ways``: a claim that may go either way (halting may gain or lose), so both one-sided
    tests are made, and both count in the family."""

    claim: str
    setting: str
    values: list[float | None]
    than: list[float | None] | None = None
    both_ways: bool = False


def present(values: list[float | None]) -> list[float]:
    """The seeds that have a value: a seed that lacks a metric is left out of its test."""
    return [value for value in values if value is not None and math.isfinite(value)]


def in_replicate_order(setting: Setting) -> list[Trial]:
    """A setting's seeds by their replicate index, so that a seed has the same place in every row."""
    return sorted(setting.replicates, key=lambda trial: trial.number(REPLICATE_PARAM) or 0)


def per_seed(setting: Setting, value: Callable[[Trial], float | None]) -> list[float | None]:
    return [value(trial) for trial in in_replicate_order(setting)]


def difference(trial: Trial, minuend: str, subtrahend: str) -> float | None:
    """One metric of a trial less another: a seed compared with its own null, graph or budget."""
    first, second = trial.metrics.get(minuend), trial.metrics.get(subtrahend)
    return None if first is None or second is None else first - second


def described(where: dict[str, object]) -> str:
    return ", ".join(f"{key}={value}" for key, value in where.items())


def found_setting(sweep: Sweep, where: dict[str, object]) -> Setting:
    """The setting ``where`` picks; a test of a setting that is not there is a mistake in the list, not
    a test without seeds."""
    setting = setting_where(sweep, where)
    if setting is None:
        raise ReportError(f"over_seeds: no setting of {sweep.experiment!r} has {described(where)}")
    return setting


def metric_name(kind: Kind, **fields: Any) -> str:
    """``kind.name``, with a field the list spelt wrong (a target, a rule) reported as the list's error."""
    try:
        return kind.name(**fields)
    except ValueError as error:
        raise ReportError(f"over_seeds: {error}") from None


def above_null(sweep: Sweep, where: dict[str, object], split: str, hops: int, per_hop: bool = False) -> SeedClaim:
    """Chosen-budget test accuracy above the structural null of the seed's own graph. ``per_hop``: the
    accuracy of ``hops``-hop queries alone (else the whole split's)."""
    accuracy = ACC_HOPS_CHOSEN.name(split=split, hops=hops) if per_hop else ACC_CHOSEN.name(split=split)
    null = NULL.name(split=split, hops=hops, stat="structural")
    queries = f"{split} {hops}-hop" if per_hop else split
    return SeedClaim(f"{queries} accuracy (chosen) above its {hops}-hop structural null", described(where),
                     per_seed(found_setting(sweep, where), lambda trial: difference(trial, accuracy, null)))


def greater(sweep: Sweep, where: dict[str, object], than: dict[str, object], split: str,
            hops: int | None = None) -> SeedClaim:
    """Chosen-budget test accuracy of one setting above another's: seeds of two settings are not
    paired, so the test compares the two samples."""
    accuracy = ACC_CHOSEN.name(split=split) if hops is None else ACC_HOPS_CHOSEN.name(split=split, hops=hops)
    first, second = (per_seed(found_setting(sweep, w), lambda trial: trial.metrics.get(accuracy)) for w in (where, than))
    queries = split if hops is None else f"{split} {hops}-hop"
    return SeedClaim(f"{queries} accuracy (chosen) above the other setting's", f"{described(where)} vs "
                     f"{described(than)}", first, than=second)


def overthinking_fall(sweep: Sweep, where: dict[str, object], hops: int, at: int | str) -> SeedClaim:
    """Accuracy at the budget chosen on validation less accuracy at a larger fixed budget (``at``: a
    loop count, ``3R``: three times the trained loops, or ``max``), on id ``hops``-hop queries: does
    looping longer than trained lose what the model knew?"""
    setting = found_setting(sweep, where)
    loop = loop_at(setting, at)
    chosen, fixed = ACC_HOPS_CHOSEN.name(split="id", hops=hops), ACC_HOPS_LOOP.name(split="id", hops=hops, loop=loop)
    named = f" ({at})" if isinstance(at, str) else ""
    return SeedClaim(f"id {hops}-hop accuracy falls from the chosen budget to {loop} loops{named}", described(where),
                     per_seed(setting, lambda trial: difference(trial, chosen, fixed)))


def loop_at(setting: Setting, at: int | str) -> int:
    """The loop count ``at`` names for a setting: itself, ``3R`` (capped at the largest budget) or ``max``."""
    max_loops = int(setting.params["model.max_loops"])
    if at == "max":
        return max_loops
    if at == "3R":
        return min(3 * int(setting.params["train.train_loops"]), max_loops)
    if isinstance(at, int) and 1 <= at <= max_loops:
        return at
    raise ReportError(f"over_seeds: at: expected a loop count up to {max_loops}, '3R' or 'max', got {at!r}")


def halting_gain(sweep: Sweep, where: dict[str, object], rule: str, against: str, hops: int | None = None) -> SeedClaim:
    """A halting rule on id queries (``configured``, ``kl_only`` or a rule of the grid) against a fixed
    budget of the same mean cost (its ``gain``) or against the largest budget (its accuracy less that
    budget's, beside the loops it saves). Either sign would be a finding, so both are tested.
    ``hops``: the queries of one hop count (the grid's rules are reported over all of them)."""
    setting = found_setting(sweep, where)
    stat = halting_names(rule, hops)
    max_loops = int(setting.params["model.max_loops"])
    mean_loops = statistics.fmean(present(per_seed(setting, lambda trial: trial.metrics.get(stat("mean_loops"))))
                                  or [math.nan])
    queries = "id" if hops is None else f"id {hops}-hop"
    if against == "fixed":
        return SeedClaim(f"{rule} halting rule against a fixed budget of its mean cost ({mean_loops:.1f} loops), "
                         f"{queries}", described(where), per_seed(setting, lambda t: t.metrics.get(stat("gain"))),
                         both_ways=True)
    if against == "max":
        at_max = (ACC_LOOP.name(split="id", loop=max_loops) if hops is None
                  else ACC_HOPS_LOOP.name(split="id", hops=hops, loop=max_loops))
        return SeedClaim(f"{rule} halting rule against {max_loops} loops, {queries} (saves "
                         f"{max_loops - mean_loops:.1f} of {max_loops} loops)", described(where),
                         per_seed(setting, lambda trial: difference(trial, stat("acc"), at_max)), both_ways=True)
    raise ReportError(f"over_seeds: against: expected 'fixed' or 'max', got {against!r}")


def halting_names(rule: str, hops: int | None) -> Callable[[str], str]:
    """The metric name of each stat of a halting rule on id queries, of one hop count or of all."""
    if rule == "configured":
        return lambda stat: (HALTING.name(split="id", stat=stat) if hops is None
                             else HALTING_HOPS.name(split="id", hops=hops, stat=stat))
    if rule == "kl_only":
        return lambda stat: (HALTING_KL_ONLY.name(split="id", stat=stat) if hops is None
                             else HALTING_HOPS_KL_ONLY.name(split="id", hops=hops, stat=stat))
    if hops is not None:
        raise ReportError(f"over_seeds: rule {rule!r}: a rule of the grid is reported over all hop counts; leave out hops")
    metric_name(HALTING_RULE, split="id", rule=rule, stat="acc")  # a misspelt rule fails here, by name
    return lambda stat: HALTING_RULE.name(split="id", rule=rule, stat=stat)


def lens_above_chance(sweep: Sweep, where: dict[str, object], split: str, hops: int, target: str,
                      loop: int) -> SeedClaim:
    """The logit lens's top-1 share of ``target`` after ``loop`` above chance, 1 / n_entities."""
    top1 = metric_name(LENS_TOP1, split=split, hops=hops, target=target, loop=loop)
    return SeedClaim(
        f"logit lens: {target} top-1 after loop {loop} above chance ({split} {hops}-hop)", described(where),
        per_seed(found_setting(sweep, where), lambda trial: lens_over_chance(trial, top1)),
    )


def lens_over_chance(trial: Trial, top1: str) -> float | None:
    share = trial.metrics.get(top1)
    return None if share is None else share - 1 / int(trial.params["data.n_entities"])


def patching_above_null(sweep: Sweep, where: dict[str, object], hops: int, pos: int, loop: int) -> SeedClaim:
    """Activation patching of the state: the share of the logit gap recovered at ``pos`` after ``loop``
    above the same reading of a randomly initialised model of the seed. The null model's gap is in the
    claim: where it is near zero, the null's shares divide by it and are noise."""
    setting = found_setting(sweep, where)
    trained, null = (metric_name(PATCHING, model=model, point="state", hops=hops, loop=loop, pos=pos)
                     for model in ("patching", "patching_null"))
    gap = PATCHING_GAP.name(model="patching_null", point="state", hops=hops)
    null_gap = statistics.fmean(present(per_seed(setting, lambda trial: trial.metrics.get(gap))) or [math.nan])
    return SeedClaim(f"patching the state at pos {pos} after loop {loop} recovers more than in a random model "
                     f"({hops}-hop; the random model's mean logit gap: {null_gap:.2f})", described(where),
                     per_seed(setting, lambda trial: difference(trial, trained, null)))


SEED_TESTS: dict[str, Callable[..., SeedClaim]] = {
    "above_null": above_null,
    "greater": greater,
    "overthinking_fall": overthinking_fall,
    "halting_gain": halting_gain,
    "lens_above_chance": lens_above_chance,
    "patching_above_null": patching_above_null,
}


def tested(claim: SeedClaim) -> tuple[str, list[float]]:
    """The test cell of a claim and its one-sided p-values: that the value is above zero (one seed's
    setting above the other's), and for a claim either way also that it is below."""
    values = present(claim.values)
    if claim.than is None:
        t, df, p = one_sample_t(values)
        below = one_sample_t([-value for value in values])[2]
        test = "one-sample t" + statistic_text(t, f"{df:.0f}")
    else:
        other = present(claim.than)
        t, df, p = welch_t(values, other)
        below = welch_t(other, values)[2]
        exact = f"; exact perm. p = {permutation_p(values, other):.3f}" if values and other else ""
        test = "Welch t" + statistic_text(t, f"{df:.1f}") + exact
    return test, [p, below] if claim.both_ways else [p]


def statistic_text(t: float, df: str) -> str:
    """`` = t, df = ...`` of a t test that could be made; an infinite t says why: seeds that agree
    exactly leave the test nothing to scale by, and its p is then an exact test's (``stats.one_sample_t``)."""
    if math.isnan(t):
        return ""
    agree = " (the seeds agree exactly: exact sign-flip or permutation p)" if math.isinf(t) else ""
    return f" = {t:.2f}{agree}, df = {df}"


def p_text(p: float) -> str:
    """A p-value to three decimals, a smaller one in scientific notation; — where no test was made."""
    if math.isnan(p):
        return "—"
    return f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.1e}"


def p_cell(pvalues: list[float]) -> str:
    """One p, or the p above zero and the p below it of a claim either way."""
    if len(pvalues) == 1:
        return p_text(pvalues[0])
    return f"{p_text(pvalues[0])} (> 0); {p_text(pvalues[1])} (< 0)"


def verdict(claim: SeedClaim, adjusted: list[float]) -> str:
    """What the family's Holm-adjusted p-values let the page say of one claim."""
    if any(math.isnan(p) for p in adjusted):
        return "too few seeds"
    if not claim.both_ways:
        return "holds" if adjusted[0] < ALPHA else "not shown"
    return "gains" if adjusted[0] < ALPHA else "loses" if adjusted[1] < ALPHA else "no difference shown"


def seed_cells(claim: SeedClaim) -> tuple[str, str]:
    """Each seed's value, in replicate order (— for a seed without it), and their mean ± sd (n); a
    comparison of two settings gives both, the first setting's first."""
    samples = [claim.values] if claim.than is None else [claim.values, claim.than]
    listed = [", ".join("—" if v is None else f"{v:.3f}" for v in sample) for sample in samples]
    return " vs ".join(listed), " vs ".join(spread(sample) for sample in samples)


def over_seeds(sweep: Sweep, rows: list[dict[str, Any]]) -> list[str]:
    """Claims of the page tested with the seed as the unit, a row each: each seed's value, the t test
    over seeds, and the p adjusted by Holm over the table, which is one family of tests. ``rows``: a
    test each, ``{test: KIND, ...its options}`` (``SEED_TESTS``)."""
    claims = [SEED_TESTS[spec["test"]](sweep, **{k: v for k, v in spec.items() if k != "test"}) for spec in rows]
    tests = [tested(claim) for claim in claims]
    family = [p for _, pvalues in tests for p in pvalues]
    adjusted, m = iter(holm(family)), sum(not math.isnan(p) for p in family)
    lines = []
    for claim, (test, pvalues) in zip(claims, tests):
        corrected = [next(adjusted) for _ in pvalues]
        lines.append([claim.claim, claim.setting, *seed_cells(claim), test, p_cell(pvalues), p_cell(corrected),
                      verdict(claim, corrected)])
    header = ["claim", "setting", "each seed (replicate order)", "mean ± sd (n)", "test", "p (one-sided)",
              f"Holm p (m = {m})", "verdict"]
    return [*table(header, lines), SEED_IS_THE_UNIT.format(m=m), ""]


def check_rows(rows: Any) -> None:
    """Each row of ``over_seeds`` names a known test and only the options its function takes (a
    TypeError, as a binding's is): a figure list checks it with the table's own options
    (``OPTION_CHECKS``), so a row's unknown test or misspelt key is refused naming the list's file and
    the key, before anything is drawn."""
    if not isinstance(rows, list):
        raise TypeError(f"rows: expected a list of tests, got {rows!r}")
    for index, spec in enumerate(rows):
        test = spec.get("test") if isinstance(spec, dict) else None
        if test not in SEED_TESTS:
            raise TypeError(f"rows[{index}].test: expected one of {', '.join(SEED_TESTS)}, got {test!r}")
        try:
            inspect.signature(SEED_TESTS[test]).bind(None, **{k: v for k, v in spec.items() if k != "test"})
        except TypeError as error:
            raise TypeError(f"rows[{index}] ({test}): {error}") from None


TABLES: dict[str, Callable[..., list[str]]] = {
    "grokking": grokking,
    "onsets": onsets,
    "windows": windows,
    "overthinking": overthinking,
    "state_norms": state_norms,
    "halting": halting,
    "depth": depth,
    "hop_accuracy": hop_accuracy,
    "lens": lens,
    "patching": patching,
    "seed_tests": seed_tests,
    "untrained_hop_tests": untrained_hop_tests,
    "permutation": permutation,
    "over_seeds": over_seeds,
}
# What a table's options hold beyond what its signature says: checked where the options are (a TypeError).
OPTION_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {"over_seeds": lambda options: check_rows(options["rows"])}
