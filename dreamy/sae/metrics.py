"""Quality figures of an SAE on held-out text: FVE, L0, and the LM's loss clean / spliced / zero-ablated.

On windows never trained on (each run as `start token + window`), at every position but the start:
- FVE, the fraction of variance explained: `1 - sum |x - sae(x)|^2 / sum |x - mean(x)|^2`;
- L0: the mean number of non-zero features per token;
- the mean next-token cross-entropy of the LM clean, with `sae(x)` spliced in at the site, and with the
  site zero-ablated; "loss recovered" is `(zero - spliced) / (zero - clean)` (1 = the SAE loses nothing).
The start position keeps its clean activation in the spliced and ablated runs (the SAE never saw it).

Example:
    >>> from dreamy.models import load
    >>> from dreamy.sae.model import SAE
    >>> loaded = load("tiny:lm")
    >>> sae = SAE.initialized(64, 128, 8, generator=torch.Generator().manual_seed(0))
    >>> figures = evaluate(loaded, "model.layers.0", sae, torch.randint(2, 300, (4, 8), generator=torch.Generator().manual_seed(0)))
    >>> sorted(figures)
    ['fve', 'heldout_tokens', 'l0', 'loss_recovered', 'xentropy_clean', 'xentropy_spliced', 'xentropy_zero']
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamy.core.frozen import frozen
from dreamy.models import LoadedModel
from dreamy.sae.activations import start_token, with_start
from dreamy.sae.model import SAE
from dreamy.sae.splice import after_start, edit_site

DEAD_WINDOW_TOKENS = 200_000  # a feature that has not fired over this many training tokens counts as dead


def loss_recovered(clean: float, spliced: float, zero: float) -> float:
    """`(zero - spliced) / (zero - clean)`: 1 when splicing costs nothing, 0 when it is as bad as ablation.

    Example:
        >>> loss_recovered(clean=3.0, spliced=3.5, zero=8.0)
        0.9
    """
    if zero == clean:
        return float("nan")
    return (zero - spliced) / (zero - clean)


def _next_token_xentropy_sum(logits: Tensor, ids: Tensor) -> Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")


@torch.no_grad()
def evaluate(loaded: LoadedModel, site: str, sae: SAE, windows: Tensor, *, batch_windows: int = 16) -> dict[str, Any]:
    """FVE, L0 and the clean / spliced / zero-ablated cross-entropies on `windows` (`[N, T]`, no start token); the
    model runs in eval mode (`core.frozen`) and is left as it was.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.sae.model import SAE
        >>> loaded = load("tiny:lm")
        >>> sae = SAE.initialized(64, 128, 8, generator=torch.Generator().manual_seed(0))
        >>> evaluate(loaded, "model.layers.1", sae, torch.full((2, 6), 5))["heldout_tokens"]
        12
    """
    with frozen(loaded.model):  # eval mode: no dropout in the clean, spliced or ablated forwards
        return _evaluate(loaded, site, sae, windows, batch_windows)


def _evaluate(loaded: LoadedModel, site: str, sae: SAE, windows: Tensor, batch_windows: int) -> dict[str, Any]:
    model = loaded.model
    start = start_token(loaded.tokenizer)
    sse = torch.zeros((), dtype=torch.float64)
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64)
    sum_x2 = torch.zeros((), dtype=torch.float64)
    l0_sum = torch.zeros((), dtype=torch.float64)
    xent = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_vectors, n_predicted = 0, 0
    for first in range(0, len(windows), batch_windows):
        ids = with_start(windows[first:first + batch_windows], start).to(loaded.device)
        kept: dict[str, Tensor] = {}

        def keep(activation: Tensor) -> Tensor:
            kept["x"] = activation[:, 1:].reshape(-1, activation.shape[-1]).float()
            return activation

        with edit_site(model, site, keep):
            xent["clean"] += float(_next_token_xentropy_sum(model(input_ids=ids).logits, ids))
        x = kept["x"]
        z, recon = sae.reconstruct(x)
        sse += (x - recon).double().pow(2).sum().cpu()
        sum_x += x.double().sum(dim=0).cpu()
        sum_x2 += x.double().pow(2).sum().cpu()
        l0_sum += (z != 0).sum().double().cpu()
        n_vectors += x.shape[0]
        n_predicted += ids[:, 1:].numel()
        with edit_site(model, site, after_start(lambda a: sae(a.float()))):
            xent["spliced"] += float(_next_token_xentropy_sum(model(input_ids=ids).logits, ids))
        with edit_site(model, site, after_start(torch.zeros_like)):
            xent["zero"] += float(_next_token_xentropy_sum(model(input_ids=ids).logits, ids))
    if n_vectors == 0:
        raise ValueError("no held-out windows to evaluate on")
    total_var = sum_x2 - sum_x.pow(2).sum() / n_vectors
    means = {name: value / n_predicted for name, value in xent.items()}
    return {
        "fve": float(1 - sse / total_var),
        "l0": float(l0_sum / n_vectors),
        "xentropy_clean": means["clean"],
        "xentropy_spliced": means["spliced"],
        "xentropy_zero": means["zero"],
        "loss_recovered": loss_recovered(means["clean"], means["spliced"], means["zero"]),
        "heldout_tokens": n_vectors,
    }


def dead_fraction(tokens_since_fired: Tensor, tokens_trained: int, window: int = DEAD_WINDOW_TOKENS) -> float:
    """Share of features that did not fire over the last `window` training tokens (all of them when fewer).

    Example:
        >>> dead_fraction(torch.tensor([0, 10, 500_000, 300]), tokens_trained=1_000_000)
        0.25
        >>> dead_fraction(torch.tensor([0, 300, 300]), tokens_trained=300)
        0.6666666666666666
    """
    horizon = min(window, tokens_trained)
    return float((tokens_since_fired >= horizon).double().mean())
