"""Per-token attribution of a prompt's activation: gradient x input on the token embeddings.

Example:
    >>> import torch
    >>> from dreamy.models import load
    >>> from dreamy.targets import Probe
    >>> lm = load("tiny:lm")
    >>> probe = Probe(lm.model, ["model.layers.1.mlp.down_proj:3"], sequence_reduce="pos=-1")
    >>> [len(row) for row in token_attributions(lm.model, probe, torch.tensor([[0, 5, 6, 7], [0, 8, 9, 7]]))]
    [4, 4]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreamy.targets import Probe


def token_attributions(model: nn.Module, probe: Probe, ids: Tensor, target_index: int = 0) -> list[list[float]]:
    """For each token of each row of `ids [N, T]`: the gradient of the score of the probe's target
    `target_index` w.r.t. that token's embedding, dotted with the embedding (first-order estimate of the
    token's contribution). One forward and backward for all rows (rows are independent, so the gradient of
    the summed scores holds each row's own). Works under `torch.no_grad()` and `torch.inference_mode()`
    (gradients are enabled here)."""
    with torch.inference_mode(False), torch.enable_grad():
        embeds = model.get_input_embeddings()(ids.clone()).detach().clone().requires_grad_(True)
        score = probe(inputs_embeds=embeds).scores[:, target_index].sum()
        (grad,) = torch.autograd.grad(score, embeds)
    return (grad * embeds).sum(dim=-1).detach().tolist()
