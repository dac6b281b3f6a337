"""Draw the figures of docs/results.md from the runs in docs/runs (JSON lines from
``python -m rdt_core.train CONFIG --out docs/runs/NAME.jsonl``): ``python docs/figures.py``."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rdt_core.metrics import ACC, ACC_CHOSEN, ACC_HOPS, ACC_HOPS_LOOP, NULL, PHASE_STEP, names_of  # noqa: E402

DOCS = Path(__file__).resolve().parent
RUNS, FIGURES = DOCS / "runs", DOCS / "figures"


def reports(name: str) -> list[dict[str, float]]:
    return [json.loads(line) for line in (RUNS / f"{name}.jsonl").read_text().splitlines()]


def by_loop(report: dict[str, float], split: str, hops: int) -> list[float]:
    """Accuracy at inference loops 1, 2, ... of one split and hop count."""
    found = names_of(ACC_HOPS_LOOP, report)
    loops = sorted(v["loop"] for v in found.values() if (v["split"], v["hops"]) == (split, hops))
    return [report[ACC_HOPS_LOOP.name(split=split, hops=hops, loop=loop)] for loop in loops]


def phases() -> None:
    """Left: train, id and ood accuracy over training (phases.yaml). Right: train, id 2-hop and the
    never-trained 3-hop queries at 12 inference loops (depth_looped_fixed.yaml)."""
    figure, panels = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    systematic = reports("phases")
    curves = [(ACC.name(split="train"), "train (R = 4)"), (ACC.name(split="id"), "id 2-hop (R = 4)"),
              (ACC.name(split="ood"), "ood 2-hop (R = 4)"),
              (ACC_CHOSEN.name(split="ood"), "ood 2-hop (loops chosen on validation)")]
    draw_over_steps(panels[0], systematic, curves, "systematic split (20% of facts held out)")
    null = systematic[-1][NULL.name(split="ood", hops=2, stat="structural")]
    panels[0].axhline(null, color="red", linewidth=0.7, linestyle="--")
    panels[0].annotate(f"ood structural null {null:.2f}", (0, null + 0.01), fontsize=7, color="red")
    deeper = reports("depth_looped_fixed")
    curves = [(ACC.name(split="train"), "train (R = 4)"), (ACC_HOPS.name(split="id", hops=2), "id 2-hop (R = 4)"),
              (ACC_HOPS_LOOP.name(split="id", hops=3, loop=12), "id 3-hop, untrained depth (12 loops)")]
    draw_over_steps(panels[1], deeper, curves, "depth split (trained on 1-2 hops)")
    panels[0].set_ylabel("accuracy")
    save(figure, "phases.png")


def draw_over_steps(axes, runs: list[dict[str, float]], curves: list[tuple[str, str]], title: str) -> None:
    steps = [run["step"] for run in runs]
    for metric, label in curves:
        axes.plot(steps, [run[metric] for run in runs], label=label)
    for split in ("train", "id", "ood"):
        onset = runs[-1].get(PHASE_STEP.name(split=split))
        if onset:
            axes.axvline(onset, color="grey", linestyle=":", linewidth=1)
            axes.annotate(f"{split} >= 0.9", (onset, 0.02), rotation=90, fontsize=7, color="grey")
    axes.axhline(1 / 32, color="grey", linewidth=0.5)
    axes.set(xlabel="optimizer step", ylim=(0, 1), title=title)
    axes.legend(fontsize=8)


def overthinking() -> None:
    last = reports("depth_looped_fixed")[-1]
    accuracy = by_loop(last, "id", 2)
    loops = range(1, len(accuracy) + 1)
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(loops, accuracy, marker="o")
    peak = max(range(len(accuracy)), key=accuracy.__getitem__)
    axes.annotate(f"peak {accuracy[peak]:.2f} at loop {peak + 1}", (peak + 1, accuracy[peak]),
                  textcoords="offset points", xytext=(0, -25), ha="center")
    axes.axvline(4, color="grey", linestyle=":", label="trained R = 4")
    axes.set(xlabel="inference loops", ylabel="accuracy, held-out 2-hop (id)", ylim=(0, 1), title="Overthinking")
    axes.legend()
    save(figure, "overthinking.png")


def depth() -> None:
    figure, panels = plt.subplots(1, 3, figsize=(14, 3.5), sharey=True)
    runs = (("depth_looped_fixed", "looped, R = 4"), ("depth_unshared", "unshared: 4 cores, input re-injected"),
            ("depth_vanilla", "vanilla: plain transformer, depth 4"))
    for axes, (name, title) in zip(panels, runs):
        last = reports(name)[-1]
        for hops in (2, 3, 4):
            accuracy = by_loop(last, "id", hops)
            axes.plot(range(1, len(accuracy) + 1), accuracy, marker="o", label=f"{hops} hops" + (" (trained)" if hops == 2 else ""))
        axes.axvline(4, color="grey", linestyle=":")
        axes.axhline(1 / 32, color="grey", linewidth=0.5)
        axes.set(xlabel="inference loops", title=title, ylim=(0, 1))
    panels[0].set_ylabel("accuracy, id test queries")
    panels[0].legend()
    save(figure, "depth.png")


def save(figure, name: str) -> None:
    FIGURES.mkdir(exist_ok=True)
    figure.tight_layout()
    figure.savefig(FIGURES / name, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    overthinking()
    depth()
    phases()
