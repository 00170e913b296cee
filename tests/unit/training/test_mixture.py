"""Stage 3 sampling (one task per micro-batch, p ~ N ** exponent) and the molecule-spread diagnostic."""

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


def test_molecule_spread_is_zero_for_identical_and_one_for_orthogonal_molecules():
    import torch

    from molm3d_core.training.objectives import molecule_spread

    same = torch.randn(1, 8, 16).repeat(4, 1, 1)
    assert abs(molecule_spread(same)) < 1e-6
    orthogonal = torch.eye(4).repeat_interleave(2, dim=1).reshape(4, 2, 4)  # disjoint supports
    assert abs(molecule_spread(orthogonal) - 1.0) < 1e-6
