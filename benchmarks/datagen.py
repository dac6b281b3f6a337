"""Graph and query generation as entities, relations and hops grow: is the cost linear in what is produced?

"Produced" is every element of the query tensors that ``build_splits`` returns (train, test and validation
sets), the graph's tails included. The exponent is the slope of log(time) against log(produced elements)
over the sizes, fitted by least squares: 1 is linear, above 1 the cost grows faster than the output.

Memory: ``tracemalloc`` sees only Python's own allocations, not tensor storage (PyTorch allocates that
outside Python's allocator), and the resident set is blurred by memory the allocator keeps for reuse. So the
memory exponent is fitted on the peak of live tensor storage, counted exactly by a dispatch mode that sees
every tensor an operator creates and when it is freed; tracemalloc's peak is recorded beside it.
"""

from __future__ import annotations

import math
import tracemalloc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pathlib import Path

from benchmarks.common import Entry, entry, seconds_of
from rdt_core.config import DataConfig, read_yaml_mapping
from rdt_core.data import build_splits
from rdt_core.data.queries import Splits


def produced_elements(splits: Splits) -> int:
    query_sets = [splits.train, *splits.tests.values(), *splits.validation.values()]
    return splits.graph.tails.numel() + sum(tensor.numel() for queries in query_sets for tensor in queries._tensors())


class TensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage created under this mode (a view counts with its base)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.counted: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor):
                self._count(tensor)
        return output

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or address in self.counted:  # an in-place result or a view of a counted tensor
            return
        self.counted.add(address)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._free, address, size)

    def _free(self, address: int, size: int) -> None:
        self.counted.discard(address)
        self.live -= size


def measure(config: DataConfig, repeats: int) -> dict[str, float]:
    seconds = min(seconds_of(lambda: build_splits(config)) for _ in range(repeats))
    tracemalloc.start()
    with TensorMemory() as memory:
        splits = build_splits(config)
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"elements": produced_elements(splits), "seconds": seconds, "tensor_peak_bytes": memory.peak,
            "tracemalloc_peak_bytes": python_peak}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x)."""
    log_x, log_y = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mean_x, mean_y = sum(log_x) / len(log_x), sum(log_y) / len(log_y)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(log_x, log_y))
    return covariance / sum((x - mean_x) ** 2 for x in log_x)


def growth(axis: str, configs: list[DataConfig], repeats: int) -> list[Entry]:
    points = [measure(config, repeats) for config in configs]
    elements = [point["elements"] for point in points]
    time_slope = slope(elements, [point["seconds"] for point in points])
    entries = [entry(f"datagen/{axis}/time_exponent", time_slope, 1.0, "log-log slope", "<= 1.2",
                     note=f"build_splits time against produced elements, {axis} growing", points=points)]
    memory_slope = slope(elements, [point["tensor_peak_bytes"] for point in points])
    entries.append(entry(f"datagen/{axis}/memory_exponent", memory_slope, 1.0, "log-log slope", "<= 1.2",
                         note=f"peak live tensor bytes during build_splits against produced elements, {axis} growing"))
    return entries


PAPER_PRESETS = {  # the paper's two data sets, as its presets generate them
    "paper_composition": Path("docs/configs/paper_systematicity.yaml"),
    "paper_depth": Path("docs/configs/paper_depth.yaml"),
}
PAPER_SECONDS = 30.0  # what generating a paper-sized data set may take here


def paper_sizes(repeats: int) -> list[Entry]:
    """Seconds to build each of the paper's data sets (the composition set's 2,000 x 200 graph, the depth
    set's chains to 40 hops) from its preset's ``data`` section, against a budget of 30 s."""
    entries = []
    for name, preset in PAPER_PRESETS.items():
        config = DataConfig.model_validate((read_yaml_mapping(preset) or {})["data"])
        seconds = min(seconds_of(lambda: build_splits(config)) for _ in range(repeats))
        entries.append(entry(f"datagen/{name}/seconds", seconds, PAPER_SECONDS, "s", "<= 1",
                             note=f"build_splits on {preset}'s data section against a budget of 30 s",
                             n_entities=config.n_entities, n_relations=config.n_relations))
    return entries


def generation_scaling(quick: bool) -> list[Entry]:
    repeats = 2 if quick else 5
    entities = [1024, 2048, 4096, 8192] + ([] if quick else [16384])
    relations = [4, 8, 16, 32] + ([] if quick else [64])
    hops = [2, 3, 4, 5] + ([] if quick else [6])
    return (
        growth("entities", [DataConfig(n_entities=n) for n in entities], repeats)
        + growth("relations", [DataConfig(n_entities=1024, n_relations=m) for m in relations], repeats)
        + growth("hops", [DataConfig(n_entities=1024, n_relations=8, train_max_hops=k, test_max_hops=k)
                          for k in hops], repeats)
        + paper_sizes(1 if quick else 2)
    )
