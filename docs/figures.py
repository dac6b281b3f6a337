"""Every figure and number of docs/results.md, from the sweeps kept in docs/sweeps/ (one export per sweep,
``python -m rdt_core.report NAME --export docs/sweeps/NAME.json.gz``): ``python docs/figures.py``.

It redraws each sweep's phase diagrams (``rdt_core.report``, from the export: no MLflow store needed) as
docs/figures/NAME/*.png with the sweep's summary table, and writes docs/numbers.md: per sweep and setting,
the mean ± sample std over seeds of what results.md quotes, beside the nulls, with the tests it cites.
Settings are compared on test splits only at loop budgets chosen on validation splits; the best over
loops on a test split is labelled an oracle wherever it appears.
"""

from __future__ import annotations

import math
import statistics
import sys
from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rdt_core.metrics import (  # noqa: E402
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
    NULL_CHANCE,
    PATCHING,
    PATCHING_GAP,
    PHASE_STEP,
    STATE_NORM,
    names_of,
)
from rdt_core.report.diagrams import draw_sweep  # noqa: E402
from rdt_core.report.export import load_export  # noqa: E402
from rdt_core.report.runs import Setting, Spread, Sweep  # noqa: E402
from rdt_core.report.summary import varying_params  # noqa: E402

DOCS = Path(__file__).resolve().parent
SWEEPS, FIGURES, NUMBERS = DOCS / "sweeps", DOCS / "figures", DOCS / "numbers.md"
# The diagrams drawn for each sweep (those its question needs), in the order results.md shows them.
DIAGRAMS = {
    "grokking": ["grokking"],
    "phi": ["grokking"],
    "overthinking": ["overthinking"],
    "overthinking-long": [],
    "injection": [],
    "depth": ["depth"],
    "halting": ["halting"],
}


# --- statistics -------------------------------------------------------------------------------------


def spread(values: Iterable[float | None], digits: int = 3) -> str:
    """``mean ± std (n=k)`` of the finite values; ``—`` for none."""
    found = Spread.of(v for v in values if v is not None)
    return found.text(digits) if found.n else "—"


def binomial_upper_p(correct: int, n: int, p0: float) -> float:
    """P(X >= correct) for X ~ Binomial(n, p0): how often a model at the null scores this much."""
    return sum(math.comb(n, k) * p0**k * (1 - p0) ** (n - k) for k in range(correct, n + 1))


def permutation_p(a: list[float], b: list[float]) -> float:
    """One-sided exact permutation test that mean(a) > mean(b): the share of the relabellings of the
    pooled values whose difference of means is at least the observed one (3 against 3: at least 0.05)."""
    pooled, observed = a + b, statistics.fmean(a) - statistics.fmean(b)
    differences = []
    for chosen in combinations(range(len(pooled)), len(a)):
        first = [pooled[i] for i in chosen]
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        differences.append(statistics.fmean(first) - statistics.fmean(rest))
    return sum(d >= observed - 1e-12 for d in differences) / len(differences)


def two_proportion_z(p1: float, p2: float, n: int) -> float:
    """z of p1 - p2 for two proportions over n queries each, as if independent: read at two loop counts
    of the same queries the pair is positively correlated, so this z understates the evidence."""
    pooled = (p1 + p2) / 2
    standard_error = math.sqrt(2 * pooled * (1 - pooled) / n) if 0 < pooled < 1 else math.inf
    return (p1 - p2) / standard_error


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def values(setting: Setting, key: str) -> list[float | None]:
    """One metric of each replicate of a setting (None where a replicate lacks it)."""
    return [trial.metrics.get(key) for trial in setting.replicates]


def by(sweep: Sweep, *params: str) -> dict[tuple[str, ...], Setting]:
    """The sweep's settings keyed by the values of ``params``."""
    return {tuple(s.params.get(p, "") for p in params): s for s in sweep.settings}


def reached(setting: Setting, key: str) -> str:
    found = [v for v in values(setting, key) if v is not None]
    return f"{spread(found, 0)} of {setting.n}" if found else f"not reached (0 of {setting.n})"


# --- the sweeps ---------------------------------------------------------------------------------------


def grokking(sweep: Sweep) -> list[str]:
    """Looped against vanilla: final accuracies at the budget chosen on validation, the validation-stopped
    step, onsets, the ood null and each seed's binomial test against it, and looped > vanilla."""
    lines = ["## grokking", ""]
    rows, ood_final = [], {}
    for (architecture,), setting in sorted(by(sweep, "model.architecture").items()):
        ood_final[architecture] = [v for v in values(setting, ACC_CHOSEN.name(split="ood")) if v is not None]
        rows.append([
            architecture,
            spread(values(setting, ACC.name(split="train"))),
            spread(values(setting, ACC_CHOSEN.name(split="id"))),
            spread(values(setting, ACC.name(split="ood"))),
            spread(ood_final[architecture]),
            spread(validation_stopped(sweep, setting, "ood")),
            spread(values(setting, ACC_ORACLE.name(split="ood"))),
            spread(values(setting, NULL.name(split="ood", hops=2, stat="structural"))),
            spread(values(setting, NULL.name(split="id", hops=2, stat="structural"))),
            *(reached(setting, PHASE_STEP.name(split=split)) for split in ("train", "id", "ood")),
        ])
    lines += table(
        ["architecture", "train", "id (chosen)", "ood (trained loops)", "ood (chosen)",
         "ood (chosen, at the step best on ood_val)", "ood oracle (test, not a result)", "ood structural null",
         "id structural null", "train onset", "id onset", "ood onset"],
        rows,
    )
    lines += seed_tests(sweep, "ood", 2)
    lines += ["Over training, at the budget chosen on validation (mean over seeds, then over the evaluations of a window):", ""]
    lines += windows(sweep, "model.architecture", [(1, 5000), (5001, 10000), (10001, 15000), (15001, 20000)])
    lines += inside(sweep)
    if len(ood_final) == 2 and all(ood_final.values()):
        p = permutation_p(ood_final["looped"], ood_final["vanilla"])
        lines += [f"looped > vanilla on final ood (chosen): exact permutation p = {p:.3f} "
                  f"(n = {len(ood_final['looped'])} + {len(ood_final['vanilla'])}; the smallest possible p is "
                  f"{1 / math.comb(sum(map(len, ood_final.values())), len(ood_final['looped'])):.3f})", ""]
    return lines


def windows(sweep: Sweep, param: str, spans: list[tuple[int, int]]) -> list[str]:
    """Per setting and split, the mean over seeds of the chosen-budget accuracy, averaged over the
    evaluations that fall in each span of steps, with the spread over seeds of those averages."""
    rows = []
    for (value,), setting in sorted(by(sweep, param).items(), key=lambda item: sortable(item[0][0])):
        for split in ("id", "ood"):
            cells = []
            for low, high in spans:
                per_seed = []
                for trial in setting.replicates:
                    history = sweep.history(trial, ACC_CHOSEN.name(split=split))
                    inside = [v for step, v in history.items() if low <= step <= high]
                    per_seed.append(statistics.fmean(inside) if inside else None)
                cells.append(spread(per_seed))
            rows.append([value, split, *cells])
    return table([param, "split", *(f"steps {low}-{high}" for low, high in spans)], rows)


def inside(sweep: Sweep) -> list[str]:
    """The looped setting's logit lens at the answer position (top-1 share of the bridge entity and of the
    answer after each loop, id and ood 2-hop queries) and activation patching of the state (share of the
    logit gap recovered, first relation's position and last position) beside a random model's."""
    looped = by(sweep, "model.architecture").get(("looped",))
    if looped is None:
        return []
    loops = sorted({v["loop"] for v in names_of(LENS_TOP1, looped.metrics).values()})
    rows = [[split, target, *(spread(values(looped, LENS_TOP1.name(split=split, hops=2, target=target, loop=loop)), 2)
                             for loop in loops)]
            for split in ("id", "ood") for target in ("bridge_1", "answer")]
    lines = ["Logit lens of the looped model at the answer position, top-1 share (2-hop test queries):", ""]
    lines += table(["split", "target", *(f"loop {loop}" for loop in loops)], rows)
    patched = sorted({v["loop"] for v in names_of(PATCHING, looped.metrics).values()
                      if (v["model"], v["point"]) == ("patching", "state")})
    rows = [[model, f"pos {pos}", *(spread(values(looped, PATCHING.name(model=model, point="state", hops=2, loop=loop, pos=pos)), 2)
                                   for loop in patched)]
            for pos in (1, 2) for model in ("patching", "patching_null")]
    lines += ["Activation patching of the state, first relation corrupted, share of the logit gap recovered "
              "(patching_null: a randomly initialised model of the same shape):", ""]
    gaps = [f"{model}: {spread(values(looped, PATCHING_GAP.name(model=model, point='state', hops=2)), 2)}"
            for model in ("patching", "patching_null")]
    lines += table(["model", "position", *(f"after loop {loop}" for loop in patched)], rows)
    return lines + [f"Logit gap between the clean and the corrupted run (the shares' denominator): {'; '.join(gaps)}", ""]


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


def seed_tests(sweep: Sweep, split: str, hops: int, per_hop: bool = False) -> list[str]:
    """Each trial's final chosen-budget accuracy on ``split`` as a count of its test queries, with the
    one-sided binomial p against its own structural null; then each setting's seeds pooled (counts
    summed, against the mean of their nulls). ``per_hop``: the accuracy of ``hops``-hop queries alone
    (else the split's, which is the same where the split holds one hop count)."""
    rows, varying = [], varying_params(sweep.settings)
    for setting in sweep.settings:
        label = ", ".join(f"{key}={setting.params.get(key)}" for key in varying) or "-"
        found = [(trial.name, c) for trial in setting.replicates
                 if (c := counts(trial, split, hops, per_hop)) is not None]
        if len(found) > 1:
            correct, n = sum(c[0] for _, c in found), sum(c[1] for _, c in found)
            found.append((f"all {len(found)} seeds", (correct, n, statistics.fmean(c[2] for _, c in found))))
        for name, (correct, n, null) in found:
            rows.append([name, label, f"{correct}/{n}", f"{null:.3f}", f"{binomial_upper_p(correct, n, null):.2g}"])
    return table(["trial", "setting", f"{split} {hops}-hop correct (chosen)", "structural null", "binomial p (upper)"],
                 rows)


def counts(trial, split: str, hops: int, per_hop: bool) -> tuple[int, int, float] | None:
    """(correct test queries at the chosen budget, test queries, structural null) of one trial."""
    key = ACC_HOPS_CHOSEN.name(split=split, hops=hops) if per_hop else ACC_CHOSEN.name(split=split)
    accuracy = trial.metrics.get(key)
    null = trial.metrics.get(NULL.name(split=split, hops=hops, stat="structural"))
    if accuracy is None or null is None:
        return None
    n = int(trial.params.get("data.n_test_queries", "128"))
    return round(accuracy * n), n, null


def phi(sweep: Sweep) -> list[str]:
    """Onsets of the three stages and final accuracies per inferred ratio."""
    rows = []
    for (ratio,), setting in sorted(by(sweep, "data.inferred_ratio").items(), key=lambda item: float(item[0][0])):
        rows.append([
            ratio,
            *(reached(setting, PHASE_STEP.name(split=split)) for split in ("train", "id", "ood")),
            spread(values(setting, ACC_CHOSEN.name(split="id"))),
            spread(values(setting, ACC_CHOSEN.name(split="ood"))),
            spread(values(setting, NULL.name(split="id", hops=2, stat="structural"))),
            spread(values(setting, NULL.name(split="ood", hops=2, stat="structural"))),
        ])
    lines = ["## phi", "", *table(
        ["phi", "train onset", "id onset", "ood onset", "id (chosen)", "ood (chosen)", "id null", "ood null"], rows
    )]
    lines += ["Over training, at the budget chosen on validation (mean over seeds, then over the evaluations of a window):", ""]
    return lines + windows(sweep, "data.inferred_ratio", [(1, 2500), (2501, 5000), (5001, 7500), (7501, 10000)])


def overthinking(sweep: Sweep, param: str = "train.train_loops", title: str = "overthinking") -> list[str]:
    """Per value of ``param`` (the trained loop count) and hop count: accuracy at the trained loops, at
    the budget chosen on validation, at the last loop, and the fall from the chosen budget to the last
    loop, pooled z; the state's norm at the answer position over loops."""
    max_loops = int(next(iter(sweep.trials)).params["model.max_loops"])
    lines, rows, norms = [f"## {title}", ""], [], []
    settings = sorted(by(sweep, param).items(), key=lambda item: sortable(item[0][0]))
    for (value,), setting in settings:
        trained = setting.params["train.train_loops"]
        norms.append([value, *(spread(values(setting, STATE_NORM.name(loop=loop)), 3) for loop in NORM_LOOPS)])
        for hops in hops_of(setting):
            at_trained = values(setting, ACC_HOPS_LOOP.name(split="id", hops=hops, loop=int(trained)))
            chosen = values(setting, ACC_HOPS_CHOSEN.name(split="id", hops=hops))
            last = values(setting, ACC_HOPS_LOOP.name(split="id", hops=hops, loop=max_loops))
            fall = [c - l for c, l in zip(chosen, last) if c is not None and l is not None]
            n = int(setting.replicates[0].params.get("data.n_test_queries", "128")) * len(fall)
            z = two_proportion_z(statistics.fmean(c for c in chosen if c is not None),
                                 statistics.fmean(l for l in last if l is not None), n) if fall else math.nan
            rows.append([value, str(hops), spread(at_trained),
                         spread(values(setting, LOOPS_CHOSEN.name(split="id", hops=hops)), 1), spread(chosen),
                         spread(last), spread(fall), f"{z:.1f}",
                         spread(values(setting, NULL.name(split="id", hops=hops, stat="structural")))])
    lines += table([param, "hops", "at R loops", "loops chosen (id_val)", "at chosen", f"at {max_loops} loops",
                    f"fall chosen -> {max_loops}", "z (pooled, conservative)", "structural null"], rows)
    lines += ["Norm of the state at the answer position after loop t (`state_norm/loop_<t>`):", ""]
    return lines + table([param, *(f"loop {loop}" for loop in NORM_LOOPS)], norms)


NORM_LOOPS = (1, 4, 8, 12, 16, 24)


def hops_of(setting: Setting) -> list[int]:
    found = set()
    for key in setting.metrics:
        parsed = ACC_HOPS_CHOSEN.match(key)
        if parsed and parsed["split"] == "id":
            found.add(parsed["hops"])
    return sorted(found)


def halting(sweep: Sweep) -> list[str]:
    """Per training (fixed or Poisson R) and hop count: the paper's rule and KL alone, their loops saved
    against the largest budget and the accuracy they lose to it, and their gain over a fixed budget of the
    same mean cost."""
    max_loops = int(next(iter(sweep.trials)).params["model.max_loops"])
    rows = []
    for (sampling,), setting in sorted(by(sweep, "train.loops_sampling").items()):
        for hops in hops_of(setting):
            at_max = values(setting, ACC_HOPS_LOOP.name(split="id", hops=hops, loop=max_loops))
            for rule, kind in (("KL + entropy", HALTING_HOPS), ("KL alone", HALTING_HOPS_KL_ONLY)):
                accuracy = values(setting, kind.name(split="id", hops=hops, stat="acc"))
                loops = values(setting, kind.name(split="id", hops=hops, stat="mean_loops"))
                saved = [1 - l / max_loops for l in loops if l is not None]
                lost = [m - a for m, a in zip(at_max, accuracy) if m is not None and a is not None]
                rows.append([sampling, str(hops), rule, spread(accuracy), spread(loops, 2), spread(saved, 2),
                             spread(at_max), spread(lost), spread(values(setting, kind.name(split="id", hops=hops, stat="fixed_acc"))),
                             spread(values(setting, kind.name(split="id", hops=hops, stat="gain")))])
    return ["## halting", "", *table(
        ["R in training", "hops", "rule", "accuracy", "mean loops", f"loops saved (of {max_loops})",
         f"accuracy at {max_loops} loops", f"lost against {max_loops} loops", "fixed budget, same mean cost",
         "gain over it"], rows)]


def depth(sweep: Sweep) -> list[str]:
    """Per architecture and curriculum: test accuracy per hop count at the budget chosen on validation,
    the loops chosen, the structural null; trained and novel prefixes of the untrained depths."""
    rows = []
    keyed = by(sweep, "model.architecture", "train.curriculum")
    for (architecture, curriculum), setting in sorted(keyed.items()):
        for hops in hops_of(setting):
            rows.append([architecture, curriculum, str(hops),
                         spread(values(setting, ACC_HOPS_CHOSEN.name(split="id", hops=hops))),
                         spread(values(setting, LOOPS_CHOSEN.name(split="id", hops=hops)), 1),
                         spread(values(setting, ACC_PREFIX.name(split="id", hops=hops, kind="trained"))),
                         spread(values(setting, ACC_PREFIX.name(split="id", hops=hops, kind="novel"))),
                         spread(values(setting, NULL.name(split="id", hops=hops, stat="structural")))])
    hops = sorted({h for setting in keyed.values() for h in hops_of(setting)})
    trained = int(sweep.trials[0].params.get("data.train_max_hops", "2"))
    tests = [line for h in hops if h > trained for line in seed_tests(sweep, "id", h, per_hop=True)]
    wide = [[f"{architecture}, curriculum {curriculum}",
             *(spread(values(setting, ACC_HOPS_CHOSEN.name(split="id", hops=h)), 2) for h in hops)]
            for (architecture, curriculum), setting in sorted(keyed.items())]
    nulls = [Spread.of(v for s in keyed.values() for v in values(s, NULL.name(split="id", hops=h, stat="structural"))
                       if v is not None) for h in hops]
    wide.append(["structural null (mean)", *(f"{null.mean:.3f}" for null in nulls)])
    return ["## depth", "", *table(
        ["architecture", "curriculum", "hops", "id (chosen)", "loops chosen", "prefix trained", "prefix novel",
         "structural null"], rows), *table(["setting", *(f"{h} hops" for h in hops)], wide), *tests]


def hop_curves(sweep: Sweep, params: tuple[str, ...], title: str, path: Path) -> None:
    """Test accuracy at the budget chosen on validation against the hop count, one line per setting (mean
    ± one sample std over seeds), the structural null dashed and the trained depth marked."""
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    for key, setting in sorted(by(sweep, *params).items()):
        hops = hops_of(setting)
        cells = [setting.spread[ACC_HOPS_CHOSEN.name(split="id", hops=h)] for h in hops]
        label = ", ".join(f"{p.rsplit('.', 1)[-1]}={v}" for p, v in zip(params, key))
        band(axes, hops, cells, 0.15, marker="o", label=f"{label} (n={setting.n})")
    any_setting = sweep.settings[0]
    hops = hops_of(any_setting)
    axes.plot(hops, [any_setting.metrics.get(NULL.name(split="id", hops=h, stat="structural"), math.nan) for h in hops],
              color="grey", linestyle="--", linewidth=0.8, label="structural null")
    trained = int(any_setting.params.get("data.train_max_hops", "2"))
    axes.axvline(trained + 0.5, color="grey", linestyle=":", linewidth=0.8)
    axes.annotate(f"trained up to {trained} hops", (trained + 0.55, 0.95), fontsize=7, color="grey")
    axes.set(title=title, xlabel="hops", ylabel="test accuracy, loops chosen on validation", ylim=(0, 1.02))
    axes.legend(fontsize=7)
    save(figure, path)


# --- line figures with the spread over seeds and the nulls, beside the report's heatmaps ----------------


def curves(sweep: Sweep, param: str, title: str, path: Path) -> None:
    """Accuracy over training at the budget chosen on validation (train: at the trained loops), one
    panel per split, one line per value of ``param`` (mean over seeds, band: ± one sample std), the
    split's structural null (mean over seeds) dashed and chance dotted."""
    splits = [split for split in ("train", "id", "ood") if ACC.name(split=split) in sweep.trials[0].metrics]
    figure, panels = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4), sharey=True, squeeze=False)
    settings = sorted(by(sweep, param).items(), key=lambda item: sortable(item[0][0]))
    for axes, split in zip(panels[0], splits):
        key = ACC.name(split=split) if split == "train" else ACC_CHOSEN.name(split=split)
        for (value,), setting in settings:
            history = sweep.setting_history(setting, key)
            steps = sorted(history)
            line = band(axes, steps, [history[step] for step in steps], 0.2,
                        label=f"{param.rsplit('.', 1)[-1]} = {value} (n={setting.n})")
            null = Spread.of(v for v in values(setting, NULL.name(split=split, hops=2, stat="structural")) if v is not None)
            if split != "train" and null.n:
                axes.axhline(null.mean, color=line.get_color(), linestyle="--", linewidth=0.8)
        chance = sweep.trials[0].metrics.get(NULL_CHANCE.name())
        if chance:
            axes.axhline(chance, color="grey", linestyle=":", linewidth=0.8)
        reading = "at the trained loops" if split == "train" else "at the budget chosen on validation"
        axes.set(title=f"{split}: {reading}", xlabel="optimizer step", ylim=(0, 1.02))
    panels[0][0].set_ylabel("test accuracy (mean ± std over seeds)")
    panels[0][-1].legend(fontsize=7, title="dashed: structural null; dotted: chance", title_fontsize=7)
    figure.suptitle(title, fontsize=10)
    save(figure, path)


def loop_curves(sweep: Sweep, param: str, title: str, path: Path, panels: list[tuple[str, int]]) -> None:
    """Final test accuracy over inference loops, one panel per (split, hop count), one line per value of
    ``param`` (mean ± one sample std over seeds), each line's structural null dashed and its loop budget
    chosen on validation dotted (means over seeds)."""
    figure, grid = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), sharey=True, squeeze=False)
    settings = sorted(by(sweep, param).items(), key=lambda item: sortable(item[0][0]))
    for axes, (split, hops) in zip(grid[0], panels):
        for (value,), setting in settings:
            loops = sorted(v["loop"] for v in names_of(ACC_HOPS_LOOP, setting.metrics).values()
                           if (v["split"], v["hops"]) == (split, hops))
            cells = [setting.spread[ACC_HOPS_LOOP.name(split=split, hops=hops, loop=loop)] for loop in loops]
            line = band(axes, loops, cells, 0.2, marker=".",
                        label=f"{param.rsplit('.', 1)[-1]} = {value} (n={setting.n})")
            chosen = setting.spread.get(LOOPS_CHOSEN.name(split=split, hops=hops))
            if chosen and chosen.n:
                axes.axvline(chosen.mean, color=line.get_color(), linestyle=":", linewidth=0.8)
            null = setting.spread.get(NULL.name(split=split, hops=hops, stat="structural"))
            if null and null.n:
                axes.axhline(null.mean, color=line.get_color(), linestyle="--", linewidth=0.8)
        axes.set(title=f"{split}, {hops} hops: final test accuracy", xlabel="inference loops", ylim=(0, 1.02))
    grid[0][0].set_ylabel("accuracy (mean ± std over seeds)")
    grid[0][-1].legend(fontsize=7, title="dashed: structural null; dotted: loops chosen", title_fontsize=7)
    figure.suptitle(title, fontsize=10)
    save(figure, path)


def band(axes, x: list, cells: list[Spread], alpha: float, **style):
    """A line of the cells' means with a band of ± one sample std (none for one seed); returns the line."""
    mean = [cell.mean for cell in cells]
    std = [cell.std if cell.n > 1 else 0.0 for cell in cells]
    line, = axes.plot(x, mean, **style)
    axes.fill_between(x, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                      color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def sortable(value: str) -> tuple[float, str]:
    try:
        return float(value), ""
    except ValueError:
        return math.inf, value


# Per sweep: the param whose values are the lines, the title, whether to draw accuracy over training
# (``curves``), and the (split, hop count) panels of accuracy over inference loops (``loop_curves``).
LINE_FIGURES: dict[str, tuple[str, str, bool, list[tuple[str, int]]]] = {
    "grokking": ("model.architecture", "32 entities, 8 relations, a fifth of the facts held out, phi 3", True,
                 [("id", 2), ("ood", 2)]),
    "phi": ("data.inferred_ratio", "64 entities, 8 relations, a fifth of the facts held out", True, []),
    "overthinking": ("train.train_loops", "32 entities, 4 relations, trained on 2 hops", False,
                     [("id", 2), ("id", 3)]),
    "halting": ("train.loops_sampling", "32 entities, 4 relations, trained on 2 hops", False,
                [("id", 2), ("id", 3), ("id", 4)]),
    "overthinking-long": ("train.train_loops", "as overthinking, 6,000 steps", False, [("id", 2), ("id", 3)]),
    "injection": ("model.injection", "32 entities, 4 relations, trained on 2 hops, R = 4", False,
                  [("id", 2), ("id", 3)]),
}


NUMBERS_OF: dict[str, Callable[[Sweep], list[str]]] = {
    "grokking": grokking, "phi": phi, "overthinking": overthinking, "halting": halting, "depth": depth,
    "overthinking-long": lambda sweep: overthinking(sweep, title="overthinking-long"),
    "injection": lambda sweep: overthinking(sweep, "model.injection", "injection"),
}


def main() -> int:
    lines = ["# Numbers of docs/results.md", "",
             "Written by `python docs/figures.py` from the sweep exports in `docs/sweeps/`; do not edit.",
             "Each cell: mean ± sample std (n = seeds). Accuracies on test splits; loop budgets chosen on validation.", ""]
    for name, diagrams in DIAGRAMS.items():
        path = SWEEPS / f"{name}.json.gz"
        if not path.is_file():
            print(f"note: {path} missing: {name} not drawn", file=sys.stderr)
            continue
        sweep = load_export(path, name)
        out = FIGURES / name
        report = draw_sweep(sweep, diagrams, out)
        for file in report.files:
            if file.suffix not in (".png", ".md"):  # HTML and plotly.js: drawn by rdt_core.report on demand
                file.unlink()
        if name in LINE_FIGURES:
            param, title, over_training, panels = LINE_FIGURES[name]
            if over_training:
                curves(sweep, param, f"{name}: {title}", out / "curves.png")
            if panels:
                loop_curves(sweep, param, f"{name}: {title}", out / "loops.png", panels)
        if name == "depth":
            hop_curves(sweep, ("model.architecture", "train.curriculum"), "depth: trained on 1-4 hops, tested to 8",
                       out / "hops.png")
        for note in report.notes:
            print(f"note: {name}: {note}", file=sys.stderr)
        chance = next(iter(sweep.trials)).metrics.get(NULL_CHANCE.name())
        lines += NUMBERS_OF[name](sweep) + [f"chance: {chance:.3f}" if chance else "", ""]
        print(f"{name}: {len(sweep.trials)} trials -> {out}")
    NUMBERS.write_text("\n".join(lines).rstrip() + "\n")
    print(f"numbers -> {NUMBERS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
