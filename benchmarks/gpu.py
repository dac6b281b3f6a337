"""Training throughput and model FLOP utilisation on one GPU, at paper scale; run by ``benchmarks/gpu.sh``.

Measured, in this order (each written to the output as soon as it is taken, so a run cut short keeps
what it measured; a case that no longer fits the time budget is recorded as skipped):
1. examples/s and MFU of the training step at d_model 256, 512 and 768 (8, 16 and 32 loops), bf16
   autocast and fused AdamW as ``train_worker`` runs them, eager;
2. ``train.replicas`` 1, 8 and 64 in one process (d_model 256, a batch of 512 each), where the field
   exists: their summed examples/s against one model's;
3. several trials sharing the GPU: N processes at once (each its own model, the d_model 256 case), their
   summed examples/s against one process alone;
4. the same three sizes with ``train.compile`` (through ``CompiledOrEager``, as the worker compiles), the
   compile time apart (compiling is slowest, so it comes last).

The step is the worker's own (random batch indexed on the device, loss, clipping, AdamW); the loop around
it adds nothing measurable (``make bench``: ``train_step``). Model FLOPs per example are counted
analytically (``flops_per_example``); MFU is achieved FLOP/s over the device's dense bf16 peak.

    python -m benchmarks.gpu --out benchmarks/gpu_results.json             # on the GPU machine
    python -m benchmarks.gpu --device cpu --dry-run --out /tmp/gpu.json     # every path, tiny, on a CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import machine
from rdt_core.config import ExperimentConfig, TrainConfig
from rdt_core.data import build_splits
from rdt_core.model.transformer import build_model
from rdt_core.train import train_worker
from rdt_core.train.compiling import CompiledOrEager
from rdt_core.train.worker import make_optimizer

H200_BF16_DENSE_TFLOPS = 989.0
DATA = {"n_entities": 256, "n_relations": 8, "train_max_hops": 4, "test_max_hops": 4, "n_test_queries": 64}
SIZES = [(256, 4, 8), (512, 8, 16), (768, 12, 32)]  # (d_model, n_heads, loops)
TINY_SIZES = [(16, 2, 2), (32, 2, 4)]
LIGHT_EVAL = {"eval.n_train_eval_per_hop": 8, "eval.n_lens_queries": 4, "eval.n_patching_queries": 4}


def paper_config(d_model: int, n_heads: int, loops: int, batch_size: int, dry_run: bool, **dotted: Any) -> ExperimentConfig:
    data = {"n_entities": 16, "n_relations": 2, "n_test_queries": 8, "inferred_ratio": 1.0} if dry_run else DATA
    return ExperimentConfig.from_dict(
        {"data": data, "model": {"d_model": d_model, "n_heads": n_heads, "max_loops": loops},
         "train": {"train_loops": loops, "batch_size": batch_size}},
        dotted,
    )


def flops_per_example(config: ExperimentConfig, sequence_length: int) -> float:
    """Model FLOPs of one training example: 3x the forward (the backward costs twice the forward).

    Per token and layer application: 2 FLOPs per multiply-add of the attention projections (4 d^2), the
    MLP (2 mlp_ratio d^2) and attention itself (scores and values over all T positions, 2 T d); an
    application is a prelude or coda layer, or a core layer in each loop. The concat adapter adds 2 d^2
    a token and loop, and the final-loop readout 2 d n_entities at the answer position.
    """
    model, train = config.model, config.train
    d, length = model.d_model, sequence_length
    per_token_layer = 2 * (4 * d * d + 2 * model.mlp_ratio * d * d + 2 * length * d)
    applications = model.n_prelude_layers + model.n_core_layers * train.train_loops + model.n_coda_layers
    adapter = 2 * (2 * d * d) * train.train_loops if model.injection == "concat" else 0
    forward = length * (applications * per_token_layer + adapter) + 2 * d * config.data.n_entities
    return 3.0 * forward


class WorkerStep:
    """``train_worker``'s step on ``device``: a random batch indexed on the device, bf16 autocast on CUDA,
    final-loop loss, clipping, fused AdamW on CUDA."""

    def __init__(self, config: ExperimentConfig, device: torch.device):
        torch.manual_seed(config.train.seed)
        splits = build_splits(config.data)
        self.config, self.device = config, device
        self.train_set = splits.train.to(device)
        self.model = build_model(config, splits.vocab).to(device)
        self.forward = CompiledOrEager(self.model) if config.train.compile else self.model
        self.optimizer = make_optimizer(self.model.parameters(), config, device)
        self.generator = torch.Generator(device).manual_seed(config.train.seed)
        self.sequence_length = splits.train.tokens.shape[1]

    def __call__(self) -> None:
        train = self.config.train
        pick = torch.randint(len(self.train_set), (train.batch_size,), device=self.device, generator=self.generator)
        batch = self.train_set.subset(pick)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.forward(batch.tokens, train.train_loops, every_loop=False)  # (1, B, E)
            loss = F.cross_entropy(logits[-1].float(), batch.answers)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        self.optimizer.step()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def steps_in(self, seconds: float) -> tuple[int, float]:
        """Steps taken in about ``seconds`` of wall time, and the exact time they took."""
        self.synchronize()
        started = time.perf_counter()
        steps = 0
        while time.perf_counter() - started < seconds:
            self()
            steps += 1
            if steps % 8 == 0:
                self.synchronize()  # bounds the queue, so the clock reads work done, not work queued
        self.synchronize()
        return steps, time.perf_counter() - started


def throughput(config: ExperimentConfig, device: torch.device, seconds: float, peak_tflops: float) -> dict[str, Any]:
    """One training run's examples/s and MFU after warm-up (and compilation, timed apart)."""
    step = WorkerStep(config, device)
    started = time.perf_counter()
    step()
    step.synchronize()
    first_step_s = time.perf_counter() - started
    step.steps_in(min(2.0, seconds / 2))  # warm-up: allocator, autotuning, recompiles
    steps, elapsed = step.steps_in(seconds)
    examples_per_s = steps * config.train.batch_size / elapsed
    flops = flops_per_example(config, step.sequence_length)
    return {
        "d_model": config.model.d_model, "loops": config.train.train_loops, "batch_size": config.train.batch_size,
        "sequence_length": step.sequence_length, "compile": config.train.compile,
        "compile_fell_back": getattr(step.forward, "failure", None),
        "first_step_s": round(first_step_s, 2), "steps": steps, "examples_per_s": round(examples_per_s, 1),
        "model_flops_per_example": flops, "mfu": examples_per_s * flops / (peak_tflops * 1e12),
    }


def shared_worker(args: argparse.Namespace) -> None:
    """One of N processes sharing the device: warms up, then counts steps between two agreed instants."""
    d_model, n_heads, loops = (TINY_SIZES if args.dry_run else SIZES)[0]
    config = paper_config(d_model, n_heads, loops, args.batch_size, args.dry_run)
    step = WorkerStep(config, torch.device(args.device))
    step()
    while time.time() < args.start_at:
        step()
        step.synchronize()
    steps, elapsed = step.steps_in(args.end_at - time.time())
    print(json.dumps({"examples_per_s": steps * config.train.batch_size / elapsed}))


def sharing(args: argparse.Namespace, n_processes: int) -> dict[str, Any]:
    """N processes at once on the device; their summed examples/s."""
    lead_s, window_s = (15.0, 3.0) if args.dry_run else (40.0, args.seconds)
    start_at = time.time() + lead_s  # time for every process to import, start CUDA and warm up
    command = [sys.executable, "-m", "benchmarks.gpu", "--shared-worker", "--device", args.device,
               "--batch-size", str(args.batch_size), "--start-at", str(start_at), "--end-at",
               str(start_at + window_s)] + (["--dry-run"] if args.dry_run else [])
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(n_processes)]
    outputs = [process.communicate(timeout=lead_s + window_s + 120)[0] for process in processes]
    rates = [json.loads(output.strip().splitlines()[-1])["examples_per_s"]
             for output, process in zip(outputs, processes) if process.returncode == 0]
    return {"processes": n_processes, "examples_per_s_each": [round(rate, 1) for rate in rates],
            "examples_per_s_total": round(sum(rates), 1), "failed": n_processes - len(rates)}


def replicas_throughput(config: ExperimentConfig, n_replicas: int, steps: tuple[int, int]) -> dict[str, Any]:
    """Examples/s of ``train.replicas`` models trained together: two whole runs differing only in steps,
    so their difference is training alone (set-up, evaluation and analysis cancel)."""

    def run_s(n_steps: int) -> float:
        run = ExperimentConfig.from_dict(config.model_dump(), {
            "train.replicas": n_replicas, "train.steps": n_steps, "train.eval_every": n_steps,
            "train.checkpoint_every": 0})
        started = time.perf_counter()
        train_worker(run, lambda metrics, checkpoint: None)
        return time.perf_counter() - started

    short, long = steps
    seconds = run_s(long) - run_s(short)
    if seconds <= 0:
        raise RuntimeError(f"the {long - short} extra steps took no measurable time: more steps are needed")
    return {"replicas": n_replicas, "examples_per_s_total":
            round(n_replicas * config.train.batch_size * (long - short) / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny models and short windows: checks every path")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("gpu_results.json"))
    parser.add_argument("--budget-s", type=float, default=420.0, help="cases that would end later are skipped")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window of each case")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    parser.add_argument("--shared-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--end-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.batch_size, args.seconds = min(args.batch_size, 32), min(args.seconds, 1.0)
    if args.shared_worker:
        shared_worker(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu --dry-run to check the script", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    deadline = time.perf_counter() + args.budget_s
    sizes = TINY_SIZES if args.dry_run else SIZES
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(device.type), "peak_tflops": args.peak_tflops, "dry_run": args.dry_run,
        "throughput": [], "sharing": [], "replicas": [], "skipped": [],
    }

    def record(section: str, case: str, estimate_s: float, measure) -> None:
        if time.perf_counter() + estimate_s > deadline:
            outcome = f"skipped: would pass the {args.budget_s:.0f} s budget"
            results["skipped"].append(f"{case}: {outcome}")
        else:
            try:
                results[section].append(measure())
                outcome = json.dumps(results[section][-1])
            except Exception as error:  # one failed case must not cost the figures of the others
                outcome = f"failed: {error!r}"[:400]
                results["skipped"].append(f"{case}: {outcome}")
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{case}: {outcome}", flush=True)

    def size_config(size: tuple[int, int, int], **dotted: Any) -> ExperimentConfig:
        return paper_config(*size, args.batch_size, args.dry_run, **dotted)

    for size in sizes:
        record("throughput", f"eager d{size[0]} x{size[2]}", args.seconds + 15,
               lambda: throughput(size_config(size), device, args.seconds, args.peak_tflops))
    if "replicas" in TrainConfig.model_fields:
        steps = (2, 4) if args.dry_run else (20, 120)
        # Many small trials are the point of replicas: each replica takes a batch of 512, not the 4096 above.
        # Each replica evaluates and is analysed on its own at the end of a run: a light evaluation keeps
        # 64 of them affordable (it cancels out of the figure, but its time counts against the budget).
        small_batch = paper_config(*sizes[0], min(args.batch_size, 512), args.dry_run, **LIGHT_EVAL)
        for n_replicas in (1, 8, 64):
            record("replicas", f"replicas {n_replicas}", 60,
                   lambda: replicas_throughput(small_batch, n_replicas, steps))
    else:
        results["skipped"].append("replicas 1..64: replicas not implemented yet (no train.replicas)")
    for n_processes in (1, 4, 8) if not args.dry_run else (1, 2):
        record("sharing", f"{n_processes} processes", args.seconds + 60, lambda: sharing(args, n_processes))
    for size in sizes:
        record("throughput", f"compiled d{size[0]} x{size[2]}", args.seconds + 90,
               lambda: throughput(size_config(size, **{"train.compile": True}), device, args.seconds,
                                  args.peak_tflops))
    for section, count in (("sharing", "processes"), ("replicas", "replicas")):
        alone = [case for case in results[section] if case[count] == 1]
        for case in results[section]:
            if alone:
                case["vs_one"] = round(case["examples_per_s_total"] / alone[0]["examples_per_s_total"], 2)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
