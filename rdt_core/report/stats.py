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


# --- t tests over seeds: the seed, not the query, is the unit ------------------------------------------------

CONTINUED_FRACTION_STEPS, CONTINUED_FRACTION_TOLERANCE, TINY = 10_000, 1e-15, 1e-300


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the CDF of a Beta(a, b) at ``x``: what Student's t tail reduces to. The continued
    fraction converges fast below the mean of the Beta, so above it the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    is used instead."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * beta_continued_fraction(x, a, b) / a
    return 1 - math.exp(log_front) * beta_continued_fraction(1 - x, b, a) / b


def beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta, evaluated by the modified Lentz method (each step
    updates the ratio of successive convergents, kept away from zero by ``TINY``)."""
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > TINY else TINY)
    fraction = d
    for m in range(1, CONTINUED_FRACTION_STEPS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > TINY else TINY)
            c = 1 + numerator / c
            c = c if abs(c) > TINY else TINY
            fraction *= c * d
        if abs(c * d - 1) < CONTINUED_FRACTION_TOLERANCE:
            return fraction
    raise ArithmeticError(f"the incomplete beta's continued fraction did not converge (x={x}, a={a}, b={b})")


def student_t_upper_p(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom: the one-sided p of a t statistic. The two
    tails together are I_{df/(df+t^2)}(df/2, 1/2); each is half of it."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = regularized_incomplete_beta(df / (df + t * t), df / 2, 0.5) / 2
    return tail if t >= 0 else 1 - tail


def one_sample_t(values: list[float], mu0: float = 0.0) -> tuple[float, float, float]:
    """(t, df, one-sided p) of the t test that the mean of ``values`` (one per seed) exceeds ``mu0``.
    Seeds that agree exactly leave t nothing to scale by: then p is the exact sign-flip test's (under the
    null each seed's difference is as likely negative as positive, so n seeds all above ``mu0`` come
    with p = 2^-n, and two seeds can show no less than 0.25). One seed shows nothing: p is NaN."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan, math.nan
    difference, df = statistics.fmean(values) - mu0, n - 1
    standard_error = statistics.stdev(values) / math.sqrt(n)
    if standard_error == 0:
        return without_spread(difference, df, 0.5**n)
    t = difference / standard_error
    return t, df, student_t_upper_p(t, df)


def welch_t(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(t, df, one-sided p) of Welch's t test that mean(a) > mean(b): each sample keeps its own variance
    (settings need not spread alike), with the Welch-Satterthwaite degrees of freedom. NaN below two
    values a side; where neither side varies, the exact permutation test's p."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan, math.nan
    share_a, share_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    difference = statistics.fmean(a) - statistics.fmean(b)
    if share_a + share_b == 0:
        return without_spread(difference, math.nan, permutation_p(a, b))
    df = (share_a + share_b) ** 2 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))
    t = difference / math.sqrt(share_a + share_b)
    return t, df, student_t_upper_p(t, df)


def without_spread(difference: float, df: float, exact_p: float) -> tuple[float, float, float]:
    """A t test's answer where the values do not vary: an infinite t in the sign of the difference, and
    the p of an exact test that needs no spread (``exact_p``) where the difference is positive."""
    if difference > 0:
        return math.inf, df, exact_p
    return (-math.inf if difference < 0 else 0.0), df, 1.0


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in their order: the k-th smallest is scaled
    by the number of tests not yet rejected (m - k + 1), and never below an earlier one, so rejecting
    where the adjusted p < alpha keeps the chance of any false claim in the family below alpha. A NaN (a
    test that could not be run) stays NaN and is not counted in m."""
    ranked = sorted((p, index) for index, p in enumerate(pvalues) if not math.isnan(p))
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, (p, index) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))
        adjusted[index] = running
    return adjusted
