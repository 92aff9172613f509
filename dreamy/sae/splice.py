"""Replace a site's activation during a forward: splice in an SAE reconstruction, zero it, add a direction.

`edit_site(model, site, fn)` is a context manager: while it is open, every forward that the opening thread runs
calls `fn(activation)` on the site's tensor (`[B, T, D]`, the module's output, or its first input for `@in`
sites, or tuple element `[k]`) and the model continues with what `fn` returns; other threads' forwards of the
same model are left alone. The hook is removed on exit, even on errors.

Example:
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> with edit_site(net, "0", lambda a: torch.zeros_like(a)):
    ...     net(torch.ones(1, 2)).tolist()
    [[0.0, 0.0]]
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from dreamy.targets import TargetError, parse, resolve_module
from dreamy.targets.dialects import reading
from dreamy.targets.spec import Site


def _replace(value: Any, index: int | None, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)) and value:
        position = 0 if index is None else index
        items = list(value)
        items[position] = _replace(items[position], None, fn)
        return type(value)(items) if isinstance(value, tuple) else items
    raise TypeError(f"cannot edit a site that gives a {type(value).__name__}")


def _site(site: str | Site) -> Site:
    if isinstance(site, Site):
        return site
    return parse(site).terms[0].site


@contextmanager
def edit_site(model: nn.Module, site: str | Site, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While open, the model's forward (in this thread) uses `fn(activation)` in place of the site's activation.
    A TransformerLens name edits the module site it reads (`dreamy.targets.dialects`); one computed from a
    module's tensor (`*.hook_normalized`) cannot be edited.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Identity())
        >>> with edit_site(net, "1@in", lambda a: a * 0 + 1):
        ...     net(torch.zeros(1, 2)).tolist()
        [[1.0, 1.0]]
    """
    given = _site(site)
    how = reading(model, given)
    if how.transform is not None or how.prepare is not None:
        raise TargetError(f"site '{given}' is computed from the module site '{how.site}', so it cannot be replaced in "
                          "the forward; edit a residual-stream site instead")
    where = how.site
    module = resolve_module(model, where.path)
    caller = threading.get_ident()
    if where.input:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if threading.get_ident() != caller:
                return None  # another thread's forward of the same model
            if args:
                return _replace(args, where.index, fn), kwargs
            name = next(iter(kwargs))
            return args, {**kwargs, name: _replace(kwargs[name], where.index, fn)}
        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if threading.get_ident() != caller:
                return None
            return _replace(output, where.index, fn)
        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def after_start(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """`fn` applied to every position but the first (the start token keeps its activation) of `[B, T, D]`.

    Example:
        >>> after_start(torch.zeros_like)(torch.ones(1, 3, 2))[0].tolist()
        [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    """
    def edited(activation: Tensor) -> Tensor:
        return torch.cat([activation[:, :1], fn(activation[:, 1:]).to(activation.dtype)], dim=1)
    return edited
