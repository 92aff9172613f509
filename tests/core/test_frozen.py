"""dreamy/core/frozen.py: a block runs with the model in eval mode and frozen; modes and flags come back."""

import threading

import pytest
import torch
from torch import nn

from dreamy.core.frozen import frozen


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))


def test_modes_and_flags_come_back_even_after_an_error():
    net = _net().train()
    net[1].eval()
    net[3].weight.requires_grad_(False)
    with pytest.raises(RuntimeError):
        with frozen(net):
            assert not any(m.training for m in net.modules())
            assert not any(p.requires_grad for p in net.parameters())
            raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == [True, True, False, True, True]
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, True, False, True]


def test_nested_and_concurrent_holders_restore_once_the_last_leaves():
    net = _net().train()
    inside, leave = threading.Event(), threading.Event()
    seen = []

    def other():
        with frozen(net):
            inside.set()
            leave.wait(10)
            seen.append(net.training)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(10)
    with frozen(net):
        with frozen(net):
            pass
        assert not net.training  # the inner exit did not unfreeze
    assert not net.training  # the other thread still holds it
    leave.set()
    thread.join()
    assert seen == [False] and net.training and net[0].weight.requires_grad


def test_a_forward_inside_changes_no_statistics():
    net = _net().train()
    mean = net[1].running_mean.clone()
    x = torch.randn(8, 3)
    with frozen(net):
        a, b = net(x), net(x)
    assert torch.equal(a, b) and torch.equal(net[1].running_mean, mean) and int(net[1].num_batches_tracked) == 0


def test_not_a_module_is_refused():
    with pytest.raises(TypeError, match="takes a torch.nn.Module"):
        with frozen(lambda x: x):
            pass
