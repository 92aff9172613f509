"""The Pareto frontier keeps exactly the non-dominated prompts."""

import random

from dreamy.language.frontier import pareto_indices


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when point a = (activation, xentropy) dominates b: the definition, written out as the oracle."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def test_frontier_points_are_not_dominated_and_cover_the_rest():
    rng = random.Random(0)
    act = [rng.gauss(0, 1) for _ in range(300)]
    xent = [rng.uniform(2, 10) for _ in range(300)]
    front = pareto_indices(act, xent)
    points = list(zip(act, xent))
    for i in front:
        assert not any(dominates(p, points[i]) for p in points)
    for j in set(range(300)) - set(front):
        assert any(dominates(points[i], points[j]) or points[i] == points[j] for i in front)
    assert [xent[i] for i in front] == sorted(xent[i] for i in front)
    assert [act[i] for i in front] == sorted(act[i] for i in front)


def test_duplicates_and_ties():
    assert pareto_indices([1.0, 1.0], [2.0, 2.0]) == [0]
    assert pareto_indices([1.0, 2.0], [2.0, 2.0]) == [1]
    assert pareto_indices([], []) == []


def test_the_running_frontier_equals_the_pareto_front_of_everything_added():
    import random

    from dreamy.language.frontier import FrontierTracker, pareto_indices

    draw = random.Random(0)
    for _ in range(200):
        tracker, activation, xentropy = FrontierTracker(), [], []
        for _ in range(25):
            a, x = round(draw.random() * 4, 1), round(draw.random() * 4, 1)
            moved = tracker.add([a], [x])
            before = sorted({(xentropy[i], activation[i]) for i in pareto_indices(activation, xentropy)}) if activation else []
            activation.append(a)
            xentropy.append(x)
            after = sorted({(xentropy[i], activation[i]) for i in pareto_indices(activation, xentropy)})
            assert tracker.points == after and moved == (after != before)
