"""Stage 3 sampling: one task per micro-batch, tasks drawn with p ~ N ** exponent."""

from __future__ import annotations

import numpy as np

from molm3d_core.training.data import TaskMixture


def test_batches_hold_one_task_and_tasks_follow_the_exponent():
    groups = {name: [{"task": name, "i": i} for i in range(n)] for name, n in (("a", 10), ("b", 160), ("c", 2560))}
    mixture = TaskMixture(groups, exponent=0.25)
    expected = np.array([10, 160, 2560], dtype=float) ** 0.25
    expected /= expected.sum()
    np.testing.assert_allclose(mixture.probs, expected)
    counts = {"a": 0, "b": 0, "c": 0}
    rng = np.random.default_rng(0)
    for _ in range(4000):
        batch = mixture.sample(rng, 8)
        tasks = {e["task"] for e in batch}
        assert len(batch) == 8 and len(tasks) == 1
        counts[tasks.pop()] += 1
    observed = np.array([counts[k] for k in "abc"]) / 4000
    np.testing.assert_allclose(observed, expected, atol=0.03)
