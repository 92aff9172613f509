"""Output-side descriptions of a direction: which tokens it promotes ("Output-centric feature
descriptions", Gur-Arieh et al. 2025).

- `output_direction(loaded, spec)`: the vector a target writes and the site it writes it at: an SAE
  feature's decoder row (`W_dec[i]`); an MLP neuron's `down_proj` column (`...mlp.down_proj@in:i`), added at
  the `down_proj` output; a residual coordinate `SITE:i` as the basis vector `e_i`; a `dir=` vector as is.
- `vocab_projection(loaded, direction, k)` (VocabProj): the tokens most promoted and most suppressed
  by the direction read through the final norm and the unembedding.
- `token_change(loaded, site, direction, contexts, alpha, k)` (TokenChange): the tokens whose next-token
  logits rise most when `alpha * direction` is added at `site` (every position but the start), averaged
  over the positions of the contexts; and those that fall most.

Example:
    >>> from dreamy.models import load
    >>> loaded = load("tiny:lm")
    >>> site, vector = output_direction(loaded, "model.layers.1.mlp.down_proj@in:5")
    >>> site, tuple(vector.shape)
    ('model.layers.1.mlp.down_proj', (64,))
    >>> len(vocab_projection(loaded, vector, k=3).promoted)
    3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamy.core.frozen import frozen
from dreamy.models import LoadedModel
from dreamy.sae.activations import start_token, with_start
from dreamy.sae.splice import after_start, edit_site
from dreamy.targets import Direction, Neuron, SAEFeature, TargetError, load_unit, resolve_module
from dreamy.targets.dialects import complete_sites, reading
from dreamy.targets.saelens import is_sae_folder, read_sae_folder

FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm")


@dataclass(frozen=True)
class TokenScore:
    """One token with its score (a logit or a logit change)."""

    token: str
    id: int
    value: float


@dataclass(frozen=True)
class OutputTokens:
    """The `k` most promoted and most suppressed tokens, best first; `method` is `vocab_proj` or `token_change`."""

    method: str
    promoted: list[TokenScore]
    suppressed: list[TokenScore]

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict: method and the tokens as `[text, value]` pairs (the form records and cards use).

        Example:
            >>> OutputTokens("vocab_proj", [TokenScore("a", 1, 2.0)], []).to_record()["promoted"]
            [['a', 2.0]]
        """
        return {"method": self.method, "promoted": [[t.token, t.value] for t in self.promoted],
                "suppressed": [[t.token, t.value] for t in self.suppressed]}


def final_norm(model: nn.Module) -> nn.Module:
    """The LM's final norm before the unembedding (`model.norm`, `final_layernorm`, `ln_f`, ...), else identity.

    Example:
        >>> from dreamy.models import load
        >>> type(final_norm(load("tiny:lm").model)).__name__
        'LlamaRMSNorm'
    """
    base = getattr(model, "base_model", model)
    for owner in (base, getattr(base, "model", None), model):
        for name in FINAL_NORM_NAMES:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
    return nn.Identity()


def _top(values: Tensor, k: int, tokenizer: Any) -> list[TokenScore]:
    picked = values.topk(min(k, values.numel()))
    return [TokenScore(tokenizer.decode([i]), i, v) for v, i in zip(picked.values.tolist(), picked.indices.tolist())]


def _scores(method: str, values: Tensor, k: int, tokenizer: Any) -> OutputTokens:
    values = values.float().cpu()
    return OutputTokens(method, _top(values, k, tokenizer), [TokenScore(t.token, t.id, -t.value) for t in _top(-values, k, tokenizer)])


@torch.no_grad()
def vocab_projection(loaded: LoadedModel, direction: Tensor, k: int = 10) -> OutputTokens:
    """VocabProj: `unembed(final_norm(direction))`, its `k` highest and lowest tokens.

    Example:
        >>> from dreamy.models import load
        >>> loaded = load("tiny:lm")
        >>> row = loaded.model.lm_head.weight[7] / loaded.model.model.norm.weight  # a direction that reads as token 7
        >>> vocab_projection(loaded, row, k=1).promoted[0].id
        7
    """
    unembed = loaded.model.get_output_embeddings()
    if unembed is None:
        raise ValueError(f"model '{loaded.name}' has no output embeddings to project onto the vocabulary")
    weight = unembed.weight
    vector = direction.to(device=weight.device, dtype=weight.dtype).reshape(1, 1, -1)
    if vector.shape[-1] != weight.shape[1]:
        raise ValueError(f"the direction has {vector.shape[-1]} values but the unembedding reads {weight.shape[1]}; "
                         "VocabProj needs a direction in the residual stream")
    logits = unembed(final_norm(loaded.model)(vector)).reshape(-1)
    return _scores("vocab_proj", logits, k, loaded.tokenizer)


def _context_ids(loaded: LoadedModel, contexts: Tensor | Sequence[str]) -> list[Tensor]:
    start = start_token(loaded.tokenizer)
    if isinstance(contexts, Tensor):
        return [with_start(contexts.long(), start)]
    rows = []
    for text in contexts:
        ids = loaded.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if ids:
            rows.append(with_start(torch.tensor([ids]), start))
    if not rows:
        raise ValueError("token_change needs at least one non-empty context")
    return rows


@torch.no_grad()
def token_change(loaded: LoadedModel, site: str, direction: Tensor, contexts: Tensor | Sequence[str],
                 alpha: float = 8.0, k: int = 10) -> OutputTokens:
    """TokenChange: the mean next-token logit change when `alpha * direction` is added at `site` (the model runs
    in eval mode, `core.frozen`).

    `contexts` are token windows `[N, T]` (without start token) or texts. The change is averaged over every
    position after the start token.

    Example:
        >>> from dreamy.models import load
        >>> loaded = load("tiny:lm")
        >>> site, vector = output_direction(loaded, "model.layers.1.mlp.down_proj@in:5")
        >>> len(token_change(loaded, site, vector, ["The cat sat on the mat."], alpha=4.0, k=2).suppressed)
        2
    """
    model = loaded.model
    total, count = None, 0
    vector = direction.float().reshape(-1)
    with frozen(model):  # eval mode: no dropout in either forward; the model's mode is restored
        for ids in _context_ids(loaded, contexts):
            ids = ids.to(loaded.device)
            clean = model(input_ids=ids).logits[:, 1:].float()
            with edit_site(model, site, after_start(lambda a: a + alpha * vector.to(a))):
                steered = model(input_ids=ids).logits[:, 1:].float()
            change = (steered - clean).flatten(0, 1)
            total = change.sum(dim=0) if total is None else total + change.sum(dim=0)
            count += change.shape[0]
    if not count:
        raise ValueError("token_change needs contexts of at least one token")
    return _scores("token_change", total / count, k, loaded.tokenizer)


def _sae_decoder_row(path: str, index: int) -> Tensor:
    if is_sae_folder(path):
        weights = read_sae_folder(path)
        if weights.transcoder:
            raise TargetError(f"'{path}' is a transcoder: its decoder writes {weights.metadata.get('hook_name_out') or 'another site'}, "
                              "not the site it reads, so it has no output direction there")
        if not 0 <= index < weights.d_sae:
            raise TargetError(f"SAE feature {index} out of range for '{path}' with {weights.d_sae} features")
        return weights.W_dec[index]
    from dreamy.targets.units import _read_tensors  # the single-file form of `sae=`

    data = _read_tensors(path)
    if isinstance(data, dict):
        for name in ("W_dec", "decoder.weight"):
            if name in data:
                w_dec = data[name].float()
                # W_dec is [d_sae, d_in]; nn.Linear's decoder.weight is [d_in, d_sae]
                return w_dec[index] if name == "W_dec" else w_dec[:, index]
    raise TargetError(f"SAE file '{path}' has no W_dec (or decoder.weight); its output direction is unknown")


def output_direction(loaded: LoadedModel, spec: str) -> tuple[str, Tensor]:
    """The site where target `spec` writes and the vector it writes; see the module docstring.

    Example:
        >>> from dreamy.models import load
        >>> site, vector = output_direction(load("tiny:lm"), "model.layers.0:3")
        >>> site, vector.nonzero().flatten().tolist()
        ('model.layers.0', [3])
    """
    target = complete_sites(spec)  # `sae=DIR#i`: the site its cfg names
    if len(target.terms) != 1 or target.terms[0].site.is_logits:
        raise TargetError(f"'{spec}': an output direction needs one term at a hidden site")
    term = target.terms[0]
    site, unit = term.site, term.unit
    if isinstance(unit, SAEFeature):
        return str(site), _sae_decoder_row(unit.path, unit.index).float()
    if isinstance(unit, Direction):
        return str(site), load_unit(unit).vector.float().reshape(-1)
    if not isinstance(unit, Neuron):
        raise TargetError(f"'{spec}' has no unit; give a neuron (SITE:i), a dir= or an sae= feature")
    read = reading(loaded.model, site)  # a TransformerLens name: the module site it reads
    site = read.site if read.transform is None and read.prepare is None else site
    module = resolve_module(loaded.model, site.path)
    if site.input and isinstance(module, nn.Linear):
        if not 0 <= unit.index < module.in_features:
            raise TargetError(f"unit {unit.index} out of range for '{site}' with {module.in_features} inputs")
        return site.path, module.weight[:, unit.index].detach().float().clone()
    if site.input:
        raise TargetError(f"'{spec}': the input of a {type(module).__name__} has no known output direction; "
                          "use a Linear's input (e.g. ...mlp.down_proj@in:i)")
    width = loaded.model.get_output_embeddings().weight.shape[1]
    if not 0 <= unit.index < width:
        raise TargetError(f"unit {unit.index} out of range for a residual site with {width} features")
    basis = torch.zeros(width)
    basis[unit.index] = 1.0
    return str(site), basis
