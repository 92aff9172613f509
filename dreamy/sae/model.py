"""The sparse autoencoder: parameters, encode (ReLU, JumpReLU or TopK) and decode.

`SAE` holds the SAELens tensors as parameters (`W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
`W_dec [d_sae, d_in]`, `b_dec [d_in]`, and the buffer `threshold [d_sae]` for jumprelu) and what
`cfg.json` says about them. `encode(x) = act((x - b_dec) @ W_enc + b_enc)` (no `- b_dec` when
`apply_b_dec_to_input` is false) and `decode(z) = z @ W_dec + b_dec`.

Example:
    >>> sae = SAE.initialized(d_in=8, d_sae=32, k=4, generator=torch.Generator().manual_seed(0))
    >>> z = sae.encode(torch.randn(3, 8))
    >>> tuple(z.shape), int((z > 0).sum(dim=1).max()) <= 4
    ((3, 32), True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dreamy.targets.saelens import ARCHITECTURES, SAEWeights


def topk_relu(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The `k` largest values of each row of `pre` after ReLU, and their indices (`[..., k]` each).

    Example:
        >>> values, indices = topk_relu(torch.tensor([[0.5, -1.0, 2.0]]), 2)
        >>> values.tolist(), indices.tolist()
        ([[2.0, 0.5]], [[2, 0]])
    """
    values, indices = pre.topk(k, dim=-1, sorted=True)
    return values.clamp(min=0), indices


class SAE(nn.Module):
    """A sparse autoencoder in the SAELens layout; see the module docstring.

    `cfg` keeps every `cfg.json` entry (`hook_name`, `model_name`, training settings); `architecture`,
    `k` and `apply_b_dec_to_input` are attributes because encoding needs them.
    """

    def __init__(self, weights: SAEWeights) -> None:
        super().__init__()
        if weights.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {weights.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        self.architecture = "relu" if weights.architecture == "standard" else weights.architecture
        self.k = weights.k
        self.apply_b_dec_to_input = weights.apply_b_dec_to_input
        self.cfg: dict[str, Any] = dict(weights.cfg)
        self.W_enc = nn.Parameter(weights.W_enc.clone())
        self.b_enc = nn.Parameter(weights.b_enc.clone())
        self.W_dec = nn.Parameter(weights.W_dec.clone())
        self.b_dec = nn.Parameter(weights.b_dec.clone())
        self.register_buffer("threshold", None if weights.threshold is None else weights.threshold.clone())
        if self.architecture == "topk" and not (isinstance(self.k, int) and 1 <= self.k <= self.d_sae):
            raise ValueError(f"a topk SAE needs k in 1..{self.d_sae}, got {self.k!r}")
        if self.architecture == "jumprelu" and self.threshold is None:
            raise ValueError("a jumprelu SAE needs a threshold [d_sae]")

    @classmethod
    def initialized(cls, d_in: int, d_sae: int, k: int, *, generator: torch.Generator,
                    cfg: dict[str, Any] | None = None) -> "SAE":
        """A fresh TopK SAE as in Gao et al.: unit-norm decoder rows, the encoder their transpose, zero biases.

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> torch.allclose(sae.W_dec.norm(dim=1), torch.ones(6)), torch.equal(sae.W_enc, sae.W_dec.T)
            (True, True)
        """
        w_dec = torch.randn(d_sae, d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        weights = SAEWeights("topk", W_enc=w_dec.T.contiguous(), b_enc=torch.zeros(d_sae), W_dec=w_dec,
                             b_dec=torch.zeros(d_in), k=k, apply_b_dec_to_input=True, cfg=dict(cfg or {}))
        return cls(weights)

    @property
    def d_in(self) -> int:
        """Width of the site the SAE reads."""
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return self.W_enc.shape[1]

    def pre_activation(self, x: Tensor) -> Tensor:
        """`(x - b_dec) @ W_enc + b_enc` (`x` not shifted when `apply_b_dec_to_input` is false), `[..., d_sae]`.

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> torch.allclose(sae.pre_activation(torch.eye(4)), sae.W_enc)
            True
        """
        shifted = x - self.b_dec if self.apply_b_dec_to_input else x
        return shifted @ self.W_enc + self.b_enc

    def activate(self, pre: Tensor) -> Tensor:
        """The architecture's activation of pre-activations `[..., d_sae]`.

        Example:
            >>> SAE.initialized(4, 3, 1, generator=torch.Generator().manual_seed(0)).activate(torch.tensor([0.5, 2.0, -1.0])).tolist()
            [0.0, 2.0, 0.0]
        """
        if self.architecture == "topk":
            values, indices = topk_relu(pre, self.k)
            return torch.zeros_like(pre).scatter(-1, indices, values)
        if self.architecture == "jumprelu":
            return torch.where(pre > self.threshold, pre, torch.zeros_like(pre))
        return pre.clamp(min=0)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations `[..., d_sae]` of site activations `x` `[..., d_in]`.

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> int((sae.encode(torch.randn(5, 4)) != 0).sum(dim=-1).max())
            2
        """
        return self.activate(self.pre_activation(x))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction `z @ W_dec + b_dec` (`[..., d_in]`) of feature activations `z` `[..., d_sae]`.

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> torch.equal(sae.decode(torch.zeros(6)), sae.b_dec)
            True
        """
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction `decode(encode(x))`."""
        return self.decode(self.encode(x))

    def weights(self) -> SAEWeights:
        """The tensors and settings as an `SAEWeights` (detached CPU float32 copies), e.g. to write a folder.

        Example:
            >>> SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0)).weights().k
            2
        """
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().float().cpu().clone()

        return SAEWeights(self.architecture, W_enc=cpu(self.W_enc), b_enc=cpu(self.b_enc), W_dec=cpu(self.W_dec),
                          b_dec=cpu(self.b_dec), threshold=cpu(self.threshold), k=self.k,
                          apply_b_dec_to_input=self.apply_b_dec_to_input, cfg=dict(self.cfg))
