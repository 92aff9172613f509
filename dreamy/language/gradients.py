"""Token gradients for GCG and EPO: the gradient of `activation - w * cross-entropy` (w: the fluency weight)
with respect to the
span's one-hot token rows, and the top-k replacement tokens it ranks.

With the span relaxed to rows `x[i, v]` (one-hot at a real prompt), EPO's objective is
`activation(x) - w * CE(x)` with `CE(x) = -mean_i sum_v x[i, v] * log p(v | tokens < i)`: the relaxed x
is both the input (through the embeddings) and the label of the cross-entropy, so the gradient holds
`+w * log p(v | prefix) / L` at every position, pointing slots of high fluency weight at tokens the model
expects (Thompson et al., 2024). At one-hot points every value equals the discrete prompt's.

The span's embeddings are the model's own (`embedding(ids)`, so a scale applied inside the embedding
module, as Gemma-3's `embed_scale`, is kept) plus a zero-valued straight-through term
`((x - x.detach()) @ weight) * scale` that carries the gradient.

Example:
    >>> import torch
    >>> from dreamy.models import load
    >>> from dreamy.targets import Probe
    >>> from dreamy.language.layout import make_layout
    >>> lm = load("tiny:lm")
    >>> probe = Probe(lm.model, ["model.layers.1.mlp.down_proj:3"], sequence_reduce="pos=-1")
    >>> grad, act, xent = token_gradients(lm.model, probe, make_layout(lm.tokenizer, 3), torch.tensor([[5, 6, 7]]),
    ...                                   torch.tensor([1.0]))
    >>> grad.shape[:2], act.shape, xent.shape
    (torch.Size([1, 3]), torch.Size([1]), torch.Size([1]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dreamy.language.fluency import relaxed_span_xentropy
from dreamy.language.layout import PromptLayout
from dreamy.language.states import ParentStates
from dreamy.core.memory import run_chunked
from dreamy.targets import Probe

GRADIENT_CHUNK = 32  # rows per gradient pass: each holds a [L, vocab] one-hot and its gradient


def embedding_scale(embedding: nn.Module) -> Any:
    """The factor an embedding module multiplies its rows by (Gemma-3's `embed_scale`; 1.0 for a plain
    `nn.Embedding`).

    Example:
        >>> embedding_scale(torch.nn.Embedding(4, 2))
        1.0
    """
    scale = getattr(embedding, "embed_scale", None)
    return 1.0 if scale is None else scale


def check_linear_embedding(embedding: nn.Module, ids: Tensor) -> None:
    """Raise a ValueError unless `embedding(ids)` is `weight[ids] * embedding_scale(embedding)`, the form
    the one-hot gradient assumes (checked once per search, on a few ids).

    Example:
        >>> check_linear_embedding(torch.nn.Embedding(4, 2), torch.tensor([0, 3]))
    """
    with torch.no_grad():
        got = embedding(ids[None])[0].float()
        want = (embedding.weight[ids] * embedding_scale(embedding)).float()
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-5 * float(want.abs().max()) + 1e-6):
        raise ValueError(f"the input embedding {type(embedding).__name__} is not weight rows times a scale "
                         f"(max difference {float((got - want).abs().max()):.3g}); token gradients need a linear "
                         "embedding: expose its factor as `embed_scale`")


class _OneHotLift(torch.autograd.Function):
    """`((x - x.detach()) @ weight) * scale` without its forward matmul: the value is zero, the gradient with
    respect to `x [N, L, V]` is `grad @ weight.T * scale` (a `[N*L, V] x [V, D]` product saved per pass)."""

    @staticmethod
    def forward(ctx: Any, one_hot: Tensor, weight: Tensor, scale: Any) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.scale = scale
        return one_hot.new_zeros(*one_hot.shape[:-1], weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        # one [N*L, D] x [D, V] product: `grad` is a slice of the embeddings' gradient (not contiguous), and a
        # 3-D non-contiguous `grad @ weight.T` runs as a bmm over an expanded weight (2.6x slower on CPU at 32 rows)
        rows = grad.to(weight.dtype).contiguous()
        return (rows.flatten(0, -2) @ weight.T).view(*rows.shape[:-1], weight.shape[0]) * ctx.scale, None, None


def span_embeddings(embedding: nn.Module, ids: Tensor, one_hot: Tensor, span: tuple[int, int]) -> Tensor:
    """Embeddings `[N, T, D]` of `ids [N, T]` with the model's own semantics, whose span rows carry the gradient
    with respect to `one_hot [N, L, V]` (zero-valued straight-through term; values equal `embedding(ids)`)."""
    start, end = span
    embeds = embedding(ids).detach()
    delta = _OneHotLift.apply(one_hot, embedding.weight, embedding_scale(embedding))
    return torch.cat([embeds[:, :start], embeds[:, start:end] + delta.to(embeds.dtype), embeds[:, end:]], dim=1)


def token_gradients(model: nn.Module, probe: Probe, layout: PromptLayout, spans: Tensor, fluency_weights: Tensor,
                    row_targets: Tensor | None = None, chunk_size: int = GRADIENT_CHUNK,
                    fluency_model: nn.Module | None = None,
                    states: list[ParentStates] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of `activation - fluency_weight * xentropy` for each row w.r.t. its span's one-hot tokens (see the
    module docstring: the cross-entropy's labels are the relaxed one-hot rows too).

    `spans [M, L]`, `fluency_weights [M]`; returns `(grad [M, L, V], activation [M], xentropy [M])`, the activation
    and cross-entropy being those of the discrete prompts. Rows are independent, so one backward gives every
    row its own gradient under its own fluency weight. With `row_targets [M]` row i is scored by the probe's target
    `row_targets[i]` (many targets packed into one batch), else by its first target. `fluency_model` (a
    second LM sharing the tokenizer and vocabulary) computes the cross-entropy term instead of `model`.
    Rows run `chunk_size` at a time (the chunk halves on out-of-memory errors). Given a list `states`, the
    forward also keeps each chunk's KV cache and span log-probabilities and appends them as `ParentStates`
    (in row order), so children of these prompts can be scored without another forward of the prompts.
    Works under `torch.no_grad()`
    and `torch.inference_mode()`: gradients are enabled here.
    """
    embedding = model.get_input_embeddings()
    weight = embedding.weight
    fluency_embedding = None if fluency_model is None else fluency_model.get_input_embeddings()
    if fluency_embedding is not None and fluency_embedding.weight.shape[0] != weight.shape[0]:
        raise ValueError(f"fluency_model has a vocabulary of {fluency_embedding.weight.shape[0]} tokens, the model "
                         f"{weight.shape[0]}; the fluency model must share the tokenizer and vocabulary")
    with torch.inference_mode(False), torch.enable_grad():
        # clones: tensors made under inference_mode cannot be saved for backward
        spans = spans.clone()
        fluency_weights = fluency_weights.clone()
        owners = (torch.zeros(spans.shape[0], dtype=torch.long) if row_targets is None
                  else torch.as_tensor(row_targets).clone()).to(weight.device)

        def one(rows: slice) -> tuple[Tensor, Tensor, Tensor]:
            part = spans[rows]
            full = layout.full(part).clone()
            one_hot = torch.zeros(part.shape[0], part.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
            one_hot.scatter_(2, part[..., None], 1.0)
            one_hot.requires_grad_(True)
            embeds = span_embeddings(embedding, full, one_hot, layout.span)
            keep_cache = {"use_cache": True} if states is not None else {}
            result = probe(inputs_embeds=embeds, need_output=fluency_model is None or states is not None, **keep_cache)
            activation = result.scores.gather(1, owners[rows, None]).squeeze(1)  # row i scored by target owners[i]
            if fluency_model is None:
                logits = result.output.logits
            else:
                logits = fluency_model(inputs_embeds=span_embeddings(fluency_embedding, full, one_hot, layout.span)).logits
            xent = relaxed_span_xentropy(logits, one_hot, layout.span)
            objective = activation - fluency_weights[rows].to(activation) * xent
            (grad,) = torch.autograd.grad(objective.sum(), one_hot)
            if states is not None:
                kept.append(ParentStates.from_output(result.output, full, layout.span))
            return grad, activation.detach(), xent.detach()

        kept: list[ParentStates] = []
        parts = run_chunked(one, spans.shape[0], chunk_size)
        if states is not None:
            states.append(ParentStates.cat(kept))
    return tuple(torch.cat([part[j] for part in parts]) for j in range(3))  # type: ignore[return-value]


def top_tokens(grad: Tensor, allowed: Tensor, topk: int, n_allowed: int | None = None) -> Tensor:
    """The `topk` allowed tokens with the largest gradient at each position: `[M, L, k]` from `grad [M, L, V]`
    (never more than the `n_allowed` allowed tokens; pass it to skip counting them, a host sync).

    Example:
        >>> grad = torch.tensor([[[0.0, 3.0, 1.0, 2.0]]])
        >>> top_tokens(grad, torch.tensor([True, False, True, True]), 2).tolist()
        [[[3, 2]]]
    """
    vocab = grad.shape[2]
    if n_allowed is None:
        n_allowed = int(allowed[:vocab].sum())
    masked = grad.masked_fill(~allowed.to(grad.device)[None, None, :vocab], float("-inf"))
    return masked.topk(min(topk, n_allowed), dim=2).indices
