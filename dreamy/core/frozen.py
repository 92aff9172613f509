"""Leave a model as it was found: run a block with the model in eval mode and its parameters frozen, then put
back every module's mode and every parameter's `requires_grad`.

Dreaming and scanning read a model; they must neither update its BatchNorm statistics nor apply its dropout
(a model in `train()` mode), nor leave `.grad` on its parameters (a raw `nn.Module` whose parameters require
grad). `frozen(model)` is re-entrant and shared across threads: the first holder saves the state and freezes,
the last one to leave restores it, so two threads dreaming on one model never see it unfrozen mid-run.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    >>> with frozen(net):
    ...     net.training, net[0].weight.requires_grad
    (False, False)
    >>> net.training, net[0].weight.requires_grad
    (True, True)
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn

_LOCK = threading.Lock()
_HELD: dict[int, list[Any]] = {}  # id(model) -> [holders, model, saved modes, saved requires_grad flags]


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with `model` in eval mode and no parameter requiring grad; restore both afterwards (also
    when the block raises). Yields the model.

    Example:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with frozen(bn):
        ...     _ = bn(torch.randn(4, 3))
        >>> bn.training, int(bn.num_batches_tracked)
        (True, 0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"frozen() takes a torch.nn.Module, got {type(model).__name__}")
    key = id(model)
    with _LOCK:
        entry = _HELD.get(key)
        if entry is None or entry[1] is not model:
            modes = [(module, module.training) for module in model.modules()]
            flags = [(param, param.requires_grad) for param in model.parameters()]
            entry = _HELD[key] = [0, model, modes, flags]
            model.eval()
            for param, _ in flags:
                param.requires_grad_(False)
        entry[0] += 1
    try:
        yield model
    finally:
        with _LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                if _HELD.get(key) is entry:
                    del _HELD[key]
                for module, mode in entry[2]:
                    module.training = mode
                for param, flag in entry[3]:
                    param.requires_grad_(flag)


__all__ = ["frozen"]
