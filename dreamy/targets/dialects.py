"""Hook-name dialects: TransformerLens hook names read on Hugging Face models, and where an SAE's site comes from.

SAEs trained with SAELens name their site in TransformerLens terms. On a Hugging Face model of a known family
(Llama-style: Llama, SmolLM2, Mistral, Qwen; Gemma-3; GPT-2; GPT-NeoX / Pythia) these names are sites too:

| TransformerLens name | what it reads (Llama-style / Gemma-3 / GPT-2 / GPT-NeoX) |
|---|---|
| `blocks.L.hook_resid_pre` | the input of block L |
| `blocks.L.hook_resid_mid` | the residual after attention: the input of the MLP's norm (`post_attention_layernorm` / `pre_feedforward_layernorm` / `ln_2` / `post_attention_layernorm`; absent when GPT-NeoX runs attention and MLP in parallel) |
| `blocks.L.hook_resid_post` | the output of block L |
| `blocks.L.hook_attn_out` | what attention adds to the residual (Gemma-3: after `post_attention_layernorm`) |
| `blocks.L.hook_mlp_out` | what the MLP adds to the residual (Gemma-3: after `post_feedforward_layernorm`) |
| `blocks.L.mlp.hook_pre` / `mlp.hook_post` | the MLP's pre-activation (gated MLPs: the gate projection) / the input of its output projection |
| `blocks.L.attn.hook_z` | the per-head attention outputs, the input of the output projection, `[..., n_heads * d_head]` head-major (units `head=H,I`, `head=H,norm`, `head=H,dir=FILE`) |
| `blocks.L.attn.hook_pattern` | the post-softmax attention weights, whatever the attention implementation (unit `head=H,key=J`; see `dreamy.targets.attention`) |
| `blocks.L.ln1.hook_normalized`, `ln2.hook_normalized`, `ln_final.hook_normalized` | the norm's input normalized, before its gain and bias: `x / rms(x)`, or `(x - mean) / std` for LayerNorm |
| `hook_embed`, `hook_pos_embed` | the token embeddings (Gemma: already scaled by sqrt(d_model)) / GPT-2's position embeddings |

A TransformerLens model differs from the Hugging Face one only when it was loaded with weight processing
(`HookedTransformer.from_pretrained` does it by default; SAELens 6 loads models without it unless the SAE's cfg
says otherwise in `model_from_pretrained_kwargs`). An SAE whose cfg says `center_writing_weights: true` saw, on
a LayerNorm model (GPT-2, GPT-NeoX), every residual-stream vector with its mean over the hidden dimension
removed; its latents here read the site centred the same way (RMSNorm models are not changed by that option).
`fold_ln` changes none of the sites above; `fold_value_biases` shifts `hook_z` by the value bias, which is not
undone here (a warning says so once).

`reading(model, site)` says how any site is read (a TransformerLens name, or a module path as it is);
`complete_sites(target)` fills in the site of `sae=DIR#i` terms from the SAE's cfg.

Example:
    >>> from dreamy.models import load
    >>> lm = load("tiny:lm")
    >>> r = reading(lm.model, Site("blocks.1.hook_resid_mid"))
    >>> str(r.site), r.info.basis
    ('model.layers.1.post_attention_layernorm@in', 'residual')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dreamy.targets.attention import capture_patterns, flatten_pattern
from dreamy.targets.errors import TargetError
from dreamy.targets.saelens import SiteInfo, sae_site_spec
from dreamy.targets.spec import Site, Target, parse

_TL_NAME = re.compile(r"^(?:blocks\.\d+\.(?:hook_\w+|attn\.hook_\w+|mlp\.hook_\w+|ln\d\.hook_\w+)|ln_final\.hook_\w+|hook_embed|hook_pos_embed)$")
_TL_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
NAMES_HINT = "run `dream sites MODEL --names transformerlens` to list them"
BLOCK_HOOKS = ("hook_resid_pre", "ln1.hook_normalized", "attn.hook_z", "attn.hook_pattern", "hook_attn_out",
               "hook_resid_mid", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
RESIDUAL = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_embed",
            "hook_pos_embed")


def is_transformerlens_name(path: str) -> bool:
    """True when `path` is spelled as a TransformerLens hook name (`blocks.L.hook_resid_post`, `ln_final.hook_normalized`).

    Example:
        >>> is_transformerlens_name("blocks.3.attn.hook_z"), is_transformerlens_name("model.layers.9")
        (True, False)
    """
    return bool(_TL_NAME.match(path))


@dataclass(frozen=True)
class Family:
    """Where a model family keeps what TransformerLens names: module paths (block hooks relative to a block,
    `""` being the block itself) and whether each reads the module's input."""

    name: str
    layers: str
    embed: str
    final_norm: str
    norm: str  # "rms" | "layer"
    hooks: dict[str, tuple[str, bool]]
    attention: str
    pos_embed: str | None = None


_LLAMA_HOOKS = {"hook_resid_pre": ("", True), "hook_resid_post": ("", False), "ln1.hook_normalized": ("input_layernorm", True),
                "attn.hook_z": ("self_attn.o_proj", True), "hook_attn_out": ("self_attn", False),
                "hook_resid_mid": ("post_attention_layernorm", True), "ln2.hook_normalized": ("post_attention_layernorm", True),
                "mlp.hook_pre": ("mlp.gate_proj", False), "mlp.hook_post": ("mlp.down_proj", True), "hook_mlp_out": ("mlp", False)}
_GEMMA3_HOOKS = {**_LLAMA_HOOKS, "hook_attn_out": ("post_attention_layernorm", False),
                 "hook_resid_mid": ("pre_feedforward_layernorm", True), "ln2.hook_normalized": ("pre_feedforward_layernorm", True),
                 "hook_mlp_out": ("post_feedforward_layernorm", False)}
_GPT2_HOOKS = {"hook_resid_pre": ("", True), "hook_resid_post": ("", False), "ln1.hook_normalized": ("ln_1", True),
               "attn.hook_z": ("attn.c_proj", True), "hook_attn_out": ("attn", False), "hook_resid_mid": ("ln_2", True),
               "ln2.hook_normalized": ("ln_2", True), "mlp.hook_pre": ("mlp.c_fc", False), "mlp.hook_post": ("mlp.c_proj", True),
               "hook_mlp_out": ("mlp", False)}
_NEOX_HOOKS = {"hook_resid_pre": ("", True), "hook_resid_post": ("", False), "ln1.hook_normalized": ("input_layernorm", True),
               "attn.hook_z": ("attention.dense", True), "hook_attn_out": ("attention", False),
               "hook_resid_mid": ("post_attention_layernorm", True), "ln2.hook_normalized": ("post_attention_layernorm", True),
               "mlp.hook_pre": ("mlp.dense_h_to_4h", False), "mlp.hook_post": ("mlp.dense_4h_to_h", True), "hook_mlp_out": ("mlp", False)}


def _families() -> list[Family]:
    found = []
    for prefix in ("model.", "", "model.language_model."):
        found.append(Family("gemma3", f"{prefix}layers", f"{prefix}embed_tokens", f"{prefix}norm", "rms", _GEMMA3_HOOKS, "self_attn"))
        found.append(Family("llama", f"{prefix}layers", f"{prefix}embed_tokens", f"{prefix}norm", "rms", _LLAMA_HOOKS, "self_attn"))
    for prefix in ("transformer.", ""):
        found.append(Family("gpt2", f"{prefix}h", f"{prefix}wte", f"{prefix}ln_f", "layer", _GPT2_HOOKS, "attn", f"{prefix}wpe"))
    for prefix in ("gpt_neox.", ""):
        found.append(Family("gpt_neox", f"{prefix}layers", f"{prefix}embed_in", f"{prefix}final_layer_norm", "layer",
                            _NEOX_HOOKS, "attention"))
    return found


FAMILIES = _families()


def family_of(model: nn.Module) -> Family | None:
    """The family whose module names `model` has (checked on its first block), or None.

    Example:
        >>> from dreamy.models import load
        >>> family_of(load("tiny:lm").model).name, family_of(torch.nn.Linear(2, 2))
        ('llama', None)
    """
    modules = dict(model.named_modules())
    for family in FAMILIES:
        blocks = modules.get(family.layers)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0 or family.embed not in modules or family.final_norm not in modules:
            continue
        first = dict(blocks[0].named_modules())
        if all(path == "" or path in first for path, _ in family.hooks.values()):
            return family
    return None


def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return config


def _heads(model: nn.Module, family: Family) -> int | None:
    config = _config(model)
    for name in ("num_attention_heads", "n_head"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _parallel(model: nn.Module, family: Family) -> bool:
    return family.name == "gpt_neox" and bool(getattr(_config(model), "use_parallel_residual", False))


def _eps(norm: nn.Module) -> float:
    for name in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(norm, name, None)
        if isinstance(value, float):
            return value
    raise TargetError(f"cannot read the epsilon of the norm {type(norm).__name__}; read its output instead")


def normalized(kind: str, eps: float) -> Callable[[Tensor], Tensor]:
    """TransformerLens's `hook_normalized` of a norm's input: `x / sqrt(mean(x^2) + eps)` (`"rms"`) or the same of
    `x - mean(x)` (`"layer"`), computed in float32, before the norm's gain and bias.

    Example:
        >>> normalized("layer", 0.0)(torch.tensor([[1.0, 3.0]])).tolist()
        [[-1.0, 1.0]]
    """
    def transform(x: Tensor) -> Tensor:
        y = x.float()
        if kind == "layer":
            y = y - y.mean(dim=-1, keepdim=True)
        return (y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    return transform


@dataclass(frozen=True)
class Reading:
    """How one site is read on a model: the module site whose tensor is taken (`site`: a module path, `@in`,
    `[k]`), a `transform` applied to that tensor, what the model says about it (`info`), and a `prepare()` to
    run before the forward, which returns a handle whose `remove()` undoes it."""

    site: Site
    transform: Callable[[Tensor], Tensor] | None = None
    info: SiteInfo = field(default_factory=SiteInfo)
    prepare: Callable[[], Any] | None = None
    name: str | None = None  # the TransformerLens name, when the site was given as one

    def finish(self, tensor: Tensor) -> Tensor:
        """The site's tensor from the module's: `transform(tensor)`, or `tensor` as it is.

        Example:
            >>> Reading(Site("x"), transform=lambda t: 2 * t).finish(torch.ones(1)).tolist()
            [2.0]
        """
        return tensor if self.transform is None else self.transform(tensor)


def _block_reading(model: nn.Module, family: Family, layer: int, hook: str, name: str) -> Reading:
    modules = dict(model.named_modules())
    n_layers = len(modules[family.layers])
    if not 0 <= layer < n_layers:
        raise TargetError(f"TransformerLens site '{name}': block {layer} out of range, the model has {n_layers} blocks "
                          f"(0..{n_layers - 1})")
    prefix = f"{family.layers}.{layer}"
    if hook == "hook_resid_mid" and _parallel(model, family):
        raise TargetError(f"TransformerLens site '{name}': this GPT-NeoX model runs attention and MLP in parallel "
                          "(use_parallel_residual), so there is no residual between them; read hook_resid_pre or hook_resid_post")
    if hook == "attn.hook_pattern":
        attention = f"{prefix}.{family.attention}"
        module = modules[attention]
        if not hasattr(module, "config"):
            raise TargetError(f"TransformerLens site '{name}': the attention module at '{attention}' has no config; its "
                              "pattern cannot be read")
        return Reading(Site(attention, index=1), flatten_pattern, SiteInfo(heads=_heads(model, family), basis="pattern"),
                       prepare=lambda: capture_patterns(module), name=name)
    if hook not in family.hooks:
        known = ", ".join(f"blocks.{layer}.{h}" for h in BLOCK_HOOKS)
        raise TargetError(f"unknown TransformerLens site '{name}' on a {family.name}-style model; block hooks are {known} "
                          f"({NAMES_HINT})")
    path, is_input = family.hooks[hook]
    full = f"{prefix}.{path}" if path else prefix
    transform = normalized(family.norm, _eps(modules[full])) if hook.endswith("hook_normalized") else None
    basis = "residual" if hook in RESIDUAL else ("z" if hook == "attn.hook_z" else None)
    heads = _heads(model, family) if hook == "attn.hook_z" else None
    return Reading(Site(full, input=is_input), transform, SiteInfo(heads=heads, norm=family.norm, basis=basis), name=name)


def _tl_reading(model: nn.Module, family: Family, site: Site) -> Reading:
    name = site.path
    if site.input or site.index is not None:
        raise TargetError(f"TransformerLens site '{site}': a hook name takes no '@in' or '[k]'; write '{name}'")
    block = _TL_BLOCK.match(name)
    if block:
        return _block_reading(model, family, int(block.group(1)), block.group(2), name)
    modules = dict(model.named_modules())
    if name == "ln_final.hook_normalized":
        return Reading(Site(family.final_norm, input=True), normalized(family.norm, _eps(modules[family.final_norm])),
                       SiteInfo(norm=family.norm), name=name)
    if name == "hook_embed":
        return Reading(Site(family.embed), None, SiteInfo(norm=family.norm, basis="residual"), name=name)
    if name == "hook_pos_embed" and family.pos_embed:
        return Reading(Site(family.pos_embed), None, SiteInfo(norm=family.norm, basis="residual"), name=name)
    raise TargetError(f"unknown TransformerLens site '{name}' on a {family.name}-style model ({NAMES_HINT})")


def _native_info(model: nn.Module, family: Family | None, site: Site) -> SiteInfo:
    """What a module site is in TransformerLens terms (its basis, heads), when it is one of the family's."""
    if family is None or site.index is not None:
        return SiteInfo()
    match = re.match(rf"^{re.escape(family.layers)}\.(\d+)(?:\.(.+))?$", site.path)
    if match is None:
        if site.path == family.embed and not site.input:
            return SiteInfo(norm=family.norm, basis="residual")
        return SiteInfo(norm=family.norm)
    relative = match.group(2) or ""
    for hook, (path, is_input) in family.hooks.items():
        if path == relative and is_input == site.input and not hook.endswith("hook_normalized"):
            if hook == "hook_resid_mid" and _parallel(model, family):
                continue
            basis = "residual" if hook in RESIDUAL else ("z" if hook == "attn.hook_z" else None)
            return SiteInfo(heads=_heads(model, family) if basis == "z" else None, norm=family.norm, basis=basis)
    return SiteInfo(norm=family.norm)


def reading(model: nn.Module, site: Site) -> Reading:
    """How `site` is read on `model`: a TransformerLens name on a known family (see the module docstring), else
    the module site as it is (`TargetError` for a TransformerLens name the model cannot give).

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm").model
        >>> str(reading(lm, Site("blocks.0.attn.hook_z")).site), reading(lm, Site("blocks.0.attn.hook_z")).info.heads
        ('model.layers.0.self_attn.o_proj@in', 4)
    """
    if site.is_logits:
        return Reading(site)
    family = family_of(model)
    if is_transformerlens_name(site.path) and site.path not in dict(model.named_modules()):
        if family is None:
            raise TargetError(f"site '{site}' is a TransformerLens hook name, but {type(model).__name__} is not a model "
                              "whose TransformerLens names are known (Llama-, Gemma-3-, GPT-2- and GPT-NeoX-style "
                              "Hugging Face models); name the module instead (run `dream sites MODEL`)")
        return _tl_reading(model, family, site)
    return Reading(site, info=_native_info(model, family, site))


def transformerlens_names(model: nn.Module) -> list[str]:
    """Every TransformerLens hook name `model` can give, in forward order (empty for an unknown family).

    Example:
        >>> from dreamy.models import load
        >>> names = transformerlens_names(load("tiny:lm").model)
        >>> names[:3], names[-1]
        (['hook_embed', 'blocks.0.hook_resid_pre', 'blocks.0.ln1.hook_normalized'], 'ln_final.hook_normalized')
    """
    family = family_of(model)
    if family is None:
        return []
    names = ["hook_embed"] + (["hook_pos_embed"] if family.pos_embed else [])
    n_layers = len(dict(model.named_modules())[family.layers])
    for layer in range(n_layers):
        for hook in BLOCK_HOOKS:
            if hook == "hook_resid_mid" and _parallel(model, family):
                continue
            names.append(f"blocks.{layer}.{hook}")
    return names + ["ln_final.hook_normalized"]


def complete_sites(target: "str | Target") -> Target:
    """`target` with the site of every `sae=DIR#i` term that names none filled in from the SAE's cfg
    (`hf_hook_name`, else `hook_name`; see `dreamy.targets.saelens.sae_site_spec`).

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "cfg.json").write_text(json.dumps({"metadata": {"hook_name": "blocks.9.hook_resid_post"}}))
        >>> [str(s) for s in complete_sites(f"sae={folder}#3").sites]
        ['blocks.9.hook_resid_post']
    """
    target = parse(target)
    if all(term.site.path for term in target.terms):
        return target
    terms = []
    for term in target.terms:
        if not term.site.path:
            spec = sae_site_spec(term.unit.path)
            try:
                site = parse(spec).terms[0].site
            except TargetError as error:
                raise TargetError(f"SAE '{term.unit.path}' names its site {spec!r}, which is not a site spec; name the site: "
                                  f"'SITE:sae=DIR#i'") from error
            term = replace(term, site=site)
        terms.append(term)
    return Target(tuple(terms))


def list_sites_by_name(model: nn.Module, *args: Any, **kwargs: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Run `model(*args, **kwargs)` once and list every TransformerLens name of the model with the shape of what
    it reads (`attn.hook_z` flat, `[B, T, n_heads * d_head]`; `attn.hook_pattern` as `[B, n_heads, T, T]`).
    Hooks are removed even if the forward raises.

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm")
        >>> dict(list_sites_by_name(lm.model, input_ids=torch.tensor([[0, 5, 6]])))["blocks.1.hook_resid_post"]
        (1, 3, 64)
    """
    names = transformerlens_names(model)
    readings = [reading(model, Site(name)) for name in names]
    modules = dict(model.named_modules())
    raw: dict[Site, Any] = {}
    handles: list[Any] = []
    try:
        for r in readings:
            module = modules[r.site.path]
            if r.prepare is not None:
                handles.append(r.prepare())
            if r.site.input:
                def pre_hook(module, hook_args, hook_kwargs, site=r.site):
                    raw.setdefault(site, hook_args if hook_args else tuple(hook_kwargs.values()))
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def hook(module, hook_args, output, site=r.site):
                    raw.setdefault(site, output)
                handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    listed = []
    for name, r in zip(names, readings):
        value = raw.get(r.site)
        tensor = _first_tensor(value, r.site.index)
        shown = tensor if tensor is None or r.info.basis == "pattern" else r.finish(tensor)
        listed.append((name, () if shown is None else tuple(shown.shape)))
    return listed


def _first_tensor(value: Any, index: int | None) -> Tensor | None:
    if index is not None and isinstance(value, (tuple, list)) and index < len(value):
        value = value[index]
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, Tensor) else None
