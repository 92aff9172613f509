"""The shape of a run's records: every key a record of results.json may hold, declared once, and the two
questions readers ask of one (`record_kind`: an image or a prompt record? `prompt_layout`: the prompt's length,
prefix and suffix).

A record is the JSON dict a method's result gives (`to_records()`), completed by the run (`runs.batch`: model,
plot, images, pack, description) and by the enrichment pass (`runs.enrich`: maxima, descriptions, labels,
judges, steering). It lives here, in `core`, the lowest layer, because three layers read it: `maxima` (the
verdict at matched length), `report` (the gallery) and `runs` (which writes it); `report` sits below `runs`
and `maxima` below `report`, so a schema in `runs/` could not be read by the other two. The module imports
nothing from the package.

Example:
    >>> record: PromptRecord = {"kind": "prompt", "target": "model.layers.1:3", "settings": {"n_tokens": 4}}
    >>> record_kind(record), prompt_layout(record)
    ('prompt', PromptShape(n_tokens=4, prefix='', suffix=''))
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, TypedDict

KINDS = ("image", "prompt")  # what a run dreams: its records' (and its run's) "kind"


class RunInfo(TypedDict, total=False):
    """The run a results.json records (`runs.store.run_info`)."""

    model: str
    kind: str  # one of KINDS
    settings: dict[str, Any]  # the method config's fields (a prompt run's hold n_tokens, prefix, suffix)
    seed: int
    format: int
    fingerprint: str


class PromptPoint(TypedDict, total=False):
    """One prompt of a record's `frontier` (`language.result.FrontierPoint`)."""

    text: str
    token_ids: list[int]
    activation: float
    xentropy: float
    tokens: list[str]
    token_attribution: list[float]
    origin: str  # where its search line started: "random", "init", "window i"


class MaximaItem(TypedDict, total=False):
    """One dataset example of a record's `maxima` / `maxima_matched` (`maxima.records.Maxima.gallery_items`)."""

    label: str  # the example's source
    activation: float
    rank: int
    image: str  # images: the PNG's path in the run's folder
    text: str  # text: the window
    tokens: list[str]
    token_ids: list[int]
    token_activations: list[float]
    xentropy: float
    classes: list[int]  # images: the ImageNet classes its photo shows (`datasets.images.image_classes`); absent: unlabelled set


class Description(TypedDict, total=False):
    """A prompt record's output-side `description` (`runs.describe`)."""

    site: str
    vocab_proj: dict[str, list[list[Any]]]  # promoted / suppressed: [[token, value], ...]
    token_change: dict[str, Any]  # promoted, suppressed, contexts ("maxima" | "frontier"), n_contexts, alpha


class JudgeEntry(TypedDict, total=False):
    """One judge's verdict on an image record's best image (`vision.judges.Verdict`), with every image's."""

    judge: str
    target: int
    label: str
    probability: float
    rank: int
    top5: list[str]
    probabilities: list[float]


class _Record(TypedDict, total=False):
    """The keys every record may hold, whatever its kind."""

    kind: str  # one of KINDS
    target: str  # the target's spec: the record's key in results.json
    model: str
    method: str
    activation: float | None
    settings: dict[str, Any]
    seed: int
    pack: int  # how many targets its optimization packed
    plot: str  # a PNG in the run's folder: the objective per step (images), the frontier (prompts)
    error: str  # a failed target: nothing else is to be read
    maxima: list[MaximaItem]  # dataset maxima (prompts: the longer context windows)
    maxima_dataset: str


class ImageRecord(_Record, total=False):
    """An image dream's record (`vision.render.DreamResult.to_records`, `runs.batch`, `runs.enrich`)."""

    row: int
    activations: list[float]  # one per image
    final_objective: float | None
    history: list[float]
    snapshot_steps: list[int]
    images: list[str]  # PNGs in the run's folder
    label: str  # the class name of a class-logit target
    judges: list[JudgeEntry]


class PromptRecord(_Record, total=False):
    """A prompt search's record (`language.result.PromptResult.to_record`, `runs.batch`, `runs.enrich`)."""

    frontier: list[PromptPoint]
    evaluated: Any  # the evaluated prompts, compact, for the plot (`report.plots.evaluated_points`)
    history: list[dict[str, Any]]
    description: Description
    description_error: str
    maxima_matched: list[MaximaItem]  # the windows of the prompt's own length: the verdict's yardstick
    maxima_matched_dataset: str
    labels: dict[str, Any]  # `labels.TokenLabels` record (last history step only) with its `corpus`
    labels_error: str
    steering: dict[str, Any]  # `steering.SteerResult` record without its kind
    steering_error: str


class DashboardRecord(_Record, total=False):
    """A target's dashboard without dreams (`dream dashboard`, `cli.dashboard.dashboard_records`), kind "dashboard":
    one corpus scan's values (`maxima.text_maxima(rescore=False)`), each a `maxima.records.Example` as a dict."""

    samples: list[dict[str, Any]]  # examples from quantile bands of the firing values and random windows (`group`)
    density: float | None  # share of the scanned tokens where the value is > 0
    statistics: dict[str, Any]  # `maxima.stats` summary: tokens, fired, density, mean, max, histogram (log10 edges, counts)
    dead: bool  # never > 0 on any scanned token
    logit_tops: dict[str, Any]  # an SAE feature's VocabProj (`sae.logit_tops`): method, promoted, suppressed
    logit_tops_error: str


#: every key a record of each kind may hold
RECORD_KEYS = {"image": frozenset(ImageRecord.__annotations__) | frozenset(_Record.__annotations__),
               "prompt": frozenset(PromptRecord.__annotations__) | frozenset(_Record.__annotations__),
               "dashboard": frozenset(DashboardRecord.__annotations__) | frozenset(_Record.__annotations__)}


class PromptShape(NamedTuple):
    """Where a prompt's free tokens sit: `n_tokens` of them between `prefix` and `suffix` (the settings that
    `language.layout.make_layout` tokenizes into a `PromptLayout`)."""

    n_tokens: int
    prefix: str
    suffix: str


def record_kind(record: Mapping[str, Any] | None, default: str | None = None) -> str | None:
    """The kind ("image" or "prompt") of a record or of a run (`RunInfo`): its `"kind"`; for an older record
    without one, "image" when it holds `images`, "prompt" when it holds a `frontier`; else `default`.

    Example:
        >>> record_kind({"kind": "prompt"}), record_kind({"images": []}), record_kind({"frontier": []})
        ('prompt', 'image', 'prompt')
        >>> record_kind({"target": "x:1"}), record_kind({"target": "x:1"}, default="image"), record_kind(None)
        (None, 'image', None)
    """
    record = record or {}
    kind = record.get("kind")
    if kind is not None:
        return kind
    if "images" in record:
        return "image"
    if "frontier" in record:
        return "prompt"
    return default


def prompt_layout(run_or_record: Mapping[str, Any] | None) -> PromptShape | None:
    """The prompt layout in the `settings` of a prompt run (`RunInfo`) or prompt record; None for an image one,
    or one whose settings do not name a whole number of tokens.

    Example:
        >>> prompt_layout({"kind": "prompt", "settings": {"n_tokens": 3, "prefix": "Q:", "suffix": None}})
        PromptShape(n_tokens=3, prefix='Q:', suffix='')
        >>> prompt_layout({"kind": "image", "settings": {"steps": 3}}), prompt_layout(None)
        (None, None)
    """
    if record_kind(run_or_record) != "prompt":
        return None
    settings = (run_or_record or {}).get("settings") or {}
    n_tokens = settings.get("n_tokens")
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool):
        return None
    return PromptShape(n_tokens, settings.get("prefix") or "", settings.get("suffix") or "")


__all__ = ["KINDS", "RECORD_KEYS", "DashboardRecord", "Description", "ImageRecord", "JudgeEntry", "MaximaItem", "PromptShape",
           "PromptPoint", "PromptRecord", "RunInfo", "prompt_layout", "record_kind"]
