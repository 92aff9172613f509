"""The render loop: gradient ascent on images for many targets at once.

All rows of all targets go through ONE batched forward and backward per step: row i is scored by
its own target (`Probe(..., row_targets)`), transforms are drawn per row, regularizers are per row,
and the diversity term only compares rows that dream the same target. Every random draw comes from
one `torch.Generator` seeded with `seed`, so the same seed gives the same images on CPU.

Example:
    >>> from dreamy.models import load
    >>> result = dream(load("tiny:cnn"), ["conv3:1", "head:2"], steps=5, progress=False)
    >>> result.images.shape, len(result.activation)
    (torch.Size([2, 3, 32, 32]), 2)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from dreamy.core import stepping
from dreamy.core.frozen import frozen
from dreamy.core.stepping import Plateau, make_generator, should_snapshot
from dreamy.models import LoadedModel, Preprocess
from dreamy.targets import Probe, Target, parse
from dreamy.vision import regularizers as regs
from dreamy.vision.config import DreamConfig
from dreamy.vision.param import ImageParametrization, make_param
from dreamy.vision.transforms import Transforms

log = logging.getLogger(__name__)

Penalty = Callable[[Tensor], Tensor]


@dataclass
class DreamResult:
    """Dreamed images and how strongly they drive their targets.

    `images[i]` dreams `targets[row_targets[i]]`; `activation[i]` is measured on the un-transformed
    final image (just the model's preprocessing: the number to compare with dataset maxima);
    `history[s, i]` is the objective under transforms at step s; `snapshots[step]` holds the images
    after that step.
    """

    images: Tensor
    targets: list[str]
    row_targets: list[int]
    activation: Tensor
    history: Tensor
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def rows_of(self, target: int) -> list[int]:
        """Row indices that dream target number `target`.

        Example:
            >>> from dreamy.models import load
            >>> dream(load("tiny:cnn"), ["head:1", "head:2"], steps=1, n_per_target=2, progress=False).rows_of(1)
            [2, 3]
        """
        return [i for i, t in enumerate(self.row_targets) if t == target]

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record per target (in target order): its first image's record (`to_record`) with
        every image's `activations` and the best as `activation` (None when one is not finite).

        Example:
            >>> from dreamy.models import load
            >>> records = dream(load("tiny:cnn"), ["head:1", "head:2"], steps=1, n_per_target=2, progress=False).to_records()
            >>> [(r["target"], len(r["activations"])) for r in records]
            [('head:1', 2), ('head:2', 2)]
        """
        records = []
        for t in range(len(self.targets)):
            rows = self.rows_of(t)
            activations = [float(self.activation[r]) for r in rows]
            finite = all(math.isfinite(a) for a in activations)
            records.append({**self.to_record(rows[0]), "activations": activations,
                            "activation": max(activations) if finite else None})
        return records

    def to_record(self, i: int) -> dict[str, Any]:
        """A JSON-able record of row i (no pixels).

        Example:
            >>> from dreamy.models import load
            >>> r = dream(load("tiny:cnn"), ["head:1"], steps=2, progress=False)
            >>> r.to_record(0)["target"], r.to_record(0)["kind"]
            ('head:1', 'image')
        """
        if not 0 <= i < len(self.row_targets):
            raise IndexError(f"row {i} out of range; this result has rows 0..{len(self.row_targets) - 1}")
        return {
            "kind": "image",
            "target": self.targets[self.row_targets[i]],
            "row": i,
            "activation": float(self.activation[i]),
            "final_objective": float(self.history[-1, i]) if len(self.history) else None,
            "history": [float(v) for v in self.history[:, i]],
            "snapshot_steps": sorted(self.snapshots),
            "settings": self.settings,
            "seed": self.seed,
        }


def _model_and_preprocess(loaded: LoadedModel | nn.Module,
                          preprocess: Preprocess | None) -> tuple[nn.Module, Preprocess | None, torch.device]:
    if isinstance(loaded, LoadedModel):
        if loaded.kind != "vision":
            raise ValueError(f"dream() needs a vision model; '{loaded.name}' is a {loaded.kind} model "
                             "(use dreamy.language for prompts)")
        _check_float32(loaded.model)
        return loaded.model, preprocess or loaded.preprocess, loaded.device
    if not isinstance(loaded, nn.Module):
        raise TypeError(f"dream() takes a LoadedModel or a torch.nn.Module, got {type(loaded).__name__}")
    _check_float32(loaded)
    tensors = list(loaded.parameters()) or list(loaded.buffers())
    return loaded, preprocess, tensors[0].device if tensors else torch.device("cpu")


def _check_float32(model: nn.Module) -> None:
    """Refuse a model whose floating-point weights are not float32 (the images are float32, and a half-precision
    model on the CPU fails deep inside its first layer): one line that says how to convert it."""
    other = next((t.dtype for t in list(model.parameters()) + list(model.buffers())
                  if t.is_floating_point() and t.dtype != torch.float32), None)
    if other is not None:
        name = str(other).removeprefix("torch.")
        raise ValueError(f"dream() needs a float32 model, got {name} weights: convert it with model.float() "
                         "(precision='bf16' runs a float32 model in bfloat16 on CUDA)")


def _penalties(regularizers: Mapping[str | Penalty, float], param: ImageParametrization) -> list[tuple[str, Penalty, float]]:
    """Resolve `{"tv": 0.1, "pull": 1.0, callable: w}` (names checked by `DreamConfig`) into (name, function,
    weight) triples."""
    resolved = []
    for key, weight in regularizers.items():
        if key == "pull":
            start = getattr(param, "start", None)
            if start is None:
                raise ValueError("the 'pull' regularizer pulls toward the starting images of an ImageParam; "
                                 f"this dream uses {type(param).__name__}. Pass param=ImageParam(images)")
            resolved.append(("pull", regs.pull_to(start), float(weight)))
        elif isinstance(key, str):
            resolved.append((key, regs.REGULARIZERS[key], float(weight)))
        else:
            resolved.append((getattr(key, "__name__", type(key).__name__), key, float(weight)))
    return resolved


def _diversity_sites(targets: list[Target], diversity_site: str | None) -> tuple[list[str], list[Target]]:
    """The site whose activations each target's diversity term compares, and extra targets to hook."""
    if diversity_site is not None:
        extra = parse(diversity_site)
        if len(extra.terms) != 1 or extra.terms[0].unit is not None:
            raise ValueError(f"diversity_site must be a bare site such as 'layer3', got '{diversity_site}'")
        return [str(extra.sites[0])] * len(targets), [extra]
    return [str(t.sites[0]) for t in targets], []


def _diversity_loss(activations: dict[str, Tensor], rows: Tensor, row_sites: list[str]) -> Tensor:
    """Sum over rows of the Gram-similarity to other rows of the same target, at that target's site."""
    total = torch.zeros((), device=rows.device)
    for site in dict.fromkeys(row_sites):
        mask = torch.tensor([row_sites[int(t)] == site for t in rows], device=rows.device)
        if int(mask.sum()) > 1:
            total = total + regs.diversity(activations[site][mask], rows[mask]).sum()
    return total


def patch_tokens(model: nn.Module) -> int | None:
    """How many patch tokens a vision transformer's `[B, tokens, D]` sites hold (None for other models).

    Token sites with more tokens hold prefix tokens (the class token, registers) first; the probe's
    default reduction averages the patch tokens only, `/cls` reads the class token, `/tokens=i` patch
    token i. Knows timm models (`patch_embed.num_patches`) and torchvision's ViTs.

    Example:
        >>> from dreamy.models import load
        >>> patch_tokens(load("tiny:cnn").model) is None
        True
    """
    count = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if isinstance(count, int):
        return count
    if hasattr(model, "class_token") and isinstance(getattr(model, "patch_size", None), int) \
            and isinstance(getattr(model, "image_size", None), int):  # torchvision VisionTransformer
        return (model.image_size // model.patch_size) ** 2
    return None


def _channels_last(images: Tensor) -> Tensor:
    """NHWC memory layout for the model's input: convolutions skip layout conversions and, on CPU, big
    batches stay as cheap per image as small ones (the values are unchanged)."""
    return images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images


def _autocast(precision: str, device: torch.device) -> Any:
    """The context each step's forward runs in: a bfloat16 autocast for `precision="bf16"` on CUDA, else none
    (`ValueError` for bf16 anywhere else: CPU autocast is slower than fp32 there and untested)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ValueError(f"precision='bf16' autocasts on CUDA only; the model is on {device}: use precision='fp32' "
                         "(the default) or a CUDA device")
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _with_gradients(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run `function` with autograd on, even when called under `torch.no_grad()` or `torch.inference_mode()`."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return function(*args, **kwargs)
    return wrapper


@_with_gradients
def dream(
    loaded: LoadedModel | nn.Module,
    targets: Sequence[str | Target] | str | Target,
    config: DreamConfig | None = None,
    *,
    progress: bool = True,
    preprocess: Preprocess | None = None,
    **overrides: Any,
) -> DreamResult:
    """Dream images that maximize each target (see the module docstring), as `config` says (`DreamConfig`;
    keywords override its fields, e.g. `steps=64`: a name it lacks is a `ConfigError` before any work).

    The model is left as it was found: it runs in eval mode (no BatchNorm statistics updated, no dropout) with
    no parameter requiring grad, and its modes and `requires_grad` flags are restored afterwards
    (`core.frozen`). `preprocess` replaces the loaded model's (needed for a bare `nn.Module`). Ctrl-C stops the loop and
    returns what was dreamed so far (`settings["interrupted"]`). Works under `torch.no_grad()` and
    `torch.inference_mode()` (gradients are switched on inside).

    Example:
        >>> from dreamy.models import load
        >>> dream(load("tiny:cnn"), "head:3", steps=2, lr=0.1, progress=False).settings["lr"]
        0.1
    """
    config = DreamConfig.build(config, **overrides)
    param, steps, lr, n_per_target, seed = config.param, config.steps, config.lr, config.n_per_target, config.seed
    transforms, diversity, diversity_site = config.transforms, config.diversity, config.diversity_site
    model, preprocess, device = _model_and_preprocess(loaded, preprocess)
    autocast = _autocast(config.precision, device)
    with frozen(model):  # eval mode, no parameter gradients; mode and flags restored afterwards
        if isinstance(targets, (str, Target)):
            targets = [targets]
        parsed = [parse(t) for t in targets]
        if not parsed:
            raise ValueError("dream() needs at least one target")
        size = tuple(config.image_size or (preprocess.size if preprocess else (224, 224)))
        n = len(parsed) * n_per_target
        gen = make_generator(seed)
        param_name = param if isinstance(param, str) else type(param).__name__
        if isinstance(param, str):
            param = make_param(param, n, size, generator=gen, device=device)
        first = param.images()
        if first.shape[0] != n:
            raise ValueError(f"the parametrization has {first.shape[0]} images but {len(parsed)} target(s) x "
                             f"{n_per_target} per target need {n}")
        size = tuple(first.shape[-2:])
        transforms = Transforms.standard(size) if transforms is None else transforms
        penalties = _penalties(config.regularizers, param)
        row_sites, extra = _diversity_sites(parsed, diversity_site) if diversity > 0 else ([], [])
        probe = Probe(model, parsed + extra, patch_tokens=patch_tokens(model))
        rows = torch.arange(len(parsed), device=device).repeat_interleave(n_per_target)
        opt = (config.optimizer or (lambda ps: torch.optim.Adam(ps, lr=lr)))(param.parameters())
        plateau = Plateau(config.plateau, config.plateau_tol) if config.plateau else None
        normalize = preprocess.normalize if preprocess else (lambda x: x)
        history: list[Tensor] = []
        snapshots: dict[int, Tensor] = {}
        interrupted = False
        with stepping.progress(steps, f"dreaming {len(parsed)} target(s)", enabled=progress) as bar:
            try:
                for step in range(1, steps + 1):
                    images = param.images()
                    batch = _channels_last(normalize(transforms(images, gen)))
                    with autocast:
                        result = probe(batch, row_targets=rows, keep_activations=diversity > 0)
                    objective = result.row_scores.float()
                    loss = -objective.sum()
                    for _, penalty, weight in penalties:
                        loss = loss + weight * penalty(images).sum()
                    if diversity > 0:
                        with autocast:
                            loss = loss + diversity * _diversity_loss(result.activations, rows, row_sites)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if hasattr(param, "after_step"):
                        param.after_step()
                    history.append(objective.detach().cpu())
                    if should_snapshot(step, config.snapshot_steps):
                        with torch.no_grad():
                            snapshots[step] = param.images().cpu()
                    bar.update(1)
                    bar.set_postfix(objective=f"{objective.mean().item():.3g}")
                    if plateau is not None and plateau.update(objective.mean().item()):
                        log.info("objective plateaued at step %d; stopping early", step)
                        break
            except KeyboardInterrupt:
                interrupted = True
                log.warning("interrupted after %d step(s); returning the images dreamed so far", len(history))
        with torch.no_grad():
            final = param.images()
            activation = probe(_channels_last(normalize(final)), row_targets=rows).row_scores.cpu()
        settings = {"param": param_name, "steps": len(history), "max_steps": steps, "lr": lr, "image_size": list(size),
                    "n_per_target": n_per_target, "transforms": repr(transforms), "diversity": diversity,
                    "diversity_site": diversity_site, "regularizers": {name: w for name, _, w in penalties},
                    "optimizer": type(opt).__name__, "interrupted": interrupted, "precision": config.precision}
        history_tensor = torch.stack(history) if history else torch.zeros(0, n)
        return DreamResult(final.detach().cpu(), [str(t) for t in parsed], rows.tolist(), activation,
                           history_tensor, snapshots, settings, seed)
