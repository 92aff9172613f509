"""Train a TopK sparse autoencoder on a language model's site, as in Gao et al., "Scaling and evaluating
sparse autoencoders" (2024).

- Data: windows of `window` tokens from one or more text corpora (`dreamy.datasets.open_text` names or
  paths), pooled and shuffled by `seed`; `heldout_tokens` worth of windows are held out for the figures.
  Each step takes one Adam step on the activations of `batch_tokens // window` windows (start position
  dropped); the LM runs the windows of `lm_batch_tokens // batch_tokens` consecutive steps in one batch
  (bigger batches run faster on a CPU), stopping at the site (the probe's early exit).
- Model: TopK activation (ReLU, then the `k` largest per token); decoder rows initialised unit-norm with
  the encoder their transpose; `b_dec` initialised at the mean of the first batch; inputs scaled by one
  number (fixed on the first batch) so that their mean squared distance to the mean is `d_in`, folded
  back into the biases when the SAE is saved, so the saved SAE reads the raw site.
- Loss: normalised MSE (`|x - x_hat|^2 / |x - mean|^2`, = 1 - FVE) plus `aux_coef` (1/32) times the AuxK
  loss: the `aux_k` (default `d_in // 2`) largest pre-activations among dead features (no firing over
  the last `aux_dead_tokens`) reconstruct the residual error `x - x_hat`.
- After each step the decoder rows are renormalised to unit norm, and before it their gradients lose
  the component parallel to the rows. Learning rate: linear warm-up over the first 5% of steps, linear
  decay to 0 over the last 20%.
- Checkpoints (`checkpoint.pt`, atomic) every `checkpoint_every` steps and at the end; `resume=True`
  continues from the last one and ends equal to an uninterrupted run (same settings required). A checkpoint
  that is not one of ours, or holds non-finite values, is refused in one line (`SAERunError`).
- Checked before any training: the output folder (`core.folders.check_out_folder`: unwritable, a dangling
  symlink or a loop; another SAE run's files without `resume`), the window against the model's context, the site (`activations.check_site`: token
  ids, a tensor shared across the batch) and the memory training needs (`training_bytes`). While it trains
  the folder is locked (`core.folders.folder_lock`: one run per folder) and the model runs in eval mode
  without parameter gradients (`core.frozen`); temporary files a killed run left are removed first.
- A step whose loss or weights are not finite stops training (`SAEDiverged`): no SAE is saved and the last
  checkpoint, written before the divergence, stays. Figures that are not finite are named in the metrics'
  `error` field.
- At the end the SAE is saved in the SAELens layout (`cfg.json`, `sae_weights.safetensors`) and the
  figures (`dreamy.sae.metrics`) are written to `metrics.json` and returned.

Example:
    >>> import tempfile
    >>> from dreamy.models import load
    >>> from dreamy.datasets import TextCorpus
    >>> corpus = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park. " * 40)
    >>> result = train_sae(load("tiny:lm"), "model.layers.0", [corpus], features=128, k=8, tokens=2048,
    ...                    batch_tokens=256, window=16, heldout_tokens=64, out_dir=tempfile.mkdtemp(), progress=False)
    >>> result.sae.d_sae, result.metrics["train_tokens"], 0 <= result.metrics["dead_fraction"] <= 1
    (128, 2048, True)
"""

from __future__ import annotations

import io
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamy.datasets import TextCorpus
from dreamy.core.files import write_atomic, write_json_atomic
from dreamy.core.folders import check_out_folder, check_unlocked, folder_lock, remove_stale_temps
from dreamy.core.frozen import frozen
from dreamy.core.memory import available_bytes
from dreamy.core.stepping import make_generator, progress as progress_bar
from dreamy.models import LoadedModel
from dreamy.sae.config import SAETrainConfig
from dreamy.sae.activations import WindowSplit, check_site, corpus_windows, site_activations, site_probe
from dreamy.sae.files import save
from dreamy.sae.metrics import DEAD_WINDOW_TOKENS, dead_fraction, evaluate
from dreamy.sae.model import SAE
from dreamy.targets import parse
from dreamy.targets.dialects import is_transformerlens_name
from dreamy.targets.saelens import CFG_NAME, WEIGHTS_NAME

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
WARMUP_SHARE = 0.05
DECAY_SHARE = 0.2


FIGURES = ("fve", "l0", "dead_fraction", "xentropy_clean", "xentropy_spliced", "xentropy_zero", "loss_recovered")
CHECKPOINT_KEYS = ("settings", "step", "scale", "train_seconds", "sae", "optimizer", "since_fired")
SAE_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


class SAERunError(ValueError):
    """The output folder, the checkpoint, the site or the memory does not fit this training run."""


class SAEDiverged(SAERunError):
    """Training produced a non-finite loss or weight; nothing was saved past the last finite checkpoint."""


@dataclass
class TrainResult:
    """A trained SAE (reading the raw site), its figures (as in `metrics.json`) and its folder."""

    sae: SAE
    metrics: dict[str, Any]
    out_dir: Path

    def to_records(self) -> list[dict[str, Any]]:
        """`[metrics with the folder]`: every method's results give their records the same way.

        Example:
            >>> TrainResult(None, {"fve": 0.9}, Path("sae")).to_records()
            [{'fve': 0.9, 'out_dir': 'sae'}]
        """
        return [{**self.metrics, "out_dir": str(self.out_dir)}]


def lr_factor(step: int, n_steps: int) -> float:
    """The learning-rate multiplier at `step` (0-based) of `n_steps`: warm-up, constant, linear decay to 0.

    Example:
        >>> [round(lr_factor(s, 100), 2) for s in (0, 4, 50, 90, 99)]
        [0.2, 1.0, 1.0, 0.5, 0.05]
    """
    warmup = max(1, round(WARMUP_SHARE * n_steps))
    decay = max(1, round(DECAY_SHARE * n_steps))
    return min(1.0, (step + 1) / warmup, (n_steps - step) / decay)


def check_out_dir(out_dir: str | os.PathLike, resume: bool) -> Path:
    """The output folder, refused (`OutDirError` or `SAERunError`, one line) when it cannot be written (see
    `core.folders.check_out_folder`), another run holds it, it holds files of another SAE run and `resume` is
    off, an SAE without the checkpoint `resume` needs (resuming would train afresh over it), or a dream run.

    Example:
        >>> import tempfile
        >>> check_out_dir(tempfile.mkdtemp(), resume=False).is_dir()
        True
    """
    # the check every command shares (a file, a dangling symlink, unwritable), on the folder written to
    folder = check_out_folder(Path(out_dir).expanduser() if str(out_dir).strip() else out_dir)
    if folder.is_dir():
        check_unlocked(folder)
    taken = [name for name in (CHECKPOINT_NAME, CFG_NAME, WEIGHTS_NAME) if (folder / name).exists()]
    if taken and not resume:
        raise SAERunError(f"output folder '{out_dir}' already holds an SAE run ({', '.join(taken)}); "
                          "pass --resume (resume=True) to continue it, or choose another folder")
    if taken and CHECKPOINT_NAME not in taken:  # resuming would train afresh over an SAE it cannot continue
        raise SAERunError(f"output folder '{out_dir}' holds an SAE ({', '.join(taken)}) but no {CHECKPOINT_NAME} to "
                          "resume from (not trained here, or its checkpoint was removed); choose another folder")
    if (folder / "results.json").is_file():
        raise SAERunError(f"output folder '{out_dir}' holds a dream run (results.json); train the SAE into its "
                          "own folder")
    return folder


def training_bytes(d_in: int, config: SAETrainConfig) -> int:
    """About how many bytes training an SAE of `config` on a `d_in`-wide site needs at its peak: the weights
    (`2 * d_in * features + features + d_in` floats) four times over (values, gradients, Adam's two moments),
    three more for a checkpoint's serialized copy, and a step's dense pre-activations with AuxK's masked copy
    (`2 * batch_tokens * features` floats).

    Example:
        >>> training_bytes(64, SAETrainConfig(features=128, k=8, batch_tokens=256)) // 1024
        709
    """
    weights = 2 * d_in * config.features + config.features + d_in
    return 4 * (7 * weights + 2 * config.batch_tokens * config.features)


def check_memory(d_in: int, config: SAETrainConfig, device: str | torch.device) -> None:
    """Refuse (`SAERunError`, with the estimate) a training run that cannot fit in what `device` has free.

    Example:
        >>> check_memory(64, SAETrainConfig(features=128, k=8), "cpu")
    """
    need = training_bytes(d_in, config)
    free = available_bytes(device)
    if free is not None and need > free:
        raise SAERunError(f"an SAE of {config.features} features on a {d_in}-wide site needs about {need / 2**30:.1f} GiB "
                          f"to train but {free / 2**30:.1f} GiB is free on {device}; lower --features (features=) or "
                          "--batch-tokens (batch_tokens=)")


def _sparse_decode(indices: Tensor, values: Tensor, w_dec: Tensor) -> Tensor:
    """`sum_j values[:, j] * w_dec[indices[:, j]]` without the dense `[B, d_sae]` matrix."""
    return F.embedding_bag(indices, w_dec, per_sample_weights=values, mode="sum")


class _SelectedPre(torch.autograd.Function):
    """`pre.gather(1, indices)` for a dense pre-activation `pre = (x - b_dec) @ W_enc + b_enc` computed without
    autograd, with a sparse backward: the gradient reaches only the selected columns of `W_enc`, so the
    backward costs `B * k * d_in` instead of the dense `B * d_sae * d_in`."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, x: Tensor, w_enc: Tensor, b_enc: Tensor, b_dec: Tensor, indices: Tensor) -> Tensor:
        ctx.save_for_backward(x, w_enc, b_dec, indices)
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w_enc, b_dec, indices = ctx.saved_tensors
        n, k = indices.shape
        features = w_enc.shape[1]
        columns = indices.reshape(-1)
        rows = torch.arange(n, device=x.device).repeat_interleave(k)
        values = grad.reshape(-1)
        selected = torch.sparse_coo_tensor(torch.stack([columns, rows]), values, (features, n), check_invariants=False)
        grad_w_enc = torch.sparse.mm(selected, x - b_dec).T
        per_feature = torch.zeros(features, dtype=grad.dtype, device=grad.device).index_add_(0, columns, values)
        return None, None, grad_w_enc, per_feature, -(w_enc @ per_feature), None


def sae_step(sae: SAE, optimizer: torch.optim.Optimizer, x: Tensor, since_fired: Tensor, *, aux_k: int,
             aux_coef: float, aux_dead_tokens: int) -> dict[str, float]:
    """One Adam step of a TopK `sae` on activations `x` `[n, d_in]`; updates `since_fired` in place.

    Returns the batch's `fve`, `l0`, `aux_loss` and `dead` (features counted dead for AuxK).

    Example:
        >>> sae = SAE.initialized(8, 32, 2, generator=torch.Generator().manual_seed(0))
        >>> optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
        >>> since = torch.zeros(32, dtype=torch.long)
        >>> stats = sae_step(sae, optimizer, torch.randn(64, 8), since, aux_k=4, aux_coef=1/32, aux_dead_tokens=1000)
        >>> stats["l0"] <= 2, torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))
        (True, True)
    """
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc - sae.b_dec @ sae.W_enc, x, sae.W_enc)
        indices = pre.topk(sae.k, dim=-1).indices
    values = _SelectedPre.apply(pre, x, sae.W_enc, sae.b_enc, sae.b_dec, indices).clamp(min=0)
    recon = _sparse_decode(indices, values, sae.W_dec) + sae.b_dec
    error = x - recon
    total_var = (x - x.mean(dim=0)).pow(2).sum().clamp(min=1e-12)
    mse = error.pow(2).sum() / total_var
    dead = since_fired >= aux_dead_tokens
    n_dead = int(dead.sum())
    aux = torch.zeros((), device=x.device)
    if n_dead and aux_coef > 0:
        masked = pre.masked_fill(~dead.to(pre.device), float("-inf"))
        aux_indices = masked.topk(min(aux_k, n_dead), dim=-1, sorted=False).indices
        aux_values = _SelectedPre.apply(pre, x, sae.W_enc, sae.b_enc, sae.b_dec, aux_indices)
        target = error.detach()
        aux_recon = _sparse_decode(aux_indices, aux_values, sae.W_dec)
        aux = ((target - aux_recon).pow(2).sum() / (target - target.mean(dim=0)).pow(2).sum().clamp(min=1e-12)).nan_to_num(0.0)
    loss = mse + aux_coef * aux
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        w_dec = sae.W_dec
        if w_dec.grad is not None:  # keep only the gradient that turns each unit-norm row
            w_dec.grad -= (w_dec.grad * w_dec).sum(dim=1, keepdim=True) * w_dec
        optimizer.step()
        w_dec /= w_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)
        fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[values > 0]] = True
        since_fired += x.shape[0]
        since_fired[fired.to(since_fired.device)] = 0
    return {"fve": 1 - float(mse.detach()), "l0": float((values > 0).sum(dim=1).float().mean()), "aux_loss": float(aux.detach()),
            "dead": n_dead}


def _window_order(n_windows: int, epoch: int, seed: int) -> Tensor:
    return torch.randperm(n_windows, generator=make_generator(seed + 1 + epoch))


class _Batches:
    """The training windows of each step: epoch after epoch of seeded permutations, cut into equal batches."""

    def __init__(self, windows: Tensor, per_step: int, seed: int) -> None:
        self.windows, self.per_step, self.seed = windows, per_step, seed
        self._orders: dict[int, Tensor] = {}

    def __call__(self, step: int) -> Tensor:
        n = len(self.windows)
        picks = []
        for flat in range(step * self.per_step, (step + 1) * self.per_step):
            epoch, position = divmod(flat, n)
            if epoch not in self._orders:
                self._orders = {epoch: _window_order(n, epoch, self.seed)}
            picks.append(int(self._orders[epoch][position]))
        return self.windows[picks]


def _save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(folder / CHECKPOINT_NAME, buffer.getvalue())


def _load_checkpoint(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in `folder`, checked: ours (every key, of the right kinds), of the same settings, finite."""
    path = folder / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise SAERunError(f"cannot read the checkpoint '{path}' ({type(error).__name__}); delete it to start over") from error

    def foreign(why: str) -> SAERunError:
        return SAERunError(f"the checkpoint '{path}' is not a dreamy SAE checkpoint ({why}); delete it to start over, "
                           "or train into another folder")

    if not isinstance(state, dict):
        raise foreign(f"it holds a {type(state).__name__}, not a dict")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise foreign(f"no {', '.join(repr(key) for key in missing)}")
    weights = state["sae"]
    if not isinstance(state["settings"], dict) or not isinstance(state["optimizer"], dict) or not isinstance(weights, dict):
        raise foreign("'settings', 'sae' and 'optimizer' must be dicts")
    if not all(isinstance(weights.get(name), Tensor) for name in SAE_TENSORS) or not isinstance(state["since_fired"], Tensor):
        raise foreign(f"'sae' must hold the tensors {', '.join(SAE_TENSORS)} and 'since_fired' a tensor")
    if not isinstance(state["step"], int) or not isinstance(state["scale"], (int, float)) \
            or not isinstance(state["train_seconds"], (int, float)):
        raise foreign("'step' must be an int, 'scale' and 'train_seconds' numbers")
    old = state["settings"]
    changed = [f"{key}: {old.get(key)!r} -> {settings[key]!r}" for key in settings
               if not _same_setting(key, old.get(key), settings[key])]
    if changed:
        raise SAERunError(f"resume: '{folder}' holds a run with other settings ({'; '.join(changed)}); "
                          "use the same settings or another folder")
    bad = [name for name, tensor in weights.items() if isinstance(tensor, Tensor) and tensor.is_floating_point()
           and not bool(torch.isfinite(tensor).all())]
    bad += [f"optimizer {name}" for name, tensor in _optimizer_tensors(state["optimizer"])
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if not math.isfinite(state["scale"]) or state["scale"] <= 0:
        bad.append(f"scale {state['scale']}")
    if bad:
        raise SAERunError(f"the checkpoint '{path}' (step {state['step']}) holds non-finite values ({', '.join(bad[:4])}): "
                          "training had diverged; delete it and train again with a lower --lr (lr=)")
    return state


def sae_metadata(loaded: LoadedModel, site: str, window: int) -> dict[str, Any]:
    """The SAELens `metadata` of an SAE trained here on `site`: `hook_name` (the site spec), `model_name`,
    `model_class_name` (`AutoModelForCausalLM` when the site is a plain module path, which SAELens's Hugging Face
    wrapper hooks the same way), and the context: `window` tokens after a start token that is never trained on.

    Example:
        >>> from dreamy.models import load
        >>> meta = sae_metadata(load("tiny:lm"), "model.layers.1", 16)
        >>> meta["hook_name"], meta["model_class_name"], meta["context_size"], meta["seqpos_slice"]
        ('model.layers.1', 'AutoModelForCausalLM', 17, [1, None])
    """
    plain = parse(site).terms[0].site
    meta: dict[str, Any] = {"hook_name": site, "model_name": loaded.name, "hook_head_index": None,
                            "context_size": window + 1, "prepend_bos": True, "seqpos_slice": [1, None]}
    if is_transformerlens_name(plain.path):  # TransformerLens semantics on the raw (unprocessed) weights
        meta.update(model_class_name="HookedTransformer", model_from_pretrained_kwargs={"center_writing_weights": False})
    elif not plain.input and plain.index is None:
        meta["model_class_name"] = "AutoModelForCausalLM"
    return meta


def _same_setting(key: str, old: Any, new: Any) -> bool:
    """Whether a checkpoint's setting matches this run's; a file corpus recorded before its name carried a hash
    of its text (`datasets.text_files`) matches the same path."""
    if key == "corpora" and isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return all(o == n or (isinstance(o, str) and "#" not in o and re.sub(r"#[0-9a-f]{8}", "", n) == o)
                   for o, n in zip(old, new))
    return old == new


def _optimizer_tensors(state: dict[str, Any]) -> list[tuple[str, Tensor]]:
    """The named tensors of an optimizer's `state_dict()`."""
    found = []
    for index, entry in (state.get("state") or {}).items():
        if isinstance(entry, dict):
            found += [(f"{name}[{index}]", value) for name, value in entry.items() if isinstance(value, Tensor)]
    return found


def _first_non_finite(sae: SAE, stats: dict[str, float]) -> str | None:
    """What is not finite after a step (the loss's parts, then the weights), or None."""
    for name in ("fve", "aux_loss"):
        if not math.isfinite(stats[name]):
            return f"the loss ({'1 - FVE' if name == 'fve' else 'AuxK loss'} {stats[name]})"
    finite = torch.stack([torch.isfinite(getattr(sae, name)).all() for name in SAE_TENSORS]).tolist()
    bad = [name for name, ok in zip(SAE_TENSORS, finite) if not ok]
    return f"the weights ({', '.join(bad)})" if bad else None


def non_finite_figures(figures: dict[str, Any]) -> str | None:
    """The `error` a metrics dict carries when one of its quality figures is not a finite number, or None.

    Example:
        >>> non_finite_figures({"fve": float("nan"), "l0": 3.0})
        "figures that are not finite numbers: fve nan; check the held-out text and the SAE's weights"
        >>> non_finite_figures({"fve": 0.9, "l0": 3.0}) is None
        True
    """
    bad = [f"{name} {figures[name]}" for name in FIGURES if name in figures
           and not (isinstance(figures[name], (int, float)) and math.isfinite(figures[name]))]
    if not bad:
        return None
    return f"figures that are not finite numbers: {', '.join(bad)}; check the held-out text and the SAE's weights"


def _raw_scale_sae(sae: SAE, scale: float, cfg: dict[str, Any]) -> SAE:
    """A copy of `sae` (trained on `x * scale`) that reads raw activations: biases divided by `scale`."""
    weights = sae.weights()
    raw = SAE(type(weights)(weights.architecture, W_enc=weights.W_enc, b_enc=weights.b_enc / scale,
                            W_dec=weights.W_dec, b_dec=weights.b_dec / scale, k=weights.k,
                            apply_b_dec_to_input=True, cfg=cfg))
    return raw.requires_grad_(False).eval()


def train_sae(
    loaded: LoadedModel,
    site: str,
    corpora: Sequence[str | TextCorpus],
    config: SAETrainConfig | None = None,
    *,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a TopK SAE on activations of `site` as `config` says (`SAETrainConfig`; keywords override its
    fields); see the module docstring.

    `callback(step, stats)` runs after every step (1-based, after any checkpoint); an exception it raises
    stops training (the last checkpoint stays for `resume`).

    Example:
        >>> from dreamy.models import load
        >>> train_sae(load("tiny:lm"), "model.layers.0", ["fortunes"], features=8, k=9, tokens=10, out_dir="unused")
        Traceback (most recent call last):
        ...
        dreamy.core.config.ConfigError: SAETrainConfig.k 9 must be <= features 8
    """
    config = SAETrainConfig.build(config, **overrides)
    if loaded.tokenizer is None:
        raise ValueError(f"model '{loaded.name}' has no tokenizer; an SAE trains on a language model's activations")
    folder = check_out_dir(out_dir, resume)
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and config.window + 1 > context:
        raise SAERunError(f"windows of {config.window} tokens (and the start token) are longer than the {context} "
                          f"positions '{loaded.name}' was made for; lower --window (window=)")
    probe = site_probe(loaded, site)
    with frozen(loaded.model):  # eval mode (no dropout), no parameter gradients; restored afterwards
        check_memory(check_site(loaded, site, probe), config, loaded.device)
        heldout_windows = max(1, math.ceil(config.heldout_tokens / config.window))
        split = corpus_windows(loaded.tokenizer, corpora, window=config.window, heldout_windows=heldout_windows,
                               seed=config.seed, max_words=config.max_words)
        with folder_lock(folder):  # one run per folder
            check_out_dir(folder, resume)  # again under the lock: a run may have finished in it meanwhile
            remove_stale_temps(folder, (CHECKPOINT_NAME, CFG_NAME, WEIGHTS_NAME, METRICS_NAME))
            return _train(loaded, site, split, config, folder, resume, progress, callback, probe)


def _train(loaded: LoadedModel, site: str, split: WindowSplit, config: SAETrainConfig, folder: Path,
           resume: bool, progress: bool, callback: Callable[[int, dict[str, float]], None] | None, probe: Any) -> TrainResult:
    """`train_sae` once everything is checked and the folder is locked."""
    features, k, tokens, batch_tokens = config.features, config.k, config.tokens, config.batch_tokens
    lm_batch_tokens, window, seed, checkpoint_every = config.lm_batch_tokens, config.window, config.seed, config.checkpoint_every
    aux_k, aux_coef, aux_dead_tokens = config.aux_k, config.aux_coef, config.aux_dead_tokens
    max_words, lr = config.max_words, config.lr_or_default
    per_step = max(1, batch_tokens // window)
    step_tokens = per_step * window
    n_steps = math.ceil(tokens / step_tokens)
    group = max(1, lm_batch_tokens // step_tokens)  # steps whose windows share one LM forward
    heldout_windows = len(split.heldout)
    batches = _Batches(split.train, per_step, seed)
    settings = {"model": loaded.name, "site": site, "corpora": list(split.corpora), "features": features, "k": k,
                "tokens": tokens, "batch_tokens": step_tokens, "lm_batch_steps": group, "lr": lr, "window": window, "seed": seed,
                "aux_k": aux_k, "aux_coef": aux_coef, "aux_dead_tokens": aux_dead_tokens,
                "heldout_tokens": heldout_windows * window, "max_words": max_words}
    state = _load_checkpoint(folder, settings) if resume else None
    device = loaded.device
    grouped: dict[int, tuple[Tensor, ...]] = {}

    def activations(step: int) -> Tensor:
        """Step `step`'s activations; the LM runs once per group of steps (aligned, so resume sees the same numbers)."""
        first = step - step % group
        if first not in grouped:
            grouped.clear()
            rows = torch.cat([batches(s) for s in range(first, min(n_steps, first + group))])
            grouped[first] = site_activations(loaded, site, rows, probe=probe).split(step_tokens)
        return grouped[first][step - first]

    if state is None:
        x0 = activations(0)
        mean = x0.mean(dim=0)
        scale = float(math.sqrt(x0.shape[1] / float((x0 - mean).pow(2).sum(dim=1).mean().clamp(min=1e-12))))
        sae = SAE.initialized(x0.shape[1], features, k, generator=make_generator(seed)).to(device)
        with torch.no_grad():
            sae.b_dec.copy_(mean * scale)
        since_fired = torch.zeros(features, dtype=torch.long)
        step, train_seconds = 0, 0.0
    else:
        scale = float(state["scale"])
        try:
            weights = dict(state["sae"])
            sae = SAE.initialized(weights["W_enc"].shape[0], features, k, generator=make_generator(seed)).to(device)
            sae.load_state_dict(weights)
            since_fired = state["since_fired"].clone().long()
            if since_fired.shape != (features,):
                raise ValueError(f"since_fired has shape {tuple(since_fired.shape)}, expected ({features},)")
            step, train_seconds = int(state["step"]), float(state["train_seconds"])
            if not 0 <= step <= n_steps:
                raise ValueError(f"step {step} is outside 0..{n_steps}")
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as error:
            raise SAERunError(f"the checkpoint '{folder / CHECKPOINT_NAME}' does not fit this run "
                              f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); delete it to start over") from error
    sae.train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=6.25e-10, fused=True)
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as error:
            raise SAERunError(f"the checkpoint '{folder / CHECKPOINT_NAME}' holds an optimizer state that does not fit "
                              f"this SAE ({type(error).__name__}: {str(error).splitlines()[0][:200]}); delete it to "
                              "start over") from error
    aux_k = aux_k or max(1, sae.d_in // 2)
    cfg = {"metadata": sae_metadata(loaded, site, window), "training": settings}
    saved_step = step if state is not None else None

    def checkpoint() -> None:
        _save_checkpoint(folder, {"settings": settings, "step": step, "scale": scale, "train_seconds": train_seconds,
                                  "sae": {name: t.detach().cpu() for name, t in sae.state_dict().items()},
                                  "optimizer": optimizer.state_dict(), "since_fired": since_fired})

    bar = progress_bar(n_steps * step_tokens, f"sae {site}", enabled=progress)
    bar.unit, bar.unit_scale = "tok", True
    bar.update(step * step_tokens)
    try:
        while step < n_steps:
            started = time.perf_counter()
            x = activations(step) * scale
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr * lr_factor(step, n_steps)
            stats = sae_step(sae, optimizer, x, since_fired, aux_k=aux_k, aux_coef=aux_coef, aux_dead_tokens=aux_dead_tokens)
            broken = _first_non_finite(sae, stats)
            if broken is not None:
                kept = (f"the last finite checkpoint (step {saved_step}) is kept in {folder / CHECKPOINT_NAME}"
                        if saved_step is not None else "no checkpoint had been written")
                raise SAEDiverged(f"training diverged at step {step + 1} of {n_steps}: {broken} is not finite, with "
                                  f"lr {lr:g}; no SAE was saved and {kept}; train again with a lower --lr (lr=)")
            train_seconds += time.perf_counter() - started
            step += 1
            stats["dead_fraction"] = dead_fraction(since_fired, step * step_tokens)
            bar.set_postfix(FVE=f"{stats['fve']:.3f}", L0=f"{stats['l0']:.1f}", dead=f"{stats['dead_fraction']:.1%}", refresh=False)
            bar.update(step_tokens)
            if step % checkpoint_every == 0 or step == n_steps:
                checkpoint()
                saved_step = step
            if callback is not None:
                callback(step, stats)
    finally:
        bar.close()
    trained = _raw_scale_sae(sae, scale, cfg)
    save(trained, folder)
    figures = evaluate(loaded, site, trained, split.heldout)
    train_tokens = n_steps * step_tokens
    figures.update(dead_fraction=dead_fraction(since_fired, train_tokens), dead_window_tokens=min(DEAD_WINDOW_TOKENS, train_tokens),
                   train_tokens=train_tokens, train_steps=n_steps, train_seconds=train_seconds,
                   tokens_per_second=train_tokens / train_seconds if train_seconds > 0 else float("nan"),
                   site=site, model=loaded.name, features=features, k=k)
    error = non_finite_figures(figures)
    if error is not None:
        figures["error"] = error
    write_json_atomic(folder / METRICS_NAME, figures)
    return TrainResult(trained, figures, folder)
