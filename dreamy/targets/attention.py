"""Attention patterns as a site: the post-softmax weights a Hugging Face attention module uses, whatever its
attention implementation.

`blocks.L.attn.hook_pattern` (a TransformerLens name, `dreamy.targets.dialects`) reads block L's attention
weights `[B, n_heads, queries, keys]`, shown to units flattened per query as `[B, queries, n_heads * keys]`, so
that a unit `head=H,key=J` gives one value per query position and the reduction picks the query (`/pos=-1`, the
language default, is the last position, as the reference EPO's attention-entry runner reads it).

How: while a probe runs, the attention module's `config` is a view whose `_attn_implementation` names a function
registered here. Hugging Face attention modules (transformers 5) call that function with the exact queries
(after rotary embeddings and q/k norms), keys (after any cache update), mask, scaling and softcap the model uses;
it runs the model's own implementation (eager or sdpa) for the output, so the forward is unchanged, and returns
`softmax(q k^T * scaling + mask)` in float32 as the weights: the eager pattern, also for sdpa models whose own
kernel never forms it. The view is removed when the probe call ends. Flash and flex attention are refused (their
masks are not 4-D tensors).

Example:
    >>> import torch
    >>> q = k = torch.eye(2)[None, None]  # one head, two positions
    >>> attention_pattern(torch.nn.Module(), q, k, None, scaling=1.0)[0, 0].tolist()
    [[1.0, 0.0], [0.2689414322376251, 0.7310585975646973]]
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dreamy.targets.errors import TargetError

IMPLEMENTATION = "dreamy_attention_pattern"
READ_IMPLEMENTATIONS = ("eager", "sdpa")
_lock = threading.Lock()
_active: dict[int, list[Any]] = {}  # id(attention module) -> [its own config, number of open captures]
_registered = False


def attention_pattern(module: nn.Module, query: Tensor, key: Tensor, attention_mask: Tensor | None, *,
                      scaling: float | None = None, softcap: float | None = None, is_causal: bool | None = None,
                      position_bias: Tensor | None = None, **_: Any) -> Tensor:
    """The post-softmax weights `[B, heads, queries, keys]` (float32) of queries `[B, heads, q, d]` and keys
    `[B, kv_heads, k, d]` (grouped-query keys shared by `heads / kv_heads` heads), as eager attention forms them;
    a boolean mask keeps True entries, a float mask is added, no mask is causal (top-left) for several queries.

    Example:
        >>> q = torch.zeros(1, 2, 3, 4); k = torch.zeros(1, 1, 3, 4)
        >>> attention_pattern(torch.nn.Module(), q, k, None)[0, 1, 2].tolist()
        [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads != kv_heads:
        key = key.repeat_interleave(heads // kv_heads, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (query.float() @ key.float().transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias.float()
    q_len, k_len = scores.shape[-2:]
    if attention_mask is not None:
        mask = attention_mask[..., :k_len]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    elif q_len > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    return scores.softmax(dim=-1)


class _ConfigView:
    """A model config that names the pattern-capturing attention function and forwards everything else."""

    _attn_implementation = IMPLEMENTATION

    def __init__(self, config: Any) -> None:
        object.__setattr__(self, "_dreamy_config", config)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_dreamy_config"), name)


def _own_config(module: nn.Module) -> Any:
    config = module.__dict__.get("config")
    return object.__getattribute__(config, "_dreamy_config") if isinstance(config, _ConfigView) else config


def _eager_default(module: nn.Module) -> Callable:
    """The eager attention function of the module's own modeling file (what `get_interface` falls back to)."""
    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        raise TargetError(f"{type(module).__name__} has no eager_attention_forward in its modeling code; its attention "
                          "pattern cannot be read")
    return found


def _pattern_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                       *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """The registered attention function: the model's own output, and the pattern as its weights."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    own = _own_config(module)._attn_implementation
    output, _ = ALL_ATTENTION_FUNCTIONS.get_interface(own, _eager_default(module))(
        module, query, key, value, attention_mask, *args, **kwargs)
    if kwargs.get("s_aux") is not None:
        raise TargetError(f"{type(module).__name__} uses attention sinks; its attention pattern is not read")
    return output, attention_pattern(module, query, key, attention_mask, **kwargs)


def _register() -> None:
    global _registered
    if not _registered:
        from transformers.modeling_utils import AttentionInterface

        AttentionInterface.register(IMPLEMENTATION, _pattern_attention)
        _registered = True


class _Capture:
    """While open, `module` computes its attention pattern as its weights (see the module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.open = True
        with _lock:
            entry = _active.setdefault(id(module), [module.__dict__.get("config"), 0])
            if entry[1] == 0:
                module.config = _ConfigView(entry[0])
            entry[1] += 1

    def remove(self) -> None:
        """Undo the capture (the last one open restores the module's own config); safe to call twice."""
        if not self.open:
            return
        self.open = False
        with _lock:
            entry = _active[id(self.module)]
            entry[1] -= 1
            if entry[1] == 0:
                self.module.config = entry[0]
                del _active[id(self.module)]


def capture_patterns(module: nn.Module) -> _Capture:
    """Make `module` (a Hugging Face attention module) return its post-softmax pattern as its second output until
    the returned handle's `remove()`; `TargetError` when its attention implementation is not eager or sdpa.

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm").model
        >>> handle = capture_patterns(lm.model.layers[0].self_attn)
        >>> _, pattern = lm.model.layers[0].self_attn(torch.randn(1, 3, 64), position_embeddings=lm.model.rotary_emb(
        ...     torch.zeros(1, 3, 64), torch.arange(3)[None]), attention_mask=None)
        >>> handle.remove(); [round(float(v), 4) for v in pattern[0, 0].sum(dim=-1)], type(lm.model.layers[0].self_attn.config).__name__
        ([1.0, 1.0, 1.0], 'LlamaConfig')
    """
    config = _own_config(module)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in READ_IMPLEMENTATIONS:
        raise TargetError(f"attention patterns are read from models run with {' or '.join(READ_IMPLEMENTATIONS)} "
                          f"attention; {type(module).__name__} runs {implementation!r} (load it with "
                          "attn_implementation='sdpa')")
    _register()
    return _Capture(module)


def flatten_pattern(pattern: Tensor) -> Tensor:
    """`[B, heads, queries, keys]` -> `[B, queries, heads * keys]` (head-major), the layout units read.

    Example:
        >>> tuple(flatten_pattern(torch.zeros(2, 4, 3, 3)).shape)
        (2, 3, 12)
    """
    return pattern.permute(0, 2, 1, 3).reshape(pattern.shape[0], pattern.shape[2], -1)
