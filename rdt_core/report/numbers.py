"""The numbers a results page quotes, as Markdown tables: per setting, the mean ± sample std over seeds,
beside the structural nulls, with the tests the page cites (``rdt_core.report.stats``).

Each kind of table is a function of the sweep and its options, named in ``TABLES``; a figure list
(``rdt_core.report.figure_list``) says which tables each sweep's section of the page holds, and with
which options. ``by`` names the params (one, a list, or a mapping to headings) whose values tell the
settings apart: they are a table's first columns, headed by their names or the headings given. Settings
are compared on test splits at loop budgets chosen on validation splits; the best over loops on a test
split is labelled an oracle wherever it appears.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Iterable

from rdt_core.metrics import (
    ACC,
    ACC_CHOSEN,
    ACC_HOPS_CHOSEN,
    ACC_HOPS_LOOP,
    ACC_ORACLE,
    ACC_PREFIX,
    HALTING_HOPS,
    HALTING_HOPS_KL_ONLY,
    LENS_TOP1,
    LOOPS_CHOSEN,
    NULL,
    PATCHING,
    PATCHING_GAP,
    PHASE_STEP,
    STATE_NORM,
    names_of,
)
from rdt_core.report.runs import By, ReportError, Setting, Spread, Sweep, Trial, numbered_keys, param_names
from rdt_core.report.stats import binomial_upper_p, permutation_p, smallest_permutation_p, two_proportion_z
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
}
