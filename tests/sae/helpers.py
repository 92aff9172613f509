"""Small SAEs of each architecture with hand-set values, shared by the SAE tests."""

from __future__ import annotations

import torch

from dreamy.sae.model import SAE
from dreamy.targets.saelens import SAEWeights


def small_sae(architecture: str, *, d_in: int = 4, d_sae: int = 6, apply_b_dec_to_input: bool = True, seed: int = 0,
              normalize_activations: str = "none") -> SAE:
    """A seeded random SAE of `architecture` (relu, jumprelu, topk and abstopk with k=2, gated)."""
    gen = torch.Generator().manual_seed(seed)
    gated = architecture == "gated"
    weights = SAEWeights(
        architecture,
        W_enc=torch.randn(d_in, d_sae, generator=gen),
        b_enc=torch.randn(d_sae, generator=gen) * 0.1,
        W_dec=torch.randn(d_sae, d_in, generator=gen),
        b_dec=torch.randn(d_in, generator=gen),
        threshold=torch.rand(d_sae, generator=gen) * 0.5 if architecture == "jumprelu" else None,
        k=2 if architecture in ("topk", "abstopk") else None,
        apply_b_dec_to_input=apply_b_dec_to_input,
        cfg={"metadata": {"hook_name": "0", "model_name": "test"}},
        normalize_activations=normalize_activations,
        b_gate=torch.randn(d_sae, generator=gen) * 0.1 if gated else None,
        r_mag=torch.randn(d_sae, generator=gen) * 0.1 if gated else None,
    )
    return SAE(weights).requires_grad_(False)
