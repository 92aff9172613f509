"""Plan a run: cut the target list into batches, and check every target against the loaded model up front.

Batch k always holds the same targets (and uses seed + k), in every way of running them; the checks run one
example forward shaped like the run's (the prompt's full length, the model's image size), so a target that
cannot be scored is known before anything is dreamed.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.vision import DreamConfig
    >>> plan_batches(["conv3:0-2"], 2), unusable_targets(load("tiny:cnn"), ["conv3:1", "conv3:99"], DreamConfig())[0][0]
    ([['conv3:0', 'conv3:1'], ['conv3:2']], 'conv3:99')
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from dreamy.core.config import Config
from dreamy.core.memory import available_bytes
from dreamy.models import LoadedModel
from dreamy.runs.options import RunOptions
from dreamy.runs.store import ResultsStore
from dreamy.targets import check_targets, expand
from dreamy.targets.dialects import complete_sites, reading
from dreamy.targets.probe import capture_raw
from dreamy.targets.check import fixed_position_errors

KINDS = ("image", "prompt")  # what a run dreams; its records' "kind"
MODEL_KINDS = {"image": "vision", "prompt": "language"}  # the kind of model each needs (`LoadedModel.kind`)
# Image memory estimate: bytes per input value (3 x H x W per image) that a forward + backward keeps
# (activations of every layer, the parametrization, Adam's state); measured EfficientNet-Lite0 needs
# about a third of this, so the estimate refuses only sizes that cannot fit.
BYTES_PER_INPUT_VALUE = 1200


def plan_batches(specs: Sequence[str], batch_targets: int) -> list[list[str]]:
    """Expand ranges and cut the target list into batches (batch k is the same in every mode).

    Example:
        >>> plan_batches(["conv:0-4"], 2)
        [['conv:0', 'conv:1'], ['conv:2', 'conv:3'], ['conv:4']]
    """
    if batch_targets < 1:
        raise ValueError(f"batch_targets must be >= 1, got {batch_targets}")
    expanded = list(dict.fromkeys(str(t) for spec in specs for t in expand(spec)))
    return [expanded[i : i + batch_targets] for i in range(0, len(expanded), batch_targets)]


def batch_config(config: Config, k: int) -> Config:
    """The config batch `k` runs with: the run's, seeded with `seed + k`.

    Example:
        >>> from dreamy.vision import DreamConfig
        >>> batch_config(DreamConfig(seed=5), 2).seed
        7
    """
    return dataclasses.replace(config, seed=config.seed + k)


def model_kind(config: Config) -> str:
    """The kind of model a config's run needs: "vision" for image dreams, "language" for prompt searches.

    Example:
        >>> from dreamy.vision import DreamConfig
        >>> model_kind(DreamConfig())
        'vision'
    """
    if config.kind not in KINDS:
        raise ValueError(f"a run dreams images or prompts; {type(config).__name__} makes {config.kind!r}")
    return MODEL_KINDS[config.kind]


def check_model(loaded: LoadedModel, config: Config) -> None:
    """Refuse a model of the wrong kind for the config (a vision model for a prompt search, or the reverse), and
    an image size the config's parametrization cannot make (`vision.param.size_error`).

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.language import EPOConfig
        >>> check_model(load("tiny:cnn"), EPOConfig())
        Traceback (most recent call last):
        ...
        ValueError: model 'tiny:cnn' is a vision model; an EPOConfig run (prompt) needs a language model
    """
    wanted = model_kind(config)
    if loaded.kind != wanted:
        raise ValueError(f"model '{loaded.name}' is a {loaded.kind} model; an {type(config).__name__} run "
                         f"({config.kind}) needs a {wanted} model")
    if config.kind == "image" and isinstance(config.param, str):
        from dreamy.vision.param import size_error

        size = tuple(config.image_size or (loaded.preprocess.size if loaded.preprocess else (224, 224)))
        problem = size_error(config.param, size)
        if problem:
            raise ValueError(f"{problem} (the {'image_size' if config.image_size else 'model input'} size; "
                             "set image_size=, --size)")


def check_image_memory(loaded: LoadedModel, config: Config, pack: int) -> None:
    """Refuse (`ValueError`) an image run whose packs of `pack` targets (`n_per_target` images each) need, by
    the estimate `BYTES_PER_INPUT_VALUE`, more memory than `loaded`'s device has free. Other runs pass.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> check_image_memory(load("tiny:cnn"), DreamConfig(image_size=(10**5, 10**5)), 1)
        Traceback (most recent call last):
        ...
        ValueError: 1 image(s) of 100000x100000 need about 33527.6 GiB but ... GiB is free; lower --size, --batch-targets or --per-target (image_size, batch_targets, n_per_target)
    """
    if config.kind != "image":
        return
    height, width = config.image_size or (loaded.preprocess.size if loaded.preprocess else (224, 224))
    images = pack * config.n_per_target
    need = images * 3 * height * width * BYTES_PER_INPUT_VALUE
    free = available_bytes(loaded.device)
    if free is not None and need > free:
        raise ValueError(f"{images} image(s) of {height}x{width} need about {need / 2**30:.1f} GiB but "
                         f"{free / 2**30:.1f} GiB is free; lower --size, --batch-targets or --per-target "
                         "(image_size, batch_targets, n_per_target)")


def example_input(loaded: LoadedModel, config: Config, *, model_checked: bool = False) -> dict[str, Any]:
    """Keyword arguments of one forward shaped like the run's: two images at the model's input size, or
    two prompts of the run's full length (prefix, span, suffix), so checks see the real positions. A prompt
    longer than the model's context (`max_position_embeddings`) is refused (`ValueError`) before any forward.
    The model is checked against the config first (`check_model`) unless the caller did (`model_checked`).

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.language import EPOConfig
        >>> tuple(example_input(load("tiny:lm"), EPOConfig(n_tokens=4))["input_ids"].shape)
        (2, 5)
    """
    if not model_checked:
        check_model(loaded, config)
    if config.kind == "image":
        from dreamy.vision.render import patch_tokens

        size = loaded.preprocess.size if loaded.preprocess else (224, 224)
        return {"args": (torch.zeros(2, 3, *size, device=loaded.device),), "sequence_reduce": "mean",
                "patch_tokens": patch_tokens(loaded.model)}
    from dreamy.language.layout import make_layout

    layout = make_layout(loaded.tokenizer, config.n_tokens, config.prefix, config.suffix, device=loaded.device)
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and layout.length > context:
        raise ValueError(f"a prompt of {layout.length} tokens (start and prefix {len(layout.prefix)}, n_tokens "
                         f"{config.n_tokens}, suffix {len(layout.suffix)}) is longer than the {context} positions "
                         f"'{loaded.name}' was made for; lower n_tokens (--tokens) or shorten the prefix/suffix")
    filler = int(layout.prefix[-1])
    span = torch.full((2, layout.n_tokens), filler, dtype=torch.long, device=loaded.device)
    return {"input_ids": layout.full(span), "sequence_reduce": "pos=-1"}


def unusable_targets(loaded: LoadedModel, specs: Sequence[str], config: Config, *,
                     model_checked: bool = False) -> list[tuple[str, str]]:
    """`(spec, error)` for every target that cannot be scored on `loaded` in a run of `config` (see
    `targets.check_targets`), in the order given. For prompt runs the targets are also checked on a forward fed
    embeddings, as the searches feed them, so a site they skip (the input embedding) is refused here too. A
    model of the wrong kind raises `ValueError` (`check_model`, skipped when the caller did it: `model_checked`).

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> unusable_targets(load("tiny:cnn"), ["head:1", "head:10"], DreamConfig())
        [('head:10', "unit 10 out of range for site 'head' with 10 features; valid units are 0..9")]
    """
    example = example_input(loaded, config, model_checked=model_checked)
    args = example.pop("args", ())
    reduce = example.pop("sequence_reduce")
    failures = check_targets(loaded.model, specs, *args, sequence_reduce=reduce, **example)
    if config.kind != "prompt":
        return failures
    from dreamy.language.layout import make_layout  # a reduction before the span: every prompt scores the same

    layout = make_layout(loaded.tokenizer, config.n_tokens, config.prefix, config.suffix)
    failures += fixed_position_errors([s for s in specs if str(s) not in {f for f, _ in failures}], layout.span[0], layout.length)
    # prompt searches feed embeddings (inputs_embeds), so a site on the way from token ids to them never runs there
    bad = {spec for spec, _ in failures}
    # each site as the module it is read at (`sae=DIR#i` without a site: the SAE's own; TransformerLens names)
    good = [(str(spec), complete_sites(spec)) for spec in specs if str(spec) not in bad]
    module_site = {site: reading(loaded.model, site).site for _, target in good for site in target.sites
                   if not site.is_logits}
    sites = list(dict.fromkeys(module_site.values()))
    if not sites:
        return failures
    with torch.no_grad():
        embeds = loaded.model.get_input_embeddings()(example["input_ids"])
    ran, _ = capture_raw(loaded.model, sites, (), {"inputs_embeds": embeds})
    for spec, target in good:
        skipped = [str(site) for site in target.sites if not site.is_logits and module_site[site] not in ran]
        if skipped:
            failures.append((spec, f"site '{skipped[0]}' never runs in a prompt search: the search feeds the model "
                                   "embeddings directly (inputs_embeds), so the embedding layer is skipped; read "
                                   "the embeddings at the first layer's input instead, e.g. model.layers.0@in"))
    order = {str(spec): i for i, spec in enumerate(specs)}
    return sorted(failures, key=lambda failure: order.get(failure[0], len(order)))


@dataclass
class Claim:
    """What a run checked before its model was loaded (`runs.local.claim`): the model name, the config, the
    options and the run's record (`store.run_info_of`), with the output folder's lock held (`store.run_lock`;
    `folder` None when the run writes nothing). `release()` lets the folder go; as a context manager the claim
    holds it until the block ends, whatever a run inside the block does.

    Example:
        >>> from dreamy.vision import DreamConfig
        >>> with Claim("tiny:cnn", DreamConfig(), RunOptions(), {}) as claim:
        ...     claim.folder is None, claim.held
        (True, True)
    """

    model: str
    config: Config
    options: RunOptions
    run: dict[str, Any]
    folder: Path | None = None
    lock: ExitStack = field(default_factory=ExitStack, repr=False)
    held: bool = False  # inside a `with` block: the block, not the run, releases the folder

    def release(self) -> None:
        """Let the folder go (its record log is folded into results.json, see `store.run_lock`); idempotent."""
        self.lock.close()

    def __enter__(self) -> "Claim":
        self.held = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.held = False
        self.release()


@dataclass
class PreparedRun:
    """A run checked and planned (`runs.local.prepare`), ready for `runs.local.execute`: the loaded model, the
    config and options, its claim (the folder held), the batches (`planned`, batch k always the same), the
    targets a resumed run has finished (`done`), the unusable targets with their errors (`unusable`: recorded,
    never dreamed), the auto pack's `sizing.PackChoice` (`choice`, None for a given number) and the folder's
    store, once opened (`store`). As a context manager the folder stays held until the block ends.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> claim = Claim("tiny:cnn", DreamConfig(), RunOptions(), {})
        >>> PreparedRun(load("tiny:cnn"), claim, [["head:1"]]).shown
        ''
    """

    loaded: LoadedModel
    claim: Claim
    planned: list[list[str]]
    done: set[str] = field(default_factory=set)
    unusable: list[tuple[str, str]] = field(default_factory=list)
    choice: Any = None
    store: ResultsStore | None = None
    executed: bool = False

    @property
    def config(self) -> Config:
        """The method's config."""
        return self.claim.config

    @property
    def options(self) -> RunOptions:
        """The run's options."""
        return self.claim.options

    @property
    def shown(self) -> str:
        """What follows the progress bar's name: the auto pack's choice, or nothing."""
        return f" ({self.choice.summary()})" if self.choice is not None else ""

    def todo(self) -> list[tuple[int, list[str]]]:
        """`(k, targets)` of every batch with a target still to dream (not done, not unusable), in order.

        Example:
            >>> from dreamy.models import load
            >>> from dreamy.vision import DreamConfig
            >>> claim = Claim("tiny:cnn", DreamConfig(), RunOptions(), {})
            >>> PreparedRun(load("tiny:cnn"), claim, [["head:1", "head:2"], ["head:3"]], done={"head:3"}).todo()
            [(0, ['head:1', 'head:2'])]
        """
        skip = self.done | {spec for spec, _ in self.unusable}
        todo = [(k, [spec for spec in part if spec not in skip]) for k, part in enumerate(self.planned)]
        return [(k, part) for k, part in todo if part]

    def __enter__(self) -> "PreparedRun":
        self.claim.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.claim.__exit__(*exc)
