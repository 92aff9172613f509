"""The render loop: gradient ascent on images for many targets at once.

All rows of all targets go through ONE batched forward and backward per step: row i is scored by
its own target (`Probe(..., row_targets)`), transforms are drawn per row, regularizers are per row.

Example:
    >>> from dreamy.models import load
    >>> result = dream(load("tiny:cnn"), ["conv3:1", "head:2"], steps=5, progress=False)
    >>> result.images.shape, len(result.activation)
    (torch.Size([2, 3, 32, 32]), 2)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from dreamy import loop
from dreamy.loop import Plateau, make_generator, should_snapshot
from dreamy.models import LoadedModel, Preprocess
from dreamy.targets import Probe, Target, parse
from dreamy.vision import regularizers as regs
from dreamy.vision.param import ImageParametrization, make_param
from dreamy.vision.transforms import Transforms

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]


@dataclass
class DreamResult:
    """Dreamed images and how strongly they drive their targets.

    `activation[i]` is measured on the un-transformed final image `images[i]` (the number to compare
    with dataset maxima); `history[s, i]` is the objective under transforms at step s.
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
        """Row indices that dream target number `target`."""
        return [i for i, t in enumerate(self.row_targets) if t == target]

    def to_record(self, i: int) -> dict[str, Any]:
        """A JSON-able record of row i (no pixels).

        Example:
            >>> from dreamy.models import load
            >>> r = dream(load("tiny:cnn"), ["head:1"], steps=2, progress=False)
            >>> sorted(r.to_record(0))[:3]
            ['activation', 'history', 'method']
        """
        return {
            "target": self.targets[self.row_targets[i]],
            "row": i,
            "method": "image",
            "activation": float(self.activation[i]),
            "history": [float(v) for v in self.history[:, i]],
            "settings": self.settings,
            "seed": self.seed,
        }


def _model_and_preprocess(loaded: LoadedModel | nn.Module, preprocess: Preprocess | None) -> tuple[nn.Module, Preprocess | None]:
    if isinstance(loaded, LoadedModel):
        return loaded.model, preprocess or loaded.preprocess
    return loaded, preprocess


def dream(
    loaded: LoadedModel | nn.Module,
    targets: Sequence[str | Target],
    *,
    param: str | ImageParametrization = "fourier",
    steps: int = 256,
    lr: float = 0.05,
    image_size: tuple[int, int] | None = None,
    n_per_target: int = 1,
    transforms: Transforms | None = None,
    regularizers: Mapping[str | Callable[[Tensor], Tensor], float] | None = None,
    diversity: float = 0.0,
    seed: int = 0,
    optimizer: OptimizerFactory | None = None,
    snapshot_steps: Sequence[int] = (),
    plateau: Plateau | None = None,
    progress: bool = True,
    preprocess: Preprocess | None = None,
) -> DreamResult:
    """Dream images that maximize each target (see the module docstring).

    - `param`: `"pixel"`, `"fourier"`, `"maco"`, or a parametrization object of `n_targets *
      n_per_target` rows (e.g. `ImageParam(photos)`, `GeneratorParam(...)`); rows are target-major.
    - `transforms`: default `Transforms.standard(image_size)`; `Transforms()` for none.
    - `regularizers`: `{"tv": 0.1, "l2": 0.05, callable: weight}`; names from `regularizers.REGULARIZERS`.
    - `diversity`: weight of the Gram-matrix diversity term among rows of the same target.
    - `optimizer`: a factory `params -> torch.optim.Optimizer` (default Adam at `lr`).
    - `plateau`: stop early when the mean objective stops improving.
    """
    model, preprocess = _model_and_preprocess(loaded, preprocess)
    if isinstance(targets, (str, Target)):
        targets = [targets]
    parsed = [parse(t) for t in targets]
    if not parsed:
        raise ValueError("dream() needs at least one target")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if n_per_target < 1:
        raise ValueError(f"n_per_target must be >= 1, got {n_per_target}")
    device = next(model.parameters()).device
    size = tuple(image_size or (preprocess.size if preprocess else (224, 224)))
    n = len(parsed) * n_per_target
    gen = make_generator(seed)
    if isinstance(param, str):
        param_name = param
        param = make_param(param, n, size, generator=gen, device=device)
    else:
        param_name = type(param).__name__
    first = param.images()
    if first.shape[0] != n:
        raise ValueError(f"the parametrization has {first.shape[0]} images but {len(parsed)} targets x {n_per_target} need {n}")
    transforms = Transforms.standard(size) if transforms is None else transforms
    penalties: list[tuple[Callable[[Tensor], Tensor], float]] = []
    for key, weight in (regularizers or {}).items():
        if isinstance(key, str):
            if key not in regs.REGULARIZERS:
                raise ValueError(f"unknown regularizer '{key}'; use one of {', '.join(regs.REGULARIZERS)} or a callable")
            key = regs.REGULARIZERS[key]
        penalties.append((key, float(weight)))
    probe = Probe(model, parsed)
    rows = torch.arange(len(parsed), device=device).repeat_interleave(n_per_target)
    opt = (optimizer or (lambda ps: torch.optim.Adam(ps, lr=lr)))(param.parameters())
    normalize = preprocess.normalize if preprocess else (lambda x: x)
    history: list[Tensor] = []
    snapshots: dict[int, Tensor] = {}
    with loop.progress(steps, f"dreaming {len(parsed)} target(s)", enabled=progress) as pbar:
        for step in range(1, steps + 1):
            images = param.images()
            result = probe(normalize(transforms(images, gen)), row_targets=rows, keep_activations=diversity > 0)
            objective = result.row_scores
            loss = -objective.sum()
            for penalty, weight in penalties:
                loss = loss + weight * penalty(images).sum()
            if diversity > 0:
                site = str(parsed[0].sites[0])
                loss = loss + diversity * regs.diversity(result.activations[site], rows).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(param, "after_step"):
                param.after_step()
            history.append(objective.detach().cpu())
            if should_snapshot(step, snapshot_steps):
                snapshots[step] = images.detach().cpu()
            pbar.update(1)
            pbar.set_postfix(objective=f"{objective.mean().item():.3g}")
            if plateau is not None and plateau.update(objective.mean().item()):
                log.info("objective plateaued at step %d; stopping early", step)
                break
    with torch.no_grad():
        final = param.images()
        activation = probe(normalize(final), row_targets=rows).row_scores.cpu()
    settings = {"param": param_name, "steps": len(history), "lr": lr, "image_size": list(size),
                "n_per_target": n_per_target, "transforms": repr(transforms), "diversity": diversity,
                "regularizers": {getattr(k, "__name__", str(k)): w for k, w in penalties}}
    return DreamResult(final.detach().cpu(), [str(t) for t in parsed], rows.tolist(), activation,
                       torch.stack(history), snapshots, settings, seed)
