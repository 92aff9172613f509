"""Step-loop helpers shared by both optimizers: seeded generators, plateau stopping, snapshots, progress."""

import pytest
import torch

from dreamy.core.stepping import Plateau, make_generator, progress, should_snapshot


def test_same_seed_same_draws_regardless_of_global_rng():
    first = torch.randn(4, generator=make_generator(5))
    torch.manual_seed(123)
    torch.randn(10)
    assert torch.equal(first, torch.randn(4, generator=make_generator(5)))
    assert not torch.equal(first, torch.randn(4, generator=make_generator(6)))


def test_generator_rejects_non_int_seeds():
    with pytest.raises(TypeError, match="seed must be an int"):
        make_generator(1.5)


def test_plateau_stops_after_patience_without_improvement():
    plateau = Plateau(patience=3, rel_tol=0.01)
    assert [plateau.update(v) for v in (1.0, 2.0, 2.001, 2.005, 2.0)] == [False, False, False, False, True]
    assert plateau.best == 2.0


def test_plateau_keeps_going_while_improving():
    plateau = Plateau(patience=2, rel_tol=0.0)
    assert not any(plateau.update(float(v)) for v in range(20))


def test_plateau_validates_arguments():
    with pytest.raises(ValueError, match="patience"):
        Plateau(patience=0)
    with pytest.raises(ValueError, match="rel_tol"):
        Plateau(rel_tol=-1)


def test_snapshots_and_silent_progress(capsys):
    assert should_snapshot(10, (1, 10)) and not should_snapshot(5, (1, 10))
    bar = progress(5, "x", enabled=False)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""
