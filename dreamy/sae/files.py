"""Write and read SAE folders in the SAELens 6 layout (`cfg.json` + `sae_weights.safetensors`).

Reading is `dreamy.targets.saelens.read_sae_folder` (every SAELens 6 variant, or a one-line `TargetError`
naming the file and the key); this module turns it into an `SAE` and writes folders back, each file
atomically, in the form SAELens 6's `SAE.load_from_disk` loads and encodes to the same values: `architecture`
(`standard` for our `relu`), `d_in`, `d_sae`, `dtype` (`float32`: the tensors are written in float32), `device`,
`apply_b_dec_to_input`, `normalize_activations`, `reshape_activations`, `k` and
`rescale_acts_by_decoder_norm: false` for TopK, and `metadata` (`sae_lens_version`, `hook_name`, `model_name`,
...). Other top-level keys of the cfg (e.g. dreamy's `training`) are kept; SAELens ignores them.

Example:
    >>> import tempfile
    >>> sae = SAE.initialized(8, 16, 4, generator=torch.Generator().manual_seed(0), cfg={"metadata": {"hook_name": "x"}})
    >>> folder = save(sae, tempfile.mkdtemp())
    >>> again = load(folder)
    >>> again.architecture, again.k, again.cfg["metadata"]["hook_name"], torch.equal(again.W_dec, sae.W_dec)
    ('topk', 4, 'x', True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dreamy.core.files import write_atomic
from dreamy.sae.model import SAE
from dreamy.targets.errors import TargetError
from dreamy.targets.saelens import CFG_NAME, METADATA_KEYS, WEIGHTS_NAME, metadata_of, read_sae_folder

# the SAELens 6 format these folders follow (SAELens reads a cfg without a version >= 6 as a pre-6 one)
SAELENS_FORMAT_VERSION = "6.0.0"
# top-level keys SAELens's config classes own: rewritten from the SAE, or dropped when they no longer apply
_SAELENS_KEYS = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                 "reshape_activations", "metadata", "k", "rescale_acts_by_decoder_norm", "d_out", "decoder_init_norm",
                 "l1_coefficient", "lp_norm", "l1_warm_up_steps", "use_sparse_activations", "aux_loss_coefficient",
                 "topk_threshold_lr", "matryoshka_widths", "use_matryoshka_aux_loss", "residual_threshold",
                 "max_iterations", "stop_on_duplicate_support", "activation_fn_str", "activation_fn",
                 "activation_fn_kwargs", "hook_point", "hook_point_head_index", "finetuning_scaling_factor",
                 "jumprelu_init_threshold", "jumprelu_bandwidth", "l0_coefficient", "l0_warm_up_steps",
                 "pre_act_loss_coefficient", "jumprelu_sparsity_loss_mode", "jumprelu_tanh_scale"} | set(METADATA_KEYS)
_SAELENS_NAMES = {"relu": "standard"}


def cfg_of(sae: SAE) -> dict[str, Any]:
    """The `cfg.json` of `sae` in the SAELens 6 layout (see the module docstring).

    Example:
        >>> cfg = cfg_of(SAE.initialized(8, 16, 4, generator=torch.Generator().manual_seed(0)))
        >>> cfg["d_in"], cfg["d_sae"], cfg["architecture"], cfg["k"], cfg["dtype"], cfg["metadata"]["sae_lens_version"]
        (8, 16, 'topk', 4, 'float32', '6.0.0')
    """
    metadata = metadata_of(sae.cfg)
    metadata.setdefault("sae_lens_version", SAELENS_FORMAT_VERSION)
    metadata.setdefault("sae_lens_training_version", metadata["sae_lens_version"])
    cfg = {key: value for key, value in sae.cfg.items() if key not in _SAELENS_KEYS}
    cfg.update(architecture=_SAELENS_NAMES.get(sae.architecture, sae.architecture), d_in=sae.d_in, d_sae=sae.d_sae,
               dtype="float32", device="cpu", apply_b_dec_to_input=sae.apply_b_dec_to_input,
               normalize_activations=sae.normalize_activations, reshape_activations=sae.reshape_activations)
    if sae.architecture in ("topk", "abstopk"):
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)  # any rescaling was folded in on reading
    cfg["metadata"] = metadata
    return cfg


def save(sae: SAE, folder: str | os.PathLike) -> Path:
    """Write `sae` to `folder` (created if needed) in the SAELens 6 layout; returns the folder.

    Example:
        >>> import tempfile
        >>> folder = save(SAE.initialized(4, 8, 2, generator=torch.Generator().manual_seed(0)), tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['cfg.json', 'sae_weights.safetensors']
    """
    from safetensors.torch import save

    folder = Path(folder).expanduser()
    weights = sae.weights()
    tensors = {"W_enc": weights.W_enc, "W_dec": weights.W_dec, "b_dec": weights.b_dec}
    if sae.architecture == "gated":
        tensors.update(b_mag=weights.b_enc, b_gate=weights.b_gate, r_mag=weights.r_mag)
    else:
        tensors["b_enc"] = weights.b_enc
    if weights.threshold is not None:
        tensors["threshold"] = weights.threshold
    write_atomic(folder / WEIGHTS_NAME, save({name: t.contiguous() for name, t in tensors.items()}))
    write_atomic(folder / CFG_NAME, json.dumps(cfg_of(sae), indent=1, sort_keys=True))
    return folder


def load(folder: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """The SAE stored in `folder` (SAELens layout; see `dreamy.targets.saelens` for what is read) on `device`,
    in eval mode.

    Example:
        >>> load("/no/such/sae")
        Traceback (most recent call last):
        ...
        dreamy.targets.errors.TargetError: SAE folder '/no/such/sae' does not exist
    """
    weights = read_sae_folder(folder)
    try:
        sae = SAE(weights)
    except ValueError as error:
        raise TargetError(f"SAE folder '{folder}': {error}") from error
    sae = sae.to(device)
    sae.requires_grad_(False)
    return sae.eval()
