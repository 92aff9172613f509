"""`dream sites MODEL`: every site of a model with the shape it outputs on an example: its `named_modules()` paths,
or with `--names transformerlens` the TransformerLens hook names it gives (`dreamy.targets.dialects`).

Example:
    >>> import argparse
    >>> run(argparse.Namespace(model="tiny:cnn", device="cpu", names="modules"))  # doctest: +ELLIPSIS
    conv1 ...
    0
    >>> run(argparse.Namespace(model="tiny:lm", device="cpu", names="transformerlens"))  # doctest: +ELLIPSIS
    hook_embed ...
    blocks.1.hook_resid_post      [1, 10, 64]
    ln_final.hook_normalized      [1, 10, 64]
    0
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from dreamy.cli.arguments import UsageError
from dreamy.cli.flags import DEFAULT_MODELS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `sites` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); returns it.

    Example:
        >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.endswith("sites")
        True
    """
    cmd = subparsers.add_parser("sites", help="list a model's sites with their output shapes")
    cmd.add_argument("model", nargs="?", default=DEFAULT_MODELS["image"])
    cmd.add_argument("--device", default="cpu")
    cmd.add_argument("--names", default="modules", choices=["modules", "transformerlens"],
                     help="module paths (default), or the TransformerLens hook names a Llama-, Gemma-3-, GPT-2- or "
                          "GPT-NeoX-style language model gives (blocks.L.hook_resid_post, ...)")
    return cmd


def _notes(name: str, shape: tuple[int, ...], heads: int | None) -> str:
    """What the units of a per-head site are."""
    if name.endswith("attn.hook_z") and heads and shape:
        return f"  {heads} heads of {shape[-1] // heads}: units head=H,I | head=H,norm | head=H,dir=FILE"
    if name.endswith("attn.hook_pattern") and heads:
        return "  [batch, heads, query, key]: unit head=H,key=J (the query is the reduction: the last position by default)"
    return ""


def run(args: argparse.Namespace) -> int:
    """Print every site of `args.model` with its output shape; returns the exit code."""
    from dreamy.models import load
    from dreamy.targets import list_sites

    loaded = load(args.model, args.device)
    if args.names == "transformerlens":
        from dreamy.targets.dialects import family_of, list_sites_by_name, reading
        from dreamy.targets.spec import Site

        if loaded.kind != "language" or family_of(loaded.model) is None:
            raise UsageError(f"--names transformerlens: {args.model} is not a Llama-, Gemma-3-, GPT-2- or GPT-NeoX-style "
                             "language model, whose TransformerLens names are known; list its modules instead")
        ids = loaded.tokenizer("Hello world", return_tensors="pt").input_ids.to(loaded.device)
        listed = list_sites_by_name(loaded.model, input_ids=ids)
        notes = [_notes(name, shape, reading(loaded.model, Site(name)).info.heads) for name, shape in listed]
    elif loaded.kind == "vision":
        example = (torch.zeros(1, 3, *loaded.preprocess.size, device=loaded.device),)
        listed = list_sites(loaded.model, *example)
        notes = [""] * len(listed)
    else:
        ids = loaded.tokenizer("Hello world", return_tensors="pt").input_ids.to(loaded.device)
        listed = list_sites(loaded.model, input_ids=ids)
        notes = [""] * len(listed)
    width = max(len(name) for name, _ in listed)
    for (name, shape), note in zip(listed, notes):
        print(f"{name:<{width}}  {list(shape) if shape else '-'}{note}")
    return 0
