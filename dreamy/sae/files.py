"""Write and read SAE folders in the SAELens layout (`cfg.json` + `sae_weights.safetensors`).

Reading is `dreamy.targets.saelens.read_sae_folder` (one-line `TargetError`s naming the file and the
expected shape); this module turns it into an `SAE` and writes folders back, each file atomically.

Example:
    >>> import tempfile
    >>> sae = SAE.initialized(8, 16, 4, generator=torch.Generator().manual_seed(0), cfg={"hook_name": "x"})
    >>> folder = save(sae, tempfile.mkdtemp())
    >>> again = load(folder)
    >>> again.architecture, again.k, again.cfg["hook_name"], torch.equal(again.W_dec, sae.W_dec)
    ('topk', 4, 'x', True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dreamy.core.files import write_atomic
from dreamy.sae.model import SAE
from dreamy.targets.saelens import CFG_NAME, WEIGHTS_NAME, read_sae_folder


def cfg_of(sae: SAE) -> dict:
    """The `cfg.json` of `sae`: its `cfg` entries plus `d_in`, `d_sae`, `architecture`, `k`, `apply_b_dec_to_input`.

    Example:
        >>> cfg = cfg_of(SAE.initialized(8, 16, 4, generator=torch.Generator().manual_seed(0)))
        >>> cfg["d_in"], cfg["d_sae"], cfg["architecture"], cfg["k"]
        (8, 16, 'topk', 4)
    """
    cfg = dict(sae.cfg)
    cfg.update(d_in=sae.d_in, d_sae=sae.d_sae, architecture=sae.architecture,
               apply_b_dec_to_input=sae.apply_b_dec_to_input)
    if sae.architecture == "topk":
        cfg["k"] = sae.k
    else:
        cfg.pop("k", None)
    return cfg


def save(sae: SAE, folder: str | os.PathLike) -> Path:
    """Write `sae` to `folder` (created if needed) in the SAELens layout; returns the folder.

    Example:
        >>> import tempfile
        >>> folder = save(SAE.initialized(4, 8, 2, generator=torch.Generator().manual_seed(0)), tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['cfg.json', 'sae_weights.safetensors']
    """
    from safetensors.torch import save

    folder = Path(folder).expanduser()
    weights = sae.weights()
    tensors = {"W_enc": weights.W_enc, "b_enc": weights.b_enc, "W_dec": weights.W_dec, "b_dec": weights.b_dec}
    if weights.threshold is not None:
        tensors["threshold"] = weights.threshold
    write_atomic(folder / WEIGHTS_NAME, save({name: t.contiguous() for name, t in tensors.items()}))
    write_atomic(folder / CFG_NAME, json.dumps(cfg_of(sae), indent=1, sort_keys=True))
    return folder


def load(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """The SAE stored in `folder` (SAELens layout; ReLU, JumpReLU or TopK) on `device`, in eval mode.

    Example:
        >>> load("/no/such/sae")
        Traceback (most recent call last):
        ...
        dreamy.targets.errors.TargetError: SAE folder '/no/such/sae' does not exist
    """
    sae = SAE(read_sae_folder(folder)).to(device)
    sae.requires_grad_(False)
    return sae.eval()
