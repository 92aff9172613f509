"""Output-side descriptions of prompt records: what a target's direction does to the next-token logits.

A target has an output direction (`sae.describe.output_direction`) when it is one term that writes a
vector into the residual stream: an SAE feature (`SITE:sae=DIR#i`, its decoder row), the input unit of
a Linear layer that writes the residual stream (`...mlp.down_proj@in:i`, `...self_attn.o_proj@in:i`: its weight
column; not q/k/v, up or gate projections), or a unit or `dir=` direction at a
residual site (a block's output `...layers.N`, an MLP's output, the token embeddings). Others
(`logits:5`, attention sites, units without a Linear behind them) get no description.

`describe_record(loaded, record)` adds the record's `"description"`:
`{"site": ..., "vocab_proj": {"promoted": [[token, value], ...], "suppressed": [...]},
"token_change": {"promoted": [...], "suppressed": [...], "contexts": "maxima"|"frontier", "n_contexts": n,
"alpha": a}}`, `k` tokens each side. TokenChange averages over the record's dataset maxima windows when it
has them, else over its dreamed frontier prompts (at most `max_contexts`). A failure is recorded as
`"description_error"` and never raised: a description must not fail a dream.

Example:
    >>> from dreamy.models import load
    >>> loaded = load("tiny:lm")
    >>> record = {"target": "model.layers.1.mlp.down_proj@in:5", "frontier": [{"token_ids": [5, 6, 7], "activation": 1.0}]}
    >>> described = describe_record(loaded, record, k=2)
    >>> len(described["description"]["vocab_proj"]["promoted"]), described["description"]["token_change"]["contexts"]
    (2, 'frontier')
    >>> "description" in describe_record(loaded, {"target": "logits:5", "frontier": []})
    False
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from dreamy.models import LoadedModel

K_TOKENS = 10
MAX_CONTEXTS = 16
ALPHA = 8.0
_WRITES_RESIDUAL = re.compile(r"(?:^|\.)(?:down_proj|o_proj|out_proj|c_proj|fc2|dense_4h_to_h|wo)$")  # not q/k/v, up, gate
_RESIDUAL = re.compile(r"(?:^|\.)(?:(?:layers|h|blocks|layer)\.\d+(?:\.mlp(?:\.down_proj)?)?|embed_tokens|wte)$")


def has_output_direction(loaded: LoadedModel, spec: str) -> bool:
    """Whether target `spec` writes a known direction into the residual stream (see the module docstring).

    Example:
        >>> from dreamy.models import load
        >>> loaded = load("tiny:lm")
        >>> [has_output_direction(loaded, s) for s in ("model.layers.0.mlp.down_proj@in:3", "model.layers.1:7",
        ...                                             "logits:5", "model.layers.0.self_attn.q_proj@in:2")]
        [True, True, False, False]
    """
    from dreamy.targets import Direction, Neuron, SAEFeature, parse, resolve_module

    try:
        target = parse(spec)
    except ValueError:
        return False
    if len(target.terms) != 1 or target.terms[0].site.is_logits:
        return False
    site, unit = target.terms[0].site, target.terms[0].unit
    if isinstance(unit, SAEFeature):
        return True
    if site.input:  # a Linear that writes into the residual stream: its input units' columns are directions there
        if not isinstance(unit, Neuron) or not _WRITES_RESIDUAL.search(site.path):
            return False
        try:
            return isinstance(resolve_module(loaded.model, site.path), nn.Linear)
        except Exception:
            return False
    return isinstance(unit, (Neuron, Direction)) and bool(_RESIDUAL.search(site.path))


def _contexts(record: dict[str, Any], max_contexts: int) -> tuple[str, Any]:
    """('maxima', window texts) when the record has dataset maxima windows, else ('frontier', span ids)."""
    windows = [m.get("text") or "".join(m.get("tokens") or []) for m in record.get("maxima") or []]
    windows = [w for w in windows if w]
    if windows:
        return "maxima", windows[:max_contexts]
    points = sorted(record.get("frontier") or [], key=lambda p: -p.get("activation", 0.0))[:max_contexts]
    spans = [list(p["token_ids"]) for p in points if p.get("token_ids")]
    if spans and all(len(s) == len(spans[0]) for s in spans):
        return "frontier", torch.tensor(spans)
    texts = [p["text"] for p in points if p.get("text")]
    if not texts:
        raise ValueError("the record has neither dataset maxima windows nor frontier prompts to use as contexts")
    return "frontier", texts


def describe(loaded: LoadedModel, record: dict[str, Any], k: int = K_TOKENS, max_contexts: int = MAX_CONTEXTS,
             alpha: float = ALPHA) -> dict[str, Any]:
    """The `"description"` of a record whose target has an output direction (raises on failure).

    Example:
        >>> from dreamy.models import load
        >>> d = describe(load("tiny:lm"), {"target": "model.layers.1:3", "maxima": [{"text": "The cat sat."}]}, k=1)
        >>> d["site"], d["token_change"]["contexts"], d["token_change"]["n_contexts"]
        ('model.layers.1', 'maxima', 1)
    """
    from dreamy.sae.describe import output_direction, token_change, vocab_projection

    site, direction = output_direction(loaded, record["target"])
    source, contexts = _contexts(record, max_contexts)
    vocab = vocab_projection(loaded, direction, k=k).to_record()
    change = token_change(loaded, site, direction, contexts, alpha=alpha, k=k).to_record()
    return {"site": site,
            "vocab_proj": {"promoted": vocab["promoted"], "suppressed": vocab["suppressed"]},
            "token_change": {"promoted": change["promoted"], "suppressed": change["suppressed"],
                             "contexts": source, "n_contexts": len(contexts), "alpha": alpha}}


def describe_record(loaded: LoadedModel, record: dict[str, Any], k: int = K_TOKENS,
                    max_contexts: int = MAX_CONTEXTS) -> dict[str, Any]:
    """A copy of `record` with its `"description"` (or `"description_error"`); unchanged when its target
    has no output direction or the record is an error record.

    Example:
        >>> from dreamy.models import load
        >>> describe_record(load("tiny:lm"), {"target": "model.layers.1:3", "frontier": []})["description_error"][:10]
        'ValueError'
    """
    if "error" in record or not has_output_direction(loaded, str(record.get("target", ""))):
        return record
    out = {key: value for key, value in record.items() if key not in ("description", "description_error")}
    try:
        out["description"] = describe(loaded, record, k=k, max_contexts=max_contexts)
    except Exception as error:
        out["description_error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return out
