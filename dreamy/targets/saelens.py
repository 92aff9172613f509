"""Read a sparse autoencoder stored in the SAELens folder layout, with one-line errors for bad files.

A folder holds `cfg.json` and `sae_weights.safetensors`:

- `cfg.json`: `d_in`, `d_sae`, `architecture` (`"standard"` (= ReLU), `"relu"`, `"jumprelu"` or `"topk"`),
  `hook_name` (the site), `model_name`, `k` (topk only), and optionally `apply_b_dec_to_input`
  (SAELens's default, used when absent: true — `b_dec` is subtracted from the input before encoding).
- `sae_weights.safetensors`: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`,
  and `threshold [d_sae]` for jumprelu.

Encoding is `act((x - b_dec) @ W_enc + b_enc)` (without `- b_dec` when `apply_b_dec_to_input` is false)
where `act` is ReLU, JumpReLU (`pre` where `pre > threshold`, else 0) or TopK (ReLU, then only the `k`
largest values of each row kept). Decoding is `z @ W_dec + b_dec`.

This module only reads files; `dreamy.sae` builds SAE objects on it and writes folders.

Example:
    >>> import json, tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 3, "architecture": "relu"}))
    >>> save_file({"W_enc": torch.ones(4, 3), "b_enc": torch.zeros(3), "W_dec": torch.ones(3, 4),
    ...            "b_dec": torch.zeros(4)}, str(folder / "sae_weights.safetensors"))
    >>> weights = read_sae_folder(folder)
    >>> weights.architecture, weights.d_in, weights.d_sae, weights.apply_b_dec_to_input
    ('relu', 4, 3, True)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamy.targets.errors import TargetError

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "relu", "jumprelu", "topk")


@dataclass(frozen=True)
class SAEWeights:
    """The validated contents of an SAELens folder (tensors in float32 on the CPU).

    `architecture` is normalised: `"standard"` reads as `"relu"`. `threshold` is set only for jumprelu and
    `k` only for topk. `cfg` is the whole `cfg.json` (other keys are kept and written back).
    """

    architecture: str
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    threshold: Tensor | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = True
    cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        """Width of the site the SAE reads."""
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        """Number of features (latents)."""
        return self.W_enc.shape[1]


def is_sae_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a folder (an SAE in the SAELens layout, or meant to be one).

    Example:
        >>> import tempfile
        >>> is_sae_folder(tempfile.mkdtemp()), is_sae_folder("no/such/file.pt")
        (True, False)
    """
    return Path(path).expanduser().is_dir()


def _read_cfg(folder: Path) -> dict[str, Any]:
    path = folder / CFG_NAME
    if not path.is_file():
        raise TargetError(f"SAE folder '{folder}' has no {CFG_NAME}; expected {CFG_NAME} and {WEIGHTS_NAME} (SAELens layout)")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        why = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise TargetError(f"cannot read '{path}' as JSON ({why})") from error
    if not isinstance(cfg, dict):
        raise TargetError(f"'{path}' holds a {type(cfg).__name__}; expected a JSON object with d_in, d_sae and architecture")
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TargetError(f"'{path}': {key} must be a positive integer, got {value!r}")
    architecture = cfg.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise TargetError(f"'{path}': architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    if architecture == "topk":
        k = cfg.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg["d_sae"]:
            raise TargetError(f"'{path}': a topk SAE needs k in 1..d_sae={cfg['d_sae']}, got {k!r}")
    apply = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply, bool):
        raise TargetError(f"'{path}': apply_b_dec_to_input must be true or false, got {apply!r}")
    return cfg


def _read_weights(folder: Path) -> dict[str, Tensor]:
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise TargetError(f"SAE folder '{folder}' has no {WEIGHTS_NAME}; expected W_enc, b_enc, W_dec, b_dec in it")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for broken files
        why = str(error).splitlines()[0] if str(error).strip() else "the file is empty or truncated"
        raise TargetError(f"cannot read '{path}' as safetensors ({type(error).__name__}: {why})") from error


def _tensor(data: dict[str, Tensor], name: str, shape: tuple[int, ...], path: Path) -> Tensor:
    shown = f"[{', '.join(str(s) for s in shape)}]"
    if name not in data:
        raise TargetError(f"'{path}' lacks {name} (expected shape {shown}); keys are {sorted(data)}")
    tensor = data[name]
    if tuple(tensor.shape) != shape:
        raise TargetError(f"'{path}': {name} has shape {list(tensor.shape)}; expected {shown} from {CFG_NAME}")
    tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise TargetError(f"'{path}': {name} has {int((~torch.isfinite(tensor)).sum())} non-finite value(s)")
    return tensor.contiguous()


def read_sae_folder(path: str | os.PathLike) -> SAEWeights:
    """Read and check an SAE folder in the SAELens layout; `TargetError` (one line) when it does not fit.

    Example:
        >>> read_sae_folder("/no/such/folder")
        Traceback (most recent call last):
        ...
        dreamy.targets.errors.TargetError: SAE folder '/no/such/folder' does not exist
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TargetError(f"SAE folder '{path}' does not exist")
    cfg = _read_cfg(folder)
    data = _read_weights(folder)
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    weights_path = folder / WEIGHTS_NAME
    architecture = "relu" if cfg.get("architecture", "standard") == "standard" else cfg["architecture"]
    return SAEWeights(
        architecture=architecture,
        W_enc=_tensor(data, "W_enc", (d_in, d_sae), weights_path),
        b_enc=_tensor(data, "b_enc", (d_sae,), weights_path),
        W_dec=_tensor(data, "W_dec", (d_sae, d_in), weights_path),
        b_dec=_tensor(data, "b_dec", (d_in,), weights_path),
        threshold=_tensor(data, "threshold", (d_sae,), weights_path) if architecture == "jumprelu" else None,
        k=cfg["k"] if architecture == "topk" else None,
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
        cfg=cfg,
    )
