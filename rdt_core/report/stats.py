"""The tests that the numbers of a results page cite, exact and in the standard library: a few seeds and a
few hundred test queries per claim need no SciPy, and an exact test says what it can and cannot show (3
seeds against 3 can reach p = 0.05 and no lower)."""

from __future__ import annotations

import math
import statistics
from itertools import combinations


def binomial_upper_p(correct: int, n: int, p0: float) -> float:
    """P(X >= correct) for X ~ Binomial(n, p0): how often a model at the null scores this much."""
    return sum(math.comb(n, k) * p0**k * (1 - p0) ** (n - k) for k in range(correct, n + 1))


def permutation_p(a: list[float], b: list[float]) -> float:
    """One-sided exact permutation test that mean(a) > mean(b): the share of the relabellings of the
    pooled values whose difference of means is at least the observed one."""
    pooled, observed = a + b, statistics.fmean(a) - statistics.fmean(b)
    differences = []
    for chosen in combinations(range(len(pooled)), len(a)):
        first = [pooled[i] for i in chosen]
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        differences.append(statistics.fmean(first) - statistics.fmean(rest))
    return sum(d >= observed - 1e-12 for d in differences) / len(differences)


def smallest_permutation_p(n_a: int, n_b: int) -> float:
    """The lowest p that ``permutation_p`` can give for samples of these sizes: one relabelling of all."""
    return 1 / math.comb(n_a + n_b, n_a)


def two_proportion_z(p1: float, p2: float, n: int) -> float:
    """z of p1 - p2 for two proportions over n queries each, as if independent: read at two loop counts
    of the same queries the pair is positively correlated, so this z understates the evidence."""
    pooled = (p1 + p2) / 2
    standard_error = math.sqrt(2 * pooled * (1 - pooled) / n) if 0 < pooled < 1 else math.inf
    return (p1 - p2) / standard_error
