"""Sparse autoencoders in the SAELens 6 folder layout: read every variant SAELens writes, or refuse it by name.

A folder holds `cfg.json` and `sae_weights.safetensors` (what SAELens's `SAE.save_model` writes and
`SAE.load_from_disk` reads). What each `cfg.json` key does here:

- `architecture`: read are `standard` (ReLU; `relu` is our old name for it), `jumprelu`, `topk`, `abstopk`,
  `gated`, the training checkpoints `batchtopk` and `matryoshka_batchtopk` (read as the JumpReLU SAE that
  SAELens's `save_inference_model` makes of them: one threshold `topk_threshold` for every latent), and the
  encoder side of `transcoder`, `skip_transcoder`, `jumprelu_transcoder`, `jumprelu_skip_transcoder` (a target
  can read a transcoder's latents; its decoder writes another site, so `dreamy.sae` does not reconstruct with
  it). `matching_pursuit` and `temporal` are refused by name (no encoder: a latent's value depends on the
  others'). A cfg without `architecture` is a pre-6 one (`activation_fn_str` relu or topk).
- `d_in`, `d_sae`, `k` (topk, abstopk), `d_out` (transcoders), `apply_b_dec_to_input` (default true: `b_dec`
  is subtracted from the input before encoding), `rescale_acts_by_decoder_norm` (topk family: folded into the
  encoder on reading, which leaves every encoded value as SAELens gives it).
- `normalize_activations`, applied to the input as SAELens does before encoding: `none`; `constant_norm_rescale`
  (`x * sqrt(d_in) / |x|` per token); `layer_norm` (`(x - mean) / (std + 1e-5)`, std with N-1);
  `expected_average_only_in` and `covariance_whitening` are the identity at inference in SAELens too (the
  training-time factor or whitening is folded into the weights when training ends), read as such with one
  warning, because a folder that still says so does not hold that factor.
- `reshape_activations`: `none`, or `hook_z` (the input is the per-head attention output flattened
  head-major, `[..., n_heads * d_head]`: the input of the attention output projection on Hugging Face models).
- `dtype` (`float32`, `float64`, `float16`, `bfloat16`, with or without `torch.`): the tensors are read and
  computed in float32 whatever it says (a bfloat16 SAE then computes more exactly than in SAELens).
- `metadata` (SAELens 6) or the top level (pre-6 files and our old ones) alike: `hook_name` (the site),
  `hook_head_index` (an SAE of one head of a `hook_z` site), `model_name`, `model_class_name`,
  `hf_hook_name`, `model_from_pretrained_kwargs` (a TransformerLens model's weight processing; see
  `dreamy.targets.dialects`). `metadata` wins where both have a key.

Encoding is SAELens's: `x' = normalize(x) - b_dec` (no `- b_dec` unless `apply_b_dec_to_input`), then
ReLU `relu(x' W_enc + b_enc)`, JumpReLU `relu(h) * (h > threshold)`, TopK (`relu` of the k largest `h`),
AbsTopK (the k largest `|h|`, signed), gated `(x' W_enc + b_gate > 0) * relu(x' (W_enc * exp(r_mag)) + b_mag)`.

Example:
    >>> import json, tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 3, "architecture": "standard",
    ...     "dtype": "float32", "metadata": {"hook_name": "blocks.2.hook_resid_post"}}))
    >>> save_file({"W_enc": torch.ones(4, 3), "b_enc": torch.zeros(3), "W_dec": torch.ones(3, 4),
    ...            "b_dec": torch.zeros(4)}, str(folder / "sae_weights.safetensors"))
    >>> weights = read_sae_folder(folder)
    >>> weights.architecture, weights.d_in, weights.d_sae, weights.apply_b_dec_to_input, weights.hook_name
    ('relu', 4, 3, True, 'blocks.2.hook_resid_post')
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamy.targets.errors import TargetError

log = logging.getLogger(__name__)

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
# what `dreamy.sae.SAE` reconstructs with (and `dreamy.sae.save` writes)
ARCHITECTURES = ("relu", "jumprelu", "topk", "abstopk", "gated")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
# SAELens's architecture names -> ours; the transcoders' encoders read as the SAE of the same activation
READ_ARCHITECTURES = {
    "standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk", "abstopk": "abstopk", "gated": "gated",
    "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu",
    "transcoder": "relu", "skip_transcoder": "relu", "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
}
TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
REFUSED_ARCHITECTURES = {
    "matching_pursuit": "a matching-pursuit SAE has no encoder: each latent is chosen greedily after the others, "
                        "so no latent is a function of the input alone",
    "temporal": "a temporal SAE attends across positions, so a latent at one token is no function of that token's "
                "activation",
}
IDENTITY_AT_INFERENCE = {
    "expected_average_only_in": "the training-time scale factor sqrt(d_in)/mean|x| is folded into the weights when "
                                "SAELens training ends; this folder still says so, so it does not hold the factor",
    "covariance_whitening": "the training-time whitening is folded into the weights when SAELens training ends; this "
                            "folder still says so, so it does not hold the whitening",
}
DTYPES = ("float32", "float64", "float16", "bfloat16")
# cfg keys SAELens 6 keeps in `metadata` (pre-6 files have them at the top level)
METADATA_KEYS = ("model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs",
                 "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice",
                 "dataset_path", "sae_lens_version", "sae_lens_training_version", "hook_name_out",
                 "hook_head_index_out", "hf_hook_name", "hf_hook_name_out")
LN_EPS = 1e-5
_warned: set[tuple[str, str]] = set()


def warn_once(key: tuple[str, str], message: str) -> None:
    """Log `message` as a warning the first time `key` is seen in this process.

    Example:
        >>> warn_once(("doc", "example"), "shown once"); warn_once(("doc", "example"), "not shown")
    """
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


@dataclass(frozen=True)
class SAEWeights:
    """The validated contents of an SAE folder (tensors in float32 on the CPU), in the form dreamy encodes with.

    `architecture` is ours (`relu`, `jumprelu`, `topk`, `abstopk`, `gated`; see `READ_ARCHITECTURES`); folded
    forms are stored (a TopK SAE's decoder-norm rescaling is in `W_enc`/`b_enc`). `b_enc` of a gated SAE is
    `b_mag`; `b_gate` and `r_mag` are its own. A transcoder (`transcoder=True`) has `W_dec [d_sae, d_out]`.
    `cfg` is the whole `cfg.json` (its other keys are kept and written back).
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
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    b_gate: Tensor | None = None
    r_mag: Tensor | None = None
    transcoder: bool = False

    @property
    def d_in(self) -> int:
        """Width of the site the SAE reads."""
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        """Number of features (latents)."""
        return self.W_enc.shape[1]

    @property
    def metadata(self) -> dict[str, Any]:
        """The SAELens metadata: top-level keys of pre-6 files overlaid by `cfg["metadata"]`.

        Example:
            >>> w = SAEWeights("relu", torch.zeros(2, 1), torch.zeros(1), torch.zeros(1, 2), torch.zeros(2),
            ...                cfg={"hook_name": "old", "metadata": {"hook_name": "new"}})
            >>> w.metadata["hook_name"]
            'new'
        """
        return metadata_of(self.cfg)

    @property
    def hook_name(self) -> str | None:
        """The site the SAE was trained on, as its cfg names it (a TransformerLens hook, an HF module, a spec)."""
        return self.metadata.get("hook_name")

    @property
    def model_name(self) -> str | None:
        """The model the SAE was trained on, as its cfg names it."""
        return self.metadata.get("model_name")

    @property
    def head_index(self) -> int | None:
        """`hook_head_index`: the one attention head of a `[.., n_heads, d_head]` site this SAE reads, or None."""
        value = self.metadata.get("hook_head_index")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def processing(self) -> tuple[str, ...]:
        """The TransformerLens weight processings turned on in `model_from_pretrained_kwargs` (e.g.
        `('center_writing_weights',)`): what the SAE's training activations went through.

        Example:
            >>> SAEWeights("relu", torch.zeros(2, 1), torch.zeros(1), torch.zeros(1, 2), torch.zeros(2),
            ...            cfg={"metadata": {"model_from_pretrained_kwargs": {"fold_ln": True, "center_writing_weights": False}}}).processing
            ('fold_ln',)
        """
        kwargs = self.metadata.get("model_from_pretrained_kwargs") or {}
        if not isinstance(kwargs, dict):
            return ()
        return tuple(name for name in PROCESSINGS if kwargs.get(name) is True)


PROCESSINGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices")


def metadata_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """SAELens metadata of a cfg dict: the top-level `METADATA_KEYS` (pre-6 files, our old folders), then
    `cfg["metadata"]` over them (SAELens 6). Pre-6 names (`hook_point`, `hook_point_head_index`) are renamed.

    Example:
        >>> metadata_of({"hook_point": "blocks.0.hook_resid_pre", "metadata": {"model_name": "gpt2"}})
        {'hook_name': 'blocks.0.hook_resid_pre', 'model_name': 'gpt2'}
    """
    out: dict[str, Any] = {}
    renamed = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    for old, new in renamed.items():
        if old in cfg:
            out[new] = cfg[old]
    out.update({key: cfg[key] for key in METADATA_KEYS if key in cfg})
    nested = cfg.get("metadata")
    if isinstance(nested, dict):
        out.update({key: value for key, value in nested.items() if value is not None or key not in out})
    return out


def _folder_of(path: str | os.PathLike) -> Path:
    """`path` as a folder: the weights file inside an SAELens folder (`DIR/sae_weights.safetensors` beside a
    `cfg.json`) is its folder, whose cfg says how to read it (normalization, architecture, site)."""
    path = Path(path).expanduser()
    if path.name == WEIGHTS_NAME and path.is_file() and (path.parent / CFG_NAME).is_file():
        return path.parent
    return path


def is_sae_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a folder (an SAE in the SAELens layout, or meant to be one), or the weights file
    inside an SAELens folder (read with the folder's `cfg.json`).

    Example:
        >>> import tempfile
        >>> is_sae_folder(tempfile.mkdtemp()), is_sae_folder("no/such/file.pt")
        (True, False)
    """
    return _folder_of(path).is_dir()


def _positive_int(cfg: dict[str, Any], key: str, path: Path, low: int = 1, high: int | None = None,
                  allow_whole_float: bool = False) -> int:
    value = cfg.get(key)
    if allow_whole_float and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else "a positive integer"
        raise TargetError(f"'{path}': {key} must be {span}, got {value!r}")
    return value


def _architecture(cfg: dict[str, Any], path: Path) -> tuple[str, str]:
    """(SAELens architecture name, ours) of a cfg, pre-6 `activation_fn_str` included; refused ones raise."""
    name = cfg.get("architecture")
    if name is None:  # a pre-6 cfg (or our old folders): standard unless the activation says topk
        activation = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        if activation in (None, "relu"):
            name = "standard"
        elif activation == "topk":
            name = "topk"
        else:
            raise TargetError(f"'{path}': activation_fn_str {activation!r} is not read (only relu and topk); "
                              "save the SAE with SAELens 6, which names its architecture")
    if not isinstance(name, str):
        raise TargetError(f"'{path}': architecture must be a string, got {name!r}")
    if name in REFUSED_ARCHITECTURES:
        raise TargetError(f"'{path}': architecture {name!r} is not read: {REFUSED_ARCHITECTURES[name]}")
    if name not in READ_ARCHITECTURES:
        known = ", ".join(sorted(set(READ_ARCHITECTURES) - {"relu"}))
        raise TargetError(f"'{path}': architecture {name!r} is not one of {known}")
    return name, READ_ARCHITECTURES[name]


def _normalization(cfg: dict[str, Any], path: Path) -> str:
    value = cfg.get("normalize_activations", "none")
    if value is None or value is False:  # pre-6 cfgs: a bool
        value = "none"
    elif value is True:
        value = "expected_average_only_in"
    if value in IDENTITY_AT_INFERENCE:
        warn_once((str(path), value), f"SAE '{path.parent}': normalize_activations {value!r} is read as SAELens reads it, "
                  f"as no normalization: {IDENTITY_AT_INFERENCE[value]}; the values are SAELens's encode, which may "
                  "differ from what the SAE saw in training")
        return "none"
    if value not in NORMALIZATIONS:
        raise TargetError(f"'{path}': normalize_activations {value!r} is not one of "
                          f"{', '.join(NORMALIZATIONS + tuple(IDENTITY_AT_INFERENCE))}")
    return value


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
    if "metadata" in cfg and not isinstance(cfg["metadata"], dict):
        raise TargetError(f"'{path}': metadata must be a JSON object, got {cfg['metadata']!r}")
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


def _check_dtype(cfg: dict[str, Any], path: Path) -> None:
    value = cfg.get("dtype", "float32")
    if not isinstance(value, str) or value.removeprefix("torch.") not in DTYPES:
        raise TargetError(f"'{path}': dtype {value!r} is not one of {', '.join(DTYPES)} (with or without 'torch.')")


def _check_reshape(cfg: dict[str, Any], hook_name: Any, path: Path) -> str:
    value = cfg.get("reshape_activations", "hook_z" if isinstance(hook_name, str) and "hook_z" in hook_name
                    and "architecture" not in cfg else "none")
    if value not in ("none", "hook_z"):
        raise TargetError(f"'{path}': reshape_activations {value!r} is not one of none, hook_z")
    return value


def read_sae_folder(path: str | os.PathLike) -> SAEWeights:
    """Read and check an SAE folder in the SAELens layout; `TargetError` (one line) when it does not fit.

    Example:
        >>> read_sae_folder("/no/such/folder")
        Traceback (most recent call last):
        ...
        dreamy.targets.errors.TargetError: SAE folder '/no/such/folder' does not exist
    """
    folder = _folder_of(path)
    if folder.is_file():
        raise TargetError(f"SAE '{path}' is a file, not a folder in the SAELens layout ({CFG_NAME} + {WEIGHTS_NAME})")
    if not folder.is_dir():
        raise TargetError(f"SAE folder '{path}' does not exist")
    cfg = _read_cfg(folder)
    cfg_path = folder / CFG_NAME
    d_in = _positive_int(cfg, "d_in", cfg_path)
    d_sae = _positive_int(cfg, "d_sae", cfg_path)
    name, architecture = _architecture(cfg, cfg_path)
    _check_dtype(cfg, cfg_path)
    normalize = _normalization(cfg, cfg_path)
    meta = metadata_of(cfg)
    reshape = _check_reshape(cfg, meta.get("hook_name"), cfg_path)
    apply = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply, bool):
        raise TargetError(f"'{cfg_path}': apply_b_dec_to_input must be true or false, got {apply!r}")
    transcoder = name in TRANSCODERS
    if transcoder and apply:
        raise TargetError(f"'{cfg_path}': a {name} cannot have apply_b_dec_to_input true (its b_dec is the output's); "
                          "set it to false, as SAELens requires")
    data = _read_weights(folder)
    weights_path = folder / WEIGHTS_NAME
    if "scaling_factor" in data and not bool((data["scaling_factor"] == 1).all()):
        raise TargetError(f"'{weights_path}' holds a scaling_factor that is not all ones (a fine-tuning scale); it is "
                          "not read (SAELens 6 cannot load it either): fold it into W_dec and b_dec")
    d_out = d_in
    if transcoder:
        d_out = cfg.get("d_out") if "d_out" in cfg else (data["b_dec"].shape[0] if "b_dec" in data and data["b_dec"].ndim == 1 else None)
        d_out = _positive_int({"d_out": d_out}, "d_out", cfg_path)
    W_enc = _tensor(data, "W_enc", (d_in, d_sae), weights_path)
    W_dec = _tensor(data, "W_dec", (d_sae, d_out), weights_path)
    b_dec = _tensor(data, "b_dec", (d_out,), weights_path)
    threshold = b_gate = r_mag = None
    k = None
    if architecture == "gated":
        b_enc = _tensor(data, "b_mag", (d_sae,), weights_path)
        b_gate = _tensor(data, "b_gate", (d_sae,), weights_path)
        r_mag = _tensor(data, "r_mag", (d_sae,), weights_path)
    else:
        b_enc = _tensor(data, "b_enc", (d_sae,), weights_path)
    if name in ("batchtopk", "matryoshka_batchtopk"):
        theta = _tensor(data, "topk_threshold", (), weights_path)
        threshold = theta.expand(d_sae).contiguous()
    elif architecture == "jumprelu":
        threshold = _tensor(data, "threshold", (d_sae,), weights_path)
    if architecture in ("topk", "abstopk"):
        if "k" not in cfg and "architecture" not in cfg:
            cfg_k = (cfg.get("activation_fn_kwargs") or {}).get("k")
            k = _positive_int({"k": cfg_k}, "k", cfg_path, high=d_sae)
        else:
            k = _positive_int(cfg, "k", cfg_path, high=d_sae)
    rescale_default = name in ("batchtopk", "matryoshka_batchtopk")
    rescale = cfg.get("rescale_acts_by_decoder_norm", rescale_default)
    if not isinstance(rescale, bool):
        raise TargetError(f"'{cfg_path}': rescale_acts_by_decoder_norm must be true or false, got {rescale!r}")
    if rescale and name in ("topk", "abstopk", "batchtopk", "matryoshka_batchtopk"):
        # SAELens multiplies each pre-activation by its decoder row's norm (and divides when decoding): folded here
        norms = W_dec.norm(dim=1)
        W_enc, b_enc = W_enc * norms, b_enc * norms
        W_dec = W_dec / norms.clamp(min=1e-30)[:, None]
    return SAEWeights(architecture=architecture, W_enc=W_enc.contiguous(), b_enc=b_enc.contiguous(), W_dec=W_dec.contiguous(),
                      b_dec=b_dec, threshold=threshold, k=k, apply_b_dec_to_input=apply, cfg=cfg,
                      normalize_activations=normalize, reshape_activations=reshape, b_gate=b_gate, r_mag=r_mag,
                      transcoder=transcoder)


def normalize_input(x: Tensor, mode: str) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """`x` normalized over its last dimension as SAELens's `normalize_activations` does before encoding, and what
    undoes it (`(scale, shift)`: the original is `normalized * scale + shift`; None for `none`).

    Example:
        >>> x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
        >>> normalized, (scale, shift) = normalize_input(x, "layer_norm")
        >>> [round(v, 4) for v in normalized[0].tolist()], torch.allclose(normalized * scale + shift, x)
        ([-0.9258, -0.4629, 0.0, 1.3887], True)
    """
    if mode == "none":
        return x, None
    if mode == "constant_norm_rescale":
        coefficient = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True)
        return x * coefficient, (1.0 / coefficient, torch.zeros_like(coefficient))
    if mode == "layer_norm":
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + LN_EPS), (std, mean)
    raise ValueError(f"normalize_activations {mode!r} is not one of {', '.join(NORMALIZATIONS)}")


def activate(architecture: str, pre: Tensor, *, threshold: Tensor | None = None, k: int | None = None,
             gate: Tensor | None = None) -> Tensor:
    """The activation of pre-activations `pre [..., d_sae]` as SAELens encodes them (`gate`: a gated SAE's
    `x' W_enc + b_gate`).

    Example:
        >>> pre = torch.tensor([0.5, -2.0, 1.0])
        >>> activate("topk", pre, k=2).tolist(), activate("abstopk", pre, k=2).tolist()
        ([0.5, 0.0, 1.0], [0.0, -2.0, 1.0])
    """
    if architecture == "relu":
        return pre.clamp(min=0)
    if architecture == "jumprelu":
        return torch.where(pre > threshold.to(pre), pre.clamp(min=0), torch.zeros_like(pre))
    if architecture == "gated":
        return torch.where(gate > 0, pre.clamp(min=0), torch.zeros_like(pre))
    if architecture == "topk":
        values, indices = pre.topk(k, dim=-1, sorted=True)
        return torch.zeros_like(pre).scatter(-1, indices, values.clamp(min=0))
    if architecture == "abstopk":
        indices = pre.abs().topk(k, dim=-1, sorted=True).indices
        return torch.zeros_like(pre).scatter(-1, indices, pre.gather(-1, indices))
    raise ValueError(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")


@dataclass(frozen=True)
class SiteInfo:
    """What a model says about a site, for the units that need it (filled in by `dreamy.targets.dialects`).

    `heads`: the site holds `heads` equal per-head slices (`[..., heads * d]`, head-major); `norm`: the
    model's normalization (`"layer"` or `"rms"`); `basis`: `"residual"` (the residual stream or a write to it),
    `"z"` (per-head attention outputs), or None when unknown.
    """

    heads: int | None = None
    norm: str | None = None
    basis: str | None = None


def placed_like(x: Tensor, tensors: dict[str, Tensor | None], placed: dict[tuple, dict[str, Tensor | None]]
                ) -> dict[str, Tensor | None]:
    """`tensors` on `x`'s device and dtype (`"columns"`, an index tensor, on its device only), made once per device
    and dtype and kept in `placed`, so a scorer called every step copies nothing.

    Example:
        >>> placed = {}
        >>> out = placed_like(torch.zeros(2, dtype=torch.float64), {"w": torch.ones(3), "columns": torch.arange(2)}, placed)
        >>> out["w"].dtype, out["columns"].dtype, len(placed)
        (torch.float64, torch.int64, 1)
    """
    key = (x.device, x.dtype)
    if key not in placed:
        with torch.inference_mode(False):  # normal tensors: gradient passes may save them for backward
            moved = {name: None if t is None else t.to(x.device) if name == "columns" else t.to(x)
                     for name, t in tensors.items()}
            # `.to` returns the tensor itself when nothing changes: one made under inference_mode stays an
            # inference tensor, which a gradient pass cannot save, so it is copied
            placed[key] = {name: t.clone() if t is not None and t.is_inference() else t for name, t in moved.items()}
    return placed[key]



class FeatureEncoder:
    """Latents `indices` of one SAE as a function of the site's activation: `[..., width] -> [..., n]`, one encode
    for all of them (one matmul; a TopK SAE's full pre-activation, since its top k is chosen among every latent).

    Each value is what the SAE's encode returns (SAELens's `encode`): ReLU, JumpReLU (0 at or below its threshold),
    gated (0 where its gate is closed), TopK (0 outside that position's top k), AbsTopK (signed, 0 outside the k
    largest magnitudes). Its gradient is the latent's pre-activation's (straight through), so a dream whose latent
    starts off (below threshold, out of the top k) still gets a signal; the value is never the surrogate.

    Example:
        >>> w = SAEWeights("topk", torch.eye(3), torch.zeros(3), torch.eye(3), torch.zeros(3), k=1)
        >>> encoder = features_encoder(w, [0, 2], "sae")
        >>> encoder(torch.tensor([[3.0, 5.0, 4.0], [6.0, 1.0, 2.0]]), "site").tolist()
        [[0.0, 0.0], [6.0, 0.0]]
    """

    def __init__(self, path: str, indices: "tuple[int, ...]", architecture: str, w: Tensor, b: Tensor,
                 b_dec: Tensor | None = None, threshold: Tensor | None = None, w_gate: Tensor | None = None,
                 b_gate: Tensor | None = None, normalize: str = "none", head_index: int | None = None,
                 processing: tuple[str, ...] = (), k: int | None = None) -> None:
        self.path, self.indices, self.architecture = path, tuple(indices), architecture
        self.normalize, self.head_index, self.processing, self.k = normalize, head_index, processing, k
        # a TopK family SAE keeps every latent's encoder (`w [d_in, d_sae]`) and picks `indices` after the top k
        self.every = architecture in ("topk", "abstopk")
        self.identity = self.every and self.indices == tuple(range(w.shape[1]))
        self._tensors = {"w": w, "b": b, "b_dec": b_dec, "threshold": threshold, "w_gate": w_gate, "b_gate": b_gate,
                         "columns": torch.tensor(self.indices, dtype=torch.long) if self.every else None}
        self._placed: dict[tuple, dict[str, Tensor | None]] = {}

    @property
    def index(self) -> int:
        """The first (for one latent: the) latent index."""
        return self.indices[0]

    @property
    def d_in(self) -> int:
        """Width of the input the SAE reads (one head's when `head_index` is set)."""
        return self._tensors["w"].shape[0]

    def _on(self, x: Tensor) -> dict[str, Tensor | None]:
        """The tensors on `x`'s device and dtype, made once per device and dtype (not copied at every call)."""
        return placed_like(x, self._tensors, self._placed)

    def _input(self, x: Tensor, site: str, info: SiteInfo | None) -> Tensor:
        size = x.shape[-1]
        if self.head_index is not None and size != self.d_in:
            heads = info.heads if info is not None and info.heads else (size // self.d_in if size % self.d_in == 0 else None)
            if heads is None or heads * self.d_in != size or not 0 <= self.head_index < heads:
                raise TargetError(f"SAE {self.path} reads head {self.head_index} (d_in={self.d_in}) of a per-head site, "
                                  f"but site '{site}' has {size} features; use the attention's hook_z site")
            return x[..., self.head_index * self.d_in:(self.head_index + 1) * self.d_in]
        if size != self.d_in:
            raise TargetError(f"SAE {self.path} reads d_in={self.d_in} features but site '{site}' has {size}; "
                              "use the site the SAE was trained on")
        return x

    def _processed(self, x: Tensor, info: SiteInfo | None) -> Tensor:
        """The activation as a processed TransformerLens model shows it (see `dreamy.targets.dialects`)."""
        if "center_writing_weights" in self.processing:
            if info is not None and info.basis == "residual" and info.norm == "layer":
                return x - x.mean(dim=-1, keepdim=True)
            if info is None or info.basis is None or info.norm is None:
                warn_once((self.path, "center"), f"SAE {self.path} was trained on a TransformerLens model loaded with "
                          "center_writing_weights=True, which removes each residual vector's mean on LayerNorm models; "
                          "dreamy cannot tell whether this site is such a residual, so it reads the site as it is "
                          "(name the site as blocks.L.hook_resid_post etc. to get the centring)")
        if "fold_value_biases" in self.processing and info is not None and info.basis == "z":
            warn_once((self.path, "fold_value_biases"), f"SAE {self.path} was trained on a TransformerLens model loaded "
                      "with fold_value_biases=True, whose per-head attention outputs lack the value bias; dreamy reads "
                      "the model's own outputs, which are shifted by that bias where the model has one")
        return x

    def __call__(self, x: Tensor, site: str, info: SiteInfo | None = None) -> Tensor:
        """The latents' values at every position of `x` (`[..., width] -> [..., n]`); `site` names the site in errors."""
        x = self._processed(self._input(x, site, info), info)
        x, _ = normalize_input(x, self.normalize)
        t = self._on(x)
        if t["b_dec"] is not None:
            x = x - t["b_dec"]
        pre = torch.addmm(t["b"], x.reshape(-1, x.shape[-1]), t["w"]).reshape(*x.shape[:-1], -1)
        if self.architecture == "gated":
            post = activate("gated", pre, gate=x @ t["w_gate"] + t["b_gate"])
        elif self.identity:
            post = activate(self.architecture, pre, k=self.k)
        elif self.every:  # the top k among every latent, then the asked ones: kept ones keep their value, others 0
            chosen = (pre.abs() if self.architecture == "abstopk" else pre).topk(self.k, dim=-1, sorted=True).indices
            columns = t["columns"]
            if len(self.indices) * self.k <= pre.shape[-1]:  # few asked: compare them with the k chosen
                kept = (chosen.unsqueeze(-1) == columns).any(dim=-2)
            else:
                kept = torch.zeros(pre.shape, dtype=torch.bool, device=pre.device).scatter(-1, chosen, True)
                kept = kept.index_select(-1, columns)
            pre = pre.index_select(-1, columns)
            post = torch.where(kept, pre if self.architecture == "abstopk" else pre.clamp(min=0), torch.zeros_like(pre))
        else:
            post = activate(self.architecture, pre, threshold=t["threshold"])
        if not pre.requires_grad:
            return post
        return pre + (post - pre).detach()  # the value is post; the gradient is the pre-activation's


def features_encoder(weights: SAEWeights, indices: "Sequence[int]", path: str) -> FeatureEncoder:
    """Latents `indices` of `weights` (read from `path`) as one `FeatureEncoder`; `TargetError` when one is out of
    range.

    Example:
        >>> w = SAEWeights("relu", torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2))
        >>> features_encoder(w, [1, 0], "sae")(torch.tensor([[3.0, -4.0]]), "site").tolist()
        [[0.0, 3.0]]
    """
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < weights.d_sae]
    if bad:
        raise TargetError(f"SAE feature {bad[0]} out of range for '{path}' with {weights.d_sae} features; valid 0..{weights.d_sae - 1}")
    gated, every = weights.architecture == "gated", weights.architecture in ("topk", "abstopk")
    columns = torch.tensor(indices, dtype=torch.long)
    w = weights.W_enc if every else weights.W_enc.index_select(1, columns).contiguous()
    b = weights.b_enc if every else weights.b_enc.index_select(0, columns)
    return FeatureEncoder(
        path=path, indices=tuple(indices), architecture=weights.architecture,
        w=w * torch.exp(weights.r_mag.index_select(0, columns)) if gated else w, b=b,
        b_dec=weights.b_dec if weights.apply_b_dec_to_input else None,
        threshold=weights.threshold.index_select(0, columns) if weights.threshold is not None else None,
        w_gate=w if gated else None, b_gate=weights.b_gate.index_select(0, columns) if gated else None,
        normalize=weights.normalize_activations, head_index=weights.head_index, processing=weights.processing,
        k=weights.k)


def feature_encoder(weights: SAEWeights, index: int, path: str) -> FeatureEncoder:
    """Latent `index` of `weights` (read from `path`) as a `FeatureEncoder` of one latent (`[..., 1]` values).

    Example:
        >>> w = SAEWeights("relu", torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2))
        >>> feature_encoder(w, 1, "sae")(torch.tensor([[3.0, -4.0]]), "site").tolist()
        [[0.0]]
    """
    return features_encoder(weights, [index], path)


def sae_site_spec(path: str | os.PathLike) -> str:
    """The site spec of the SAE folder at `path`, from its cfg: `hf_hook_name` (`model.layers.9.output` ->
    `model.layers.9`, `....input` -> `...@in`) when set, else `hook_name` (a TransformerLens hook name, an HF
    module path or a dreamy site spec). `TargetError` when the cfg names none.

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "cfg.json").write_text(json.dumps({"metadata": {"hook_name": "blocks.9.hook_resid_post"}}))
        >>> sae_site_spec(folder)
        'blocks.9.hook_resid_post'
    """
    folder = _folder_of(path)
    if folder.is_file():
        raise TargetError(f"SAE '{path}' is a file, not an SAELens folder with a {CFG_NAME} that names the site; name "
                          f"the site: 'SITE:sae={path}#i'")
    if not folder.is_dir():
        raise TargetError(f"SAE folder '{path}' does not exist; a target without a site ('sae=DIR#i') reads the site "
                          "from an SAELens folder's cfg.json")
    meta = metadata_of(_read_cfg(folder))
    hf = meta.get("hf_hook_name")
    if isinstance(hf, str) and hf:
        if hf.endswith(".output"):
            return hf[: -len(".output")]
        if hf.endswith(".input"):
            return hf[: -len(".input")] + "@in"
        return hf
    name = meta.get("hook_name")
    if not isinstance(name, str) or not name:
        raise TargetError(f"SAE '{path}': its {CFG_NAME} names no hook_name (under metadata or at the top), so the "
                          "site is unknown; name it: 'SITE:sae=DIR#i'")
    return name
