"""Example sets and what a model's site makes of them: one feature vector per example, and the gradient of a
target with respect to the site, reduced the same way.

- `read_examples(source)`: a text file (one example per line) or a folder of images.
- `site_features(loaded, site, examples, reduce)`: `[N, D]`, the site's activation of each example with its
  positions reduced (`reduce_positions`): image models reduce the feature map (`mean` over H, W by default),
  language models read one token (`pos=N`) or the mean over the tokens after the start token (the default).
- `target_gradients(loaded, target, site, examples, reduce)`: `[N, D]`, the derivative of the target with
  respect to adding a vector at the site's positions the reduction reads (every position, weighted as the
  reduction weights it, for `mean` and `sum`; one for `pos=N` and `center`), so `gradients @ v` is each
  example's directional derivative along `v` (TCAV's conceptual sensitivity).

Texts run as `start token + the text's tokens`, grouped by length so no batch needs padding; a text longer than the
model's context is cut to fit (a warning says so). Example files must be text (`read_examples`).

Example:
    >>> from dreamy.models import load
    >>> lm = load("tiny:lm")
    >>> tuple(site_features(lm, "model.layers.0", ["The cat sat.", "A dog ran in the park."]).shape)
    (2, 64)
    >>> cnn = load("tiny:cnn")
    >>> tuple(site_features(cnn, "conv2", torch.rand(3, 3, 32, 32), reduce="max").shape)
    (3, 16)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from torch import Tensor

from dreamy.datasets import ImageSet, image_folder
from dreamy.datasets.text import not_text
from dreamy.language.layout import start_token
from dreamy.models import LoadedModel
from dreamy.sae.splice import edit_site
from dreamy.targets import Probe, Target, features_last, parse
from dreamy.targets.spec import Site
from dreamy.targets.probe import reduce_features

log = logging.getLogger(__name__)

Examples = Union[Sequence[str], Tensor, ImageSet]


def read_examples(source: "str | os.PathLike") -> "list[str] | ImageSet":
    """The examples of `source`: a text file (one example per line; blank lines skipped) or a folder of images.
    A file that is not text (NUL bytes, mostly invalid UTF-8: `datasets.text.not_text`) and a folder with an image
    that cannot be read are refused (`ValueError`, one line naming the file).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp(), "good.txt"); _ = path.write_text("I loved it.\\n\\nWhat a joy.\\n")
        >>> read_examples(path)
        ['I loved it.', 'What a joy.']
    """
    path = Path(source).expanduser()
    if path.is_dir():
        images = image_folder(path)
        for index in range(len(images)):  # every image read now, not after the model has run on the others
            try:
                images.image(index)
            except Exception as error:  # Pillow's errors for a corrupt or truncated file are of many types
                raise ValueError(f"example folder '{source}': image '{images.source(index)}' cannot be read "
                                 f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else '-'}); "
                                 "remove or replace it") from error
        return images
    if not path.is_file():
        raise ValueError(f"example set '{source}' is neither a text file (one example per line) nor a folder of images")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"example file '{source}' cannot be read ({error.strerror or error})") from error
    why = not_text(data)
    if why is not None:  # the check text corpora have: random bytes are no examples
        raise ValueError(f"example file '{source}' is not text: {why}; give a UTF-8 text file, one example per line")
    lines = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines()]
    examples = [line for line in lines if line]
    if not examples:
        raise ValueError(f"example file '{source}' holds no examples; write one example per line")
    return examples


def bare_site(site: "str | Site") -> Site:
    """The site of a bare site spec (`model.layers.9`, `_blocks.8`, `...down_proj@in`), refusing units and sums.

    Example:
        >>> str(bare_site("model.layers.3"))
        'model.layers.3'
    """
    if isinstance(site, Site):
        return site
    target = parse(site)
    term = target.terms[0]
    if len(target.terms) != 1 or term.unit is not None or term.reduce is not None or term.coef != 1:
        raise ValueError(f"site {site!r} must be a bare site like 'model.layers.9' or '_blocks.8' (no unit, reduction "
                         "or sum); the reduction is the `reduce` setting")
    if term.site.is_logits:
        raise ValueError(f"site {site!r}: a direction lives at a hidden site, not at the model's output")
    if str(term.site).endswith("hook_pattern"):
        raise ValueError(f"site {site!r} is an attention pattern, whose last dimension is a key position, not a "
                         "feature; a direction lives at a site of features, e.g. blocks.0.hook_resid_post")
    return term.site


def default_reduce(loaded: LoadedModel, reduce: str | None) -> str:
    """`reduce`, or the default for the model's kind (`mean` for both: spatial mean, mean over the tokens).

    Example:
        >>> from dreamy.models import load
        >>> default_reduce(load("tiny:lm"), None), default_reduce(load("tiny:lm"), "pos=-1")
        ('mean', 'pos=-1')
    """
    return "mean" if reduce is None else reduce


def _span(n_positions: int, reduce: str, skip_start: bool) -> tuple[int, int]:
    """The positions `mean`, `max` and `sum` read: all, or all but the first (the start token)."""
    first = 1 if skip_start and n_positions > 1 else 0
    return first, n_positions


def position_weights(positions: Sequence[int], reduce: str, skip_start: bool = False) -> Tensor:
    """How much each position counts in `reduce` (`[*positions]`): the reduction is `sum(weights * values)`.

    `max` has no fixed weights (it picks a position per feature), so it is refused here.

    Example:
        >>> position_weights((4,), "mean", skip_start=True).tolist()
        [0.0, 0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
        >>> position_weights((2, 3), "center").tolist()
        [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    shape = tuple(positions)
    weights = torch.zeros(shape).flatten()
    count = weights.numel()
    if reduce in ("mean", "sum"):
        first, last = _span(count, reduce, skip_start and len(shape) == 1)
        weights[first:last] = 1.0 / (last - first) if reduce == "mean" else 1.0
    elif reduce == "center":
        weights.view(shape)[tuple(size // 2 for size in shape)] = 1.0
    elif reduce.startswith("pos="):
        index = int(reduce[4:])
        if not -count <= index < count:
            raise ValueError(f"reduce {reduce} is out of range for a site with {count} positions")
        weights[index] = 1.0
    else:
        raise ValueError(f"reduce {reduce!r} has no position weights; use mean, sum, center or pos=N")
    return weights.view(shape)


def reduce_positions(activation: Tensor, reduce: str, skip_start: bool = False) -> Tensor:
    """`[B, *positions, D]` features-last activations -> `[B, D]` by `reduce`; `[B, D]` passes unchanged.

    `skip_start` (token sequences): `mean`, `max` and `sum` leave out position 0, the start token.

    Example:
        >>> values = torch.arange(12.0).view(1, 3, 4)     # 3 tokens, 4 features
        >>> reduce_positions(values, "mean", skip_start=True).tolist(), reduce_positions(values, "pos=0").tolist()
        ([[6.0, 7.0, 8.0, 9.0]], [[0.0, 1.0, 2.0, 3.0]])
    """
    return reduce_features(activation, reduce, start_tokens=int(skip_start))  # the rule a target's reduction follows


def token_rows(loaded: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids with the start token first (no other special tokens); a text longer than the model's
    context (`max_position_embeddings`, start token included) is cut to fit, with a warning.

    Example:
        >>> from dreamy.models import load
        >>> token_rows(load("tiny:lm"), ["The cat"])[0][0]
        0
    """
    if loaded.tokenizer is None:
        raise ValueError(f"model '{loaded.name}' has no tokenizer; text examples need a language model")
    start = start_token(loaded.tokenizer)
    encoded = loaded.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    for text, ids in zip(texts, encoded):
        if not ids:
            raise ValueError(f"example {text!r} gives no tokens; remove empty examples")
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and context > 1:
        long = [len(ids) for ids in encoded if len(ids) + 1 > context]
        if long:  # past the positions the model was made for: meaningless values, or out of memory on long lines
            log.warning("%d example(s) are longer than the %d positions '%s' was made for (the longest %d tokens and "
                        "the start token); each is cut to its first %d tokens", len(long), context, loaded.name,
                        max(long), context - 1)
            encoded = [ids[:context - 1] for ids in encoded]
    return [[start] + list(ids) for ids in encoded]


def length_batches(rows: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of `rows` in batches of at most `batch_size` rows of one length (no padding needed).

    Example:
        >>> length_batches([[1, 2], [3], [4, 5], [6, 7]], 2)
        [[1], [0, 2], [3]]
    """
    by_length: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        by_length.setdefault(len(row), []).append(index)
    return [group[i:i + batch_size] for _, group in sorted(by_length.items()) for i in range(0, len(group), batch_size)]


def _is_text(examples: Any) -> bool:
    return isinstance(examples, (list, tuple)) and all(isinstance(e, str) for e in examples)


def _image_batches(loaded: LoadedModel, examples: "Tensor | ImageSet", batch_size: int):
    """Yield (indices, normalized image batch) for a vision model."""
    if loaded.preprocess is None:
        raise ValueError(f"model '{loaded.name}' takes no images; image examples need a vision model "
                         f"(for a language model give texts, one example per line)")
    size = tuple(loaded.preprocess.size)
    count = len(examples)
    for first in range(0, count, batch_size):
        indices = list(range(first, min(count, first + batch_size)))
        if isinstance(examples, Tensor):
            batch = examples[indices].float()
            if tuple(batch.shape[-2:]) != size:
                batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
        else:
            batch = examples.tensor(indices, size)
        batch = loaded.preprocess.normalize(batch.to(loaded.device))
        yield indices, batch.contiguous(memory_format=torch.channels_last)


def _batches(loaded: LoadedModel, examples: Examples, batch_size: int):
    """Yield (indices, forward kwargs or args) over the examples; texts grouped by token length."""
    if _is_text(examples):
        if loaded.kind != "language":
            raise ValueError(f"model '{loaded.name}' is a {loaded.kind} model; give images (a folder), not texts")
        rows = token_rows(loaded, examples)
        for indices in length_batches(rows, batch_size):
            ids = torch.tensor([rows[i] for i in indices], device=loaded.device)
            yield indices, (), {"input_ids": ids}
        return
    if isinstance(examples, (Tensor, ImageSet)):
        for indices, batch in _image_batches(loaded, examples, batch_size):
            yield indices, (batch,), {}
        return
    raise ValueError(f"examples must be texts (a list of strings), an image tensor [N, 3, H, W] or an ImageSet, "
                     f"got {type(examples).__name__}")


def _count(examples: Examples) -> int:
    count = len(examples)
    if count == 0:
        raise ValueError("an example set is empty; give at least one example")
    return count


@torch.no_grad()
def site_features(loaded: LoadedModel, site: "str | Site", examples: Examples, reduce: str | None = None,
                  batch_size: int = 16) -> Tensor:
    """`[N, D]`: the activation `site` gives each example, its positions reduced by `reduce` (see the module docstring).

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm")
        >>> a = site_features(lm, "model.layers.1", ["The cat sat."], reduce="pos=-1")
        >>> b = site_features(lm, "model.layers.1", ["The cat sat."], reduce="mean")
        >>> bool(torch.allclose(a, b))
        False
    """
    where = bare_site(site)
    reduce = default_reduce(loaded, reduce)
    probe = Probe(loaded.model, [str(where)])
    out = torch.zeros(_count(examples), 0)
    for indices, args, kwargs in _batches(loaded, examples, batch_size):
        activation = probe(*args, keep_activations=True, **kwargs).activations[str(where)]
        reduced = reduce_positions(features_last(activation).float(), reduce, skip_start=loaded.kind == "language")
        if out.shape[1] == 0:
            out = torch.zeros(out.shape[0], reduced.shape[1])
        out[indices] = reduced.cpu()
    return out


def target_gradients(loaded: LoadedModel, target: "str | Target", site: "str | Site", examples: Examples,
                     reduce: str | None = None, batch_size: int = 16) -> Tensor:
    """`[N, D]`: for each example, the derivative of `target` with respect to adding a vector at `site`, at the
    positions `reduce` reads, weighted as it weights them; `gradients @ v` is the directional derivative along `v`.

    Language targets are read at the last token (`pos=-1`), as prompts are. `max` is refused (it has no fixed
    positions); use `mean` or `center`.

    Example:
        >>> from dreamy.models import load
        >>> cnn = load("tiny:cnn")
        >>> grads = target_gradients(cnn, "logits:3", "pool", torch.rand(2, 3, 32, 32))
        >>> bool(torch.allclose(grads[0], cnn.model.head.weight[3]))   # the head is linear in the pooled features
        True
    """
    where = bare_site(site)
    reduce = default_reduce(loaded, reduce)
    language = loaded.kind == "language"
    probe = Probe(loaded.model, [target], sequence_reduce="pos=-1" if language else "mean")
    out = torch.zeros(_count(examples), 0)
    for indices, args, kwargs in _batches(loaded, examples, batch_size):
        leaves: list[Tensor] = []

        def as_leaf(activation: Tensor) -> Tensor:
            leaf = activation.detach().clone().requires_grad_(True)
            leaves.append(leaf)
            return leaf

        with torch.enable_grad(), edit_site(loaded.model, where, as_leaf):
            scores = probe(*args, need_output=True, **kwargs).scores[:, 0]
            if not leaves:
                raise ValueError(f"site '{where}' never ran in the forward pass")
            if not scores.requires_grad:
                raise ValueError(f"target '{target}' does not depend on site '{where}'; pick a site before the target")
            (grad,) = torch.autograd.grad(scores.sum(), leaves[0])
        per_position = features_last(grad).float()  # [B, *positions, D] (or [B, D])
        if per_position.ndim == 2:
            reduced = per_position
        else:
            weights = position_weights(per_position.shape[1:-1], reduce, skip_start=language and per_position.ndim == 3)
            reduced = torch.einsum("bpd,p->bd", per_position.flatten(1, -2), weights.flatten().to(per_position))
        if out.shape[1] == 0:
            out = torch.zeros(out.shape[0], reduced.shape[1])
        out[indices] = reduced.cpu()
    return out


__all__ = ["Examples", "bare_site", "default_reduce", "length_batches", "position_weights", "read_examples",
           "reduce_positions", "site_features", "target_gradients", "token_rows"]
