"""Learn a direction from two sets of activations: a logistic-regression CAV, the difference of means and the
first principal component of paired differences; held-out accuracy of each and the cosines between them.

`learn_direction(positive, negative, config)` works on activations (`[N, D]`, `[M, D]`); `direction_from_examples
(loaded, site, positive, negative, config)` computes them from example sets first (texts or images, see
`dreamy.directions.examples`) and records where they came from. Every direction is a unit vector oriented so
that positive examples project higher; an example is called positive when its projection is above the
method's threshold (the logistic regression's own decision boundary; the midpoint of the two class means of the
training projections for the others).

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> planted = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    >>> positive = torch.randn(200, 16, generator=gen) + 3 * planted
    >>> negative = torch.randn(200, 16, generator=gen)
    >>> result = learn_direction(positive, negative)
    >>> float(result.directions["mean_diff"] @ planted) > 0.98, result.heldout_accuracy["logistic"]
    (True, 0.87)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dreamy.core.config import json_value
from dreamy.core.stepping import make_generator
from dreamy.directions.config import DirectionConfig
from dreamy.directions.examples import Examples, bare_site, default_reduce, site_features
from dreamy.directions.files import write_direction
from dreamy.models import LoadedModel


@dataclass
class DirectionResult:
    """Directions learned from one positive and one negative set (see the module docstring).

    `directions[method]` is a unit vector `[D]`; `thresholds[method]` the projection above which an example is
    called positive; `heldout_accuracy[method]` the share of held-out examples (None without held-out examples)
    on the right side, `train_accuracy[method]` the same on the fitted ones; `cosines["a/b"]` the cosine between
    methods a and b. `site`, `model`, `reduce` and `sources` say where the activations came from (None when
    learned from activations directly).
    """

    directions: dict[str, Tensor]
    thresholds: dict[str, float]
    heldout_accuracy: dict[str, float | None]
    train_accuracy: dict[str, float]
    cosines: dict[str, float]
    counts: dict[str, int]
    paired: bool
    settings: dict[str, Any]
    site: str | None = None
    model: str | None = None
    reduce: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """The methods learned, in the config's order."""
        return list(self.directions)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record per method: accuracies, threshold, cosines to the others and the provenance.

        Example:
            >>> result = learn_direction(torch.eye(4)[:2].repeat(4, 1) + 1, torch.zeros(8, 4), methods=("mean_diff",))
            >>> record = result.to_records()[0]
            >>> record["method"], record["train_accuracy"]
            ('mean_diff', 1.0)
        """
        records = []
        for method in self.methods:
            others = {}
            for pair, value in self.cosines.items():
                a, b = pair.split("/")
                if method in (a, b):
                    others[b if method == a else a] = value
            records.append({"kind": "direction", "method": method, "site": self.site, "model": self.model,
                            "reduce": self.reduce, "heldout_accuracy": self.heldout_accuracy[method],
                            "train_accuracy": self.train_accuracy[method], "threshold": self.thresholds[method],
                            "cosines": others, "counts": dict(self.counts), "paired": self.paired,
                            "sources": dict(self.sources), "settings": json_value(self.settings)})
        return records

    def spec(self, path: "str | Path", method: str | None = None) -> str:
        """The target spec that reads direction `method` (default: the first learned) from the file at `path`.

        Example:
            >>> result = learn_direction(torch.ones(4, 3), torch.zeros(4, 3), methods=("mean_diff",))
            >>> result.site = "model.layers.3"
            >>> result.spec("sentiment.pt")
            'model.layers.3:dir=sentiment.pt#mean_diff'
        """
        from dreamy.targets import Direction

        method = method or self.methods[0]
        if method not in self.directions:
            raise ValueError(f"no {method!r} direction was learned; learned: {', '.join(self.methods)}")
        if self.site is None:
            raise ValueError("this direction was learned from activations without a site; set result.site first")
        return f"{self.site}:{Direction(str(path), method)}"

    def sidecar(self, path: "str | Path") -> dict[str, Any]:
        """What the sidecar JSON of the direction file `path` says: model, site, reduction, sources, counts, each
        method's threshold and accuracies, the cosines, the spec of each direction and the settings.

        Example:
            >>> result = learn_direction(torch.ones(4, 3), torch.zeros(4, 3), methods=("mean_diff",), heldout=0.0)
            >>> result.sidecar("d.pt")["methods"]["mean_diff"]["train_accuracy"]
            1.0
        """
        return {"model": self.model, "site": self.site, "reduce": self.reduce, "sources": dict(self.sources),
                "counts": dict(self.counts), "paired": self.paired,
                "methods": {m: {"threshold": self.thresholds[m], "heldout_accuracy": self.heldout_accuracy[m],
                                "train_accuracy": self.train_accuracy[m]} for m in self.methods},
                "cosines": dict(self.cosines),
                "specs": {m: self.spec(path, m) for m in self.methods} if self.site else {},
                "settings": json_value(self.settings)}

    def save(self, path: "str | Path") -> tuple[Path, Path]:
        """Write the directions to `path` (.pt or .safetensors, keyed by method) and the sidecar JSON beside it
        (`path` + `.json`); returns both paths.

        Example:
            >>> import tempfile
            >>> result = learn_direction(torch.ones(4, 3), torch.zeros(4, 3), methods=("mean_diff",))
            >>> [p.name for p in result.save(Path(tempfile.mkdtemp(), "concept.safetensors"))]
            ['concept.safetensors', 'concept.safetensors.json']
        """
        path = Path(path).expanduser()
        return write_direction(self.directions, self.sidecar(path), path)


def split_indices(count: int, share: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A seeded split of `range(count)` into (fitted, held out): `round(count * share)` held out, at least one
    when `share > 0` and at least one always fitted.

    Example:
        >>> fit, held = split_indices(8, 0.25, torch.Generator().manual_seed(0))
        >>> len(fit), len(held), sorted(fit.tolist() + held.tolist()) == list(range(8))
        (6, 2, True)
    """
    order = torch.randperm(count, generator=generator)
    held = 0 if share <= 0 or count < 2 else min(count - 1, max(1, round(count * share)))
    return order[held:].sort().values, order[:held].sort().values


def fit_logistic(x: Tensor, y: Tensor, l2: float = 1e-2, steps: int = 50) -> tuple[Tensor, float]:
    """An L2-regularized logistic regression of labels `y` (0/1, `[N]`) on `x` (`[N, D]`), fitted by Newton's method
    (at most `steps` iterations; the loss is the mean cross-entropy plus `l2 / 2 * |w|^2`, the bias unpenalized).

    The features are centered and divided by their overall scale (one number, the root mean square of the centered
    values, so the weights keep their direction); returns the unit weight vector `u` and the threshold `t` such that
    `u @ x > t` is the fitted decision.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [1.1, 0.0]])
        >>> u, t = fit_logistic(x, torch.tensor([0, 0, 1, 1]))
        >>> [round(v, 3) for v in u.tolist()], round(t, 2)
        ([1.0, 0.0], 0.55)
    """
    # numpy: a Newton step is a few small matrix products, which torch's thread pool makes slow on a busy CPU
    x64 = x.detach().double().cpu().numpy()
    y64 = y.detach().double().cpu().numpy().reshape(-1)
    n, d = x64.shape
    mean = x64.mean(axis=0)
    scale = max(float(np.sqrt(((x64 - mean) ** 2).mean())), 1e-12)
    z = np.concatenate([(x64 - mean) / scale, np.ones((n, 1))], axis=1)  # last column: the bias
    ridge = np.full(d + 1, max(l2, 1e-10))
    ridge[-1] = 1e-10
    theta = np.zeros(d + 1)
    scaled = z / ridge  # for the Woodbury form
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ theta, -60, 60)))
        gradient = z.T @ (p - y64) / n + ridge * theta
        weights = np.maximum(p * (1 - p), 1e-12) / n
        if d + 1 <= n:
            step = np.linalg.solve((z * weights[:, None]).T @ z + np.diag(ridge), gradient)
        else:  # fewer examples than features: the same Newton step through the n x n system (Woodbury)
            inner = np.diag(1.0 / weights) + scaled @ z.T
            step = gradient / ridge - scaled.T @ np.linalg.solve(inner, scaled @ gradient)
        theta = theta - step
        if float(np.abs(step).max()) < 1e-9 * max(1.0, float(np.abs(theta).max())):
            break
    w, b = theta[:-1], float(theta[-1])
    norm = float(np.linalg.norm(w))
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError("the logistic regression found no direction (the two sets give the same activations); "
                         "check that the example sets differ")
    unit = w / norm
    threshold = float(unit @ mean) - b * scale / norm
    return torch.from_numpy(unit).float(), threshold


def mean_difference(positive: Tensor, negative: Tensor) -> Tensor:
    """The unit vector along `mean(positive) - mean(negative)`.

    Example:
        >>> mean_difference(torch.tensor([[2.0, 1.0]]), torch.tensor([[0.0, 1.0]])).tolist()
        [1.0, 0.0]
    """
    difference = positive.double().mean(dim=0) - negative.double().mean(dim=0)
    norm = float(difference.norm())
    if norm == 0.0:
        raise ValueError("the two example sets have the same mean activation; check that they differ")
    return (difference / norm).float()


def paired_pca(positive: Tensor, negative: Tensor) -> Tensor:
    """The first principal component of the paired differences `positive[i] - negative[i]`, oriented so that the
    differences project positive on average. The differences are not centered (centering would remove the mean
    difference, the concept itself): this is the PCA of the differences taken in random order, as in RepE.

    Example:
        >>> diffs = torch.tensor([[3.0, 0.1], [2.0, -0.1], [4.0, 0.0]])
        >>> [round(v, 2) for v in paired_pca(diffs, torch.zeros(3, 2)).tolist()]
        [1.0, 0.0]
    """
    if positive.shape != negative.shape:
        raise ValueError(f"pca needs pairs: {positive.shape[0]} positive and {negative.shape[0]} negative examples; "
                         "give sets of equal size (line i of each is pair i) or leave 'pca' out of methods")
    differences = (positive - negative).double()
    _, _, vh = torch.linalg.svd(differences, full_matrices=False)
    first = vh[0]
    if float((differences @ first).mean()) < 0:
        first = -first
    return first.float()


def _accuracy(direction: Tensor, threshold: float, positive: Tensor, negative: Tensor) -> float | None:
    if positive.shape[0] + negative.shape[0] == 0:
        return None
    right = int((positive @ direction > threshold).sum()) + int((negative @ direction <= threshold).sum())
    return right / (positive.shape[0] + negative.shape[0])


def _midpoint(direction: Tensor, positive: Tensor, negative: Tensor) -> float:
    return 0.5 * (float((positive @ direction).mean()) + float((negative @ direction).mean()))


def learn_direction(positive: Tensor, negative: Tensor, config: DirectionConfig | None = None, *,
                    paired: bool | None = None, test: tuple[Tensor, Tensor] | None = None,
                    **overrides: Any) -> DirectionResult:
    """Directions separating `positive` (`[N, D]`) from `negative` (`[M, D]`) activations; see the module docstring.

    `paired` (default: the sets have equal size) holds pair i out together, so no pair is split between fitting
    and testing; `pca` needs pairs. `test` (positive, negative activations) is a held-out set of its own: then
    every example given is fitted and the accuracy is taken on `test` (`heldout` is not used).

    Example:
        >>> result = learn_direction(torch.tensor([[1.0, 0.0]] * 4), torch.tensor([[0.0, 0.0]] * 4), heldout=0.5)
        >>> result.heldout_accuracy, result.counts["heldout_pairs"]
        ({'logistic': 1.0, 'mean_diff': 1.0, 'pca': 1.0}, 2)
    """
    config = DirectionConfig.build(config, **overrides)
    positive, negative = positive.detach().float().cpu(), negative.detach().float().cpu()
    if positive.ndim != 2 or negative.ndim != 2 or positive.shape[1] != negative.shape[1]:
        raise ValueError(f"activations must be [N, D] and [M, D] with the same D, got {tuple(positive.shape)} and "
                         f"{tuple(negative.shape)}")
    if positive.shape[0] < 2 or negative.shape[0] < 2:
        raise ValueError(f"need at least 2 examples in each set, got {positive.shape[0]} positive and "
                         f"{negative.shape[0]} negative")
    if not (torch.isfinite(positive).all() and torch.isfinite(negative).all()):
        raise ValueError("the activations hold NaN or inf values; check the model and the examples")
    paired = positive.shape[0] == negative.shape[0] if paired is None else paired
    if "pca" in config.methods and not paired:
        raise ValueError("pca needs paired examples (sets of equal size, pair i = example i of each); "
                         "leave 'pca' out of methods for unpaired sets")
    generator = make_generator(config.seed)
    if test is not None:
        fit_pos, held_pos = torch.arange(positive.shape[0]), torch.zeros(0, dtype=torch.long)
        fit_neg, held_neg = torch.arange(negative.shape[0]), torch.zeros(0, dtype=torch.long)
    elif paired:
        if positive.shape[0] != negative.shape[0]:
            raise ValueError(f"paired sets need equal sizes, got {positive.shape[0]} and {negative.shape[0]}")
        fit_pos, held_pos = split_indices(positive.shape[0], config.heldout, generator)
        fit_neg, held_neg = fit_pos, held_pos
    else:
        fit_pos, held_pos = split_indices(positive.shape[0], config.heldout, generator)
        fit_neg, held_neg = split_indices(negative.shape[0], config.heldout, generator)
    train_p, train_n = positive[fit_pos], negative[fit_neg]
    test_p, test_n = positive[held_pos], negative[held_neg]
    if test is not None:
        test_p, test_n = (t.detach().float().cpu() for t in test)
        if test_p.ndim != 2 or test_n.ndim != 2 or test_p.shape[1] != positive.shape[1] or test_n.shape[1] != positive.shape[1]:
            raise ValueError(f"test activations must be [*, {positive.shape[1]}], got {tuple(test_p.shape)} and {tuple(test_n.shape)}")
    directions: dict[str, Tensor] = {}
    thresholds: dict[str, float] = {}
    for method in config.methods:
        if method == "logistic":
            x = torch.cat([train_p, train_n])
            y = torch.cat([torch.ones(len(train_p)), torch.zeros(len(train_n))])
            directions[method], thresholds[method] = fit_logistic(x, y, config.l2, config.steps)
        else:
            direction = mean_difference(train_p, train_n) if method == "mean_diff" else paired_pca(train_p, train_n)
            directions[method], thresholds[method] = direction, _midpoint(direction, train_p, train_n)
    cosines = {f"{a}/{b}": float(directions[a] @ directions[b]) for a, b in itertools.combinations(config.methods, 2)}
    counts = {"positive": positive.shape[0], "negative": negative.shape[0], "fitted_positive": len(fit_pos),
              "fitted_negative": len(fit_neg), "heldout_positive": len(test_p), "heldout_negative": len(test_n)}
    if paired and len(test_p) == len(test_n):
        counts["heldout_pairs"] = len(test_p)
    return DirectionResult(
        directions=directions, thresholds=thresholds,
        heldout_accuracy={m: _accuracy(directions[m], thresholds[m], test_p, test_n) for m in config.methods},
        train_accuracy={m: _accuracy(directions[m], thresholds[m], train_p, train_n) for m in config.methods},
        cosines=cosines, counts=counts, paired=paired, settings=config.to_dict())


def save_direction(result: DirectionResult, path: "str | Path") -> tuple[Path, Path]:
    """`result.save(path)`: the direction file and its sidecar JSON.

    Example:
        >>> import tempfile
        >>> result = learn_direction(torch.ones(4, 3), torch.zeros(4, 3), methods=("mean_diff",))
        >>> save_direction(result, Path(tempfile.mkdtemp(), "c.pt"))[1].name
        'c.pt.json'
    """
    return result.save(path)


def _source_name(examples: Examples) -> str:
    name = getattr(examples, "name", None)
    if name:
        return str(name)
    return f"{len(examples)} {'texts' if isinstance(examples, (list, tuple)) else 'images'}"


def direction_from_examples(loaded: LoadedModel, site: str, positive: Examples, negative: Examples,
                            config: DirectionConfig | None = None, *, paired: bool | None = None,
                            heldout_examples: tuple[Examples, Examples] | None = None,
                            sources: dict[str, str] | None = None, **overrides: Any) -> DirectionResult:
    """Directions at `site` of `loaded` from a positive and a negative example set (texts, or images as a tensor
    `[N, 3, H, W]` in [0, 1] or an `ImageSet`); `heldout_examples` (positive, negative) are a held-out set of their
    own (else `heldout` of the examples are held out at random); `sources` names the sets in the result (default:
    their names).

    Example:
        >>> from dreamy.models import load
        >>> good = ["I loved it.", "What a joy.", "Great fun.", "So good."]
        >>> bad = ["I hated it.", "What a bore.", "Awful mess.", "So bad."]
        >>> result = direction_from_examples(load("tiny:lm"), "model.layers.1", good, bad, heldout=0.0)
        >>> result.site, result.reduce, result.train_accuracy["logistic"]
        ('model.layers.1', 'mean', 1.0)
    """
    config = DirectionConfig.build(config, **overrides)
    where = str(bare_site(site))
    reduce = default_reduce(loaded, config.reduce)
    pos = site_features(loaded, where, positive, reduce, config.batch_size)
    neg = site_features(loaded, where, negative, reduce, config.batch_size)
    test = None
    if heldout_examples is not None:
        test = tuple(site_features(loaded, where, examples, reduce, config.batch_size) for examples in heldout_examples)
    result = learn_direction(pos, neg, config, paired=paired, test=test)
    result.site, result.model, result.reduce = where, loaded.name, reduce
    result.sources = dict(sources) if sources else {"positive": _source_name(positive), "negative": _source_name(negative)}
    return result


__all__ = ["DirectionResult", "direction_from_examples", "fit_logistic", "learn_direction", "mean_difference",
           "paired_pca", "save_direction", "split_indices"]
