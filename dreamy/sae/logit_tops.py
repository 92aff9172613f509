"""Logit tops (VocabProj) of many SAE features at once: the output tokens each feature's decoder row promotes and
suppresses, read through the final norm and the unembedding, as SAEDashboard and Neuronpedia show them.

`logit_tops(loaded, sae, features, k)` equals `dreamy.sae.describe.vocab_projection` of each feature's decoder
row, but the rows of all asked features go through the final norm and the unembedding as one matmul (`[F, d] @
[d, vocab]`, in blocks of at most `max_elements` logits so that 4,096 features of a 49k-token vocabulary do not
need a 0.8 GB product), with one `topk` per block for the top and one for the bottom tokens.

Example:
    >>> from dreamy.models import load
    >>> loaded = load("tiny:lm")
    >>> w_dec = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    >>> tops = logit_tops(loaded, w_dec, [0, 3], k=2)
    >>> len(tops), len(tops[1].promoted), tops[1].method
    (2, 2, 'vocab_proj')
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from dreamy.models import LoadedModel
from dreamy.sae.describe import OutputTokens, TokenScore, final_norm
from dreamy.targets import TargetError
from dreamy.targets.saelens import is_sae_folder, read_sae_folder


def decoder_rows(sae: str | os.PathLike | Tensor) -> Tensor:
    """An SAE's decoder `W_dec [d_sae, d_in]`: from an SAELens folder, a single `.safetensors`/`.pt` SAE file
    (`W_dec`, or `decoder.weight` transposed) or the tensor itself.

    Example:
        >>> tuple(decoder_rows(torch.zeros(3, 4)).shape)
        (3, 4)
    """
    if isinstance(sae, Tensor):
        if sae.ndim != 2:
            raise ValueError(f"a decoder is [d_sae, d_in]; got a tensor of shape {tuple(sae.shape)}")
        return sae
    path = str(sae)
    if is_sae_folder(path):
        weights = read_sae_folder(path)
        if weights.transcoder:
            raise TargetError(f"'{path}' is a transcoder: its decoder writes another site than it reads; its logit tops "
                              "are not those of the site it reads")
        return weights.W_dec
    from dreamy.targets.units import _read_tensors  # the single-file form of `sae=`

    data = _read_tensors(path)
    if isinstance(data, dict):
        if "W_dec" in data:
            return data["W_dec"]
        if "decoder.weight" in data:  # nn.Linear's [d_in, d_sae]
            return data["decoder.weight"].t()
    raise TargetError(f"SAE file '{path}' has no W_dec (or decoder.weight); pass an SAE folder or the decoder tensor")


@torch.no_grad()
def logit_tops(loaded: LoadedModel, sae: str | os.PathLike | Tensor, features: Sequence[int] | None = None, k: int = 10,
               *, max_elements: int = 2 ** 26) -> list[OutputTokens]:
    """The `k` most promoted and most suppressed tokens of each of `features` (all of the SAE's when None); see
    the module docstring. Returns one `OutputTokens` per feature, in the order asked.

    Example:
        >>> from dreamy.models import load
        >>> loaded = load("tiny:lm")
        >>> row = loaded.model.lm_head.weight[7] / loaded.model.model.norm.weight  # a row that reads as token 7
        >>> logit_tops(loaded, row[None], k=1)[0].promoted[0].id
        7
    """
    unembed = loaded.model.get_output_embeddings()
    if unembed is None:
        raise ValueError(f"model '{loaded.name}' has no output embeddings to project onto the vocabulary")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    w_dec = decoder_rows(sae)
    weight = unembed.weight
    if w_dec.shape[1] != weight.shape[1]:
        raise ValueError(f"the SAE's decoder rows have {w_dec.shape[1]} values but the unembedding of '{loaded.name}' "
                         f"reads {weight.shape[1]}; logit tops need an SAE of the residual stream's width")
    chosen = list(range(w_dec.shape[0])) if features is None else [int(f) for f in features]
    bad = [f for f in chosen if not 0 <= f < w_dec.shape[0]]
    if bad:
        raise ValueError(f"feature {bad[0]} out of range for an SAE with {w_dec.shape[0]} features")
    norm = final_norm(loaded.model)
    k = min(k, weight.shape[0])
    block = max(1, max_elements // weight.shape[0])
    index = torch.tensor(chosen, dtype=torch.long)
    tops, bottoms = [], []
    for first in range(0, len(chosen), block):
        rows = w_dec[index[first:first + block]].to(device=weight.device, dtype=weight.dtype)
        logits = unembed(norm(rows[None]))[0].float()  # [F, vocab]: every feature of the block in one product
        top, bottom = logits.topk(k, dim=1), (-logits).topk(k, dim=1)
        tops.append((top.values.cpu(), top.indices.cpu()))
        bottoms.append((-bottom.values.cpu(), bottom.indices.cpu()))
    tokenizer = loaded.tokenizer
    values, ids = torch.cat([v for v, _ in tops]).tolist(), torch.cat([i for _, i in tops]).tolist()
    low_values, low_ids = torch.cat([v for v, _ in bottoms]).tolist(), torch.cat([i for _, i in bottoms]).tolist()
    names = {i: tokenizer.decode([i]) for row in ids + low_ids for i in row}
    return [OutputTokens("vocab_proj", [TokenScore(names[i], i, v) for v, i in zip(values[f], ids[f])],
                         [TokenScore(names[i], i, v) for v, i in zip(low_values[f], low_ids[f])])
            for f in range(len(chosen))]
