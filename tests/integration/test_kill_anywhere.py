"""A few seeded kill points of the kill-anywhere harness (``tests/kill_anywhere.py``; ``make soak`` runs
many): a sweep killed, resumed and checked on a real local Ray, MLflow store and Optuna storage."""

from __future__ import annotations

import pytest

from tests.kill_anywhere import KillPoint, run_kill_point

pytestmark = pytest.mark.slow

# Seed 4 kills the driver as a trial's first final report arrives (the moment of the reported bug); seed 9
# kills a trial's worker mid-training (after 14 of the trials' 18 reports). A server crash costs two minutes here:
# CI has one at a chosen moment (test_tracking_server); make soak crashes it at random moments, kills the
# driver while it creates its store, and kills a worker of a data-parallel trial (``dp_worker``).
SEEDS = {4: "driver", 9: "worker"}


@pytest.mark.parametrize("seed", SEEDS, ids=[f"{target}-seed-{seed}" for seed, target in SEEDS.items()])
def test_a_sweep_killed_at_a_seeded_moment_resumes_with_nothing_lost_or_counted_twice(tmp_path, seed):
    point = KillPoint.draw(seed)
    assert point.target == SEEDS[seed]  # the draw this test was written for
    log, problems = run_kill_point(point, tmp_path)
    assert not problems, f"{point.describe()}: {'; '.join(log)}: {problems}"
