"""`dream sites MODEL`: every site of a model (its `named_modules()` paths) with the shape it outputs on an example.

Example:
    >>> import argparse
    >>> run(argparse.Namespace(model="tiny:cnn", device="cpu"))  # doctest: +ELLIPSIS
    conv1 ...
    0
"""

from __future__ import annotations

import argparse

import torch


def run(args: argparse.Namespace) -> int:
    """Print every site of `args.model` with its output shape; returns the exit code."""
    from dreamy.models import load
    from dreamy.targets import list_sites

    loaded = load(args.model, args.device)
    if loaded.kind == "vision":
        example = (torch.zeros(1, 3, *loaded.preprocess.size, device=loaded.device),)
        listed = list_sites(loaded.model, *example)
    else:
        ids = loaded.tokenizer("Hello world", return_tensors="pt").input_ids.to(loaded.device)
        listed = list_sites(loaded.model, input_ids=ids)
    width = max(len(name) for name, _ in listed)
    for name, shape in listed:
        print(f"{name:<{width}}  {list(shape) if shape else '-'}")
    return 0
