"""The sparse autoencoder: parameters, encode (ReLU, JumpReLU, TopK, AbsTopK, gated) and decode, as SAELens does.

`SAE` holds the SAELens tensors as parameters (`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]`; the buffer `threshold [d_sae]` for jumprelu; `b_gate`, `r_mag` for gated, whose `b_enc` is
SAELens's `b_mag`) and what `cfg.json` says about them. `encode(x) = act(normalize(x) - b_dec) @ W_enc + b_enc)`
(no `- b_dec` unless `apply_b_dec_to_input`; `normalize` per `normalize_activations`, see
`dreamy.targets.saelens`), `decode(z) = z @ W_dec + b_dec` (in the normalized space), and `reconstruct(x)`
(also `sae(x)`) undoes the normalization.

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

from dreamy.targets.saelens import ARCHITECTURES, NORMALIZATIONS, SAEWeights, activate, normalize_input


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

    `cfg` keeps every `cfg.json` entry (`metadata` with `hook_name`, `model_name`; training settings);
    `architecture`, `k`, `apply_b_dec_to_input` and `normalize_activations` are attributes because encoding needs
    them. A transcoder (whose decoder writes another site) is refused: targets read its encoder
    (`SITE:sae=DIR#i`), but it does not reconstruct its own input.
    """

    def __init__(self, weights: SAEWeights) -> None:
        super().__init__()
        architecture = "relu" if weights.architecture == "standard" else weights.architecture
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {weights.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        if weights.transcoder:
            raise ValueError(f"a transcoder (architecture {weights.cfg.get('architecture')!r}) writes another site than it reads, so "
                             "dreamy.sae does not reconstruct with it; read its latents as targets: 'SITE:sae=DIR#i'")
        if weights.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations {weights.normalize_activations!r} is not one of {', '.join(NORMALIZATIONS)}")
        self.architecture = architecture
        self.k = weights.k
        self.apply_b_dec_to_input = weights.apply_b_dec_to_input
        self.normalize_activations = weights.normalize_activations
        self.reshape_activations = weights.reshape_activations
        self.cfg: dict[str, Any] = dict(weights.cfg)
        self.W_enc = nn.Parameter(weights.W_enc.clone())
        self.b_enc = nn.Parameter(weights.b_enc.clone())
        self.W_dec = nn.Parameter(weights.W_dec.clone())
        self.b_dec = nn.Parameter(weights.b_dec.clone())
        self.register_buffer("threshold", None if weights.threshold is None else weights.threshold.clone())
        gated = architecture == "gated"
        if gated and (weights.b_gate is None or weights.r_mag is None):
            raise ValueError("a gated SAE needs b_gate [d_sae] and r_mag [d_sae]")
        self.b_gate = nn.Parameter(weights.b_gate.clone()) if gated else None
        self.r_mag = nn.Parameter(weights.r_mag.clone()) if gated else None
        if architecture in ("topk", "abstopk") and not (isinstance(self.k, int) and 1 <= self.k <= self.d_sae):
            raise ValueError(f"a {architecture} SAE needs k in 1..{self.d_sae}, got {self.k!r}")
        if architecture == "jumprelu" and self.threshold is None:
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

    def _sae_input(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        x, undo = normalize_input(x, self.normalize_activations)
        return (x - self.b_dec if self.apply_b_dec_to_input else x), undo

    def pre_activation(self, x: Tensor) -> Tensor:
        """`(normalize(x) - b_dec) @ W_enc + b_enc` (no shift unless `apply_b_dec_to_input`), `[..., d_sae]`; a gated
        SAE's magnitude path (`W_enc * exp(r_mag)`, `b_mag`).

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> torch.allclose(sae.pre_activation(torch.eye(4)), sae.W_enc)
            True
        """
        shifted, _ = self._sae_input(x)
        w = self.W_enc * torch.exp(self.r_mag) if self.architecture == "gated" else self.W_enc
        return shifted @ w + self.b_enc

    def activate(self, pre: Tensor, gate: Tensor | None = None) -> Tensor:
        """The architecture's activation of pre-activations `[..., d_sae]` (`gate`: a gated SAE's `x' W_enc + b_gate`).

        Example:
            >>> SAE.initialized(4, 3, 1, generator=torch.Generator().manual_seed(0)).activate(torch.tensor([0.5, 2.0, -1.0])).tolist()
            [0.0, 2.0, 0.0]
        """
        return activate(self.architecture, pre, threshold=self.threshold, k=self.k, gate=gate)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations `[..., d_sae]` of site activations `x` `[..., d_in]`.

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> int((sae.encode(torch.randn(5, 4)) != 0).sum(dim=-1).max())
            2
        """
        return self._encode(x)[0]

    def _encode(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        shifted, undo = self._sae_input(x)
        if self.architecture == "gated":
            pre = shifted @ (self.W_enc * torch.exp(self.r_mag)) + self.b_enc
            return self.activate(pre, gate=shifted @ self.W_enc + self.b_gate), undo
        return self.activate(shifted @ self.W_enc + self.b_enc), undo

    def decode(self, z: Tensor) -> Tensor:
        """`z @ W_dec + b_dec` (`[..., d_in]`) of feature activations `z` `[..., d_sae]`: the reconstruction, in
        the normalized space when `normalize_activations` is not `none` (`reconstruct` undoes it).

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> torch.equal(sae.decode(torch.zeros(6)), sae.b_dec)
            True
        """
        return z @ self.W_dec + self.b_dec

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(encode(x), reconstruction of x)`, the normalization undone as SAELens's `forward` does.

        Example:
            >>> sae = SAE.initialized(4, 6, 2, generator=torch.Generator().manual_seed(0))
            >>> x = torch.randn(3, 4)
            >>> z, recon = sae.reconstruct(x)
            >>> torch.equal(recon, sae.decode(z))
            True
        """
        z, undo = self._encode(x)
        recon = self.decode(z)
        if undo is not None:
            scale, shift = undo
            recon = recon * scale + shift
        return z, recon

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of `x` (see `reconstruct`)."""
        return self.reconstruct(x)[1]

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
                          apply_b_dec_to_input=self.apply_b_dec_to_input, cfg=dict(self.cfg),
                          normalize_activations=self.normalize_activations,
                          reshape_activations=self.reshape_activations, b_gate=cpu(self.b_gate), r_mag=cpu(self.r_mag))
