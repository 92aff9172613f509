"""Neuronpedia export: a prompt run's (or a `dream dashboard` run's, `dashboard_sources`) features and neurons as
the JSON Neuronpedia imports.

The format is the one SAEDashboard's Neuronpedia runner writes (sae-dashboard 0.8): for each source (one SAE, or
one site's neurons, at one layer of one model) a folder `OUT/<model_id>_<sae_set>_<site>/` with `batch-<i>.json`
(`{"model_id", "layer" (int), "sae_set", "sae_id_suffix", "features": [...]}`, 128 features a batch, in index
order) and `skipped_indexes.json` (`layer` a string there). Each feature holds:

- `feature_index`; `neuron_alignment_*`: the 3 largest entries of its decoder row (a neuron's: its basis vector);
- `pos_str`/`pos_values`, `neg_str`/`neg_values`: the 10 tokens its output direction raises and lowers most in the
  direct logits `direction @ W_U` (no final norm, no bias; empty when it writes no residual-stream direction), and
  `logits_hist_*`, the histogram (50 bins) of those logits over the vocabulary;
- `frac_nonzero`, `freq_hist_*` (50 bins of its positive values), `correlated_neurons_*` (the site's dimensions
  whose values correlate most with it; `*_l1` is the cosine similarity, as SAEDashboard writes it) and
  `correlated_features_*` (among the source's exported features, itself included): over `n_prompts_total`
  random windows of `n_tokens_in_prompt` tokens of `dataset`, each after the start token;
- `activations`: its dataset maxima windows (`bin_min` -1, `bin_max` its best activation, `bin_contains` -1, the
  tokens, the value at each token, `qualifying_token_index` the scored last token), then its dreamed prompts,
  marked by `bin_min` and `bin_contains` -2 (`DREAMED`; the format has no other field for it), with the value at
  each token after the start token. `dreamy.json` beside the batches lists them again with their texts, methods
  and cross-entropies, and the records that were not exported with the reason.

Float lists are rounded to 3 decimals, as SAEDashboard writes them.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.datasets import TextCorpus
    >>> loaded = load("tiny:lm")
    >>> record = {"kind": "prompt", "target": "model.layers.1.mlp.down_proj@in:5", "activation": 1.0, "frontier": [],
    ...           "maxima": [{"tokens": ["a", "b"], "token_ids": [66, 67], "token_activations": [0.1, 2.0], "activation": 2.0}]}
    >>> sources, skipped = neuronpedia_sources(loaded, [record], corpus=TextCorpus("t", "the cat sat. " * 200), n_windows=4, window=8)
    >>> [(s.layer, s.sae_set, [f["feature_index"] for f in s.features]) for s in sources], skipped
    ([(1, 'mlp.down_proj-in-neurons', [5])], [])
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from dreamy.core.files import safe_name, write_json_atomic
from dreamy.datasets import TextCorpus
from dreamy.language.layout import make_layout
from dreamy.models import LoadedModel
from dreamy.sae.activations import corpus_windows, with_start
from dreamy.sae.describe import output_direction
from dreamy.targets import Neuron, Probe, SAEFeature, TargetError
from dreamy.targets.dialects import complete_sites
from dreamy.targets.saelens import is_sae_folder, read_sae_folder

DREAMED = -2  # `bin_min` and `bin_contains` of a dreamed prompt's activation record
FEATURES_PER_BATCH = 128
TOP_TOKENS = 10
HISTOGRAM_BINS = 50
MAX_EXAMPLES = 20
MAX_DREAMED = 10
_EXPORT_FILE = r"batch-\d+\.json|skipped_indexes\.json|dreamy\.json"  # what a source folder holds
# a feature's keys, in the order SAEDashboard writes them
_FEATURE_FIELDS = ("feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
             "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
             "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson", "neg_str",
             "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
             "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
             "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations", "vector")
_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers|h|layer)\.(\d+)(?:\.|@|$|\[)")


@dataclass
class NeuronpediaSource:
    """One Neuronpedia source (an SAE or a site's neurons at one layer): its batch-file header and features."""

    model_id: str
    layer: int
    sae_set: str
    site: str
    features: list[dict[str, Any]] = field(default_factory=list)
    dreamed: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    skipped_indexes: list[int] = field(default_factory=list)  # dead features: in skipped_indexes.json, not in a batch

    @property
    def folder_name(self) -> str:
        """`<model_id>_<sae_set>_<site>`, as SAEDashboard names its output folder (less the width)."""
        return safe_name(f"{self.model_id}_{self.sae_set}_{self.site}")

    def batches(self, per_batch: int = FEATURES_PER_BATCH) -> list[dict[str, Any]]:
        """The `batch-<i>.json` objects: features in index order, `per_batch` at a time.

        Example:
            >>> s = NeuronpediaSource("m", 3, "res", "x", [{"feature_index": 2}, {"feature_index": 0}])
            >>> [[f["feature_index"] for f in b["features"]] for b in s.batches(per_batch=1)]
            [[0], [2]]
        """
        ordered = sorted(self.features, key=lambda f: f["feature_index"])
        return [{"model_id": self.model_id, "layer": self.layer, "sae_set": self.sae_set, "sae_id_suffix": None,
                 "features": ordered[i:i + per_batch]} for i in range(0, max(len(ordered), 1), per_batch)]


def _round(values: Any) -> Any:
    if isinstance(values, Tensor):
        values = values.tolist()
    if isinstance(values, list):
        return [_round(v) for v in values]
    value = float(values)
    return round(value, 3) if value == value else 0.0  # NaN (a constant's correlation) -> 0


def model_id_of(name: str) -> str:
    """A Neuronpedia model id from a dreamy model name: the name without its scheme and organisation.

    Example:
        >>> model_id_of("bundled:smollm2-135m"), model_id_of("hf:openai-community/gpt2")
        ('smollm2-135m', 'gpt2')
    """
    return name.split(":", 1)[-1].rsplit("/", 1)[-1]



def _grouped(loaded: LoadedModel, records: Sequence[dict[str, Any]], wanted: Callable[[dict[str, Any]], bool],
             refusal: str, model_id: str | None, sae_set: str | None
             ) -> tuple[dict[tuple[str, int, str, str], list[tuple[dict[str, Any], str, Any]]], list[dict[str, str]]]:
    """The `wanted` records grouped by Neuronpedia source (model, layer, set, site) as (record, target, unit),
    and the others skipped with their reason (`refusal` for a record of another kind)."""
    groups: dict[tuple[str, int, str, str], list[tuple[dict[str, Any], str, Any]]] = {}
    skipped: list[dict[str, str]] = []
    for record in records:
        try:
            if not wanted(record):
                raise ValueError(refusal)
            key, target, unit = _source_of(loaded, record, model_id, sae_set)
        except (ValueError, TargetError) as error:
            skipped.append({"target": str(record.get("target")), "reason": str(error).splitlines()[0]})
            continue
        groups.setdefault(key, []).append((record, str(target), unit))
    return groups, skipped

def _source_of(loaded: LoadedModel, record: dict[str, Any], model_id: str | None, sae_set: str | None
               ) -> tuple[tuple[str, int, str, str], Any, Any]:
    """(source key, completed target, its unit); `ValueError` with the reason a record cannot be exported."""
    if "error" in record:
        raise ValueError(f"the record failed: {record['error']}")
    target = complete_sites(record["target"])
    if len(target.terms) != 1 or target.terms[0].coef != 1:
        raise ValueError("only single features and neurons are exported (one term, no weight)")
    term = target.terms[0]
    if not isinstance(term.unit, (Neuron, SAEFeature)) or term.site.is_logits:
        raise ValueError("only SAE features (sae=DIR#i) and neurons (SITE:i) of hidden sites are exported")
    site = str(term.site)
    found = _LAYER.search(site)
    meta: dict[str, Any] = {}
    if isinstance(term.unit, SAEFeature) and is_sae_folder(term.unit.path):
        meta = read_sae_folder(term.unit.path).metadata
    known = str(meta.get("neuronpedia_id") or "")  # "<model>/<layer>-<set>"
    np_model, _, np_source = known.partition("/")
    np_layer, _, np_set = np_source.partition("-")
    if found is None and not np_layer.isdigit():
        raise ValueError(f"the site '{site}' names no layer (blocks.L, layers.L, h.L)")
    layer = int(found.group(1)) if found else int(np_layer)
    if isinstance(term.unit, SAEFeature):
        default_set = np_set or Path(term.unit.path.rstrip("/")).name
    else:  # the site's name below its block: 'mlp.down_proj-in-neurons', 'hook_resid_post-neurons'
        rest = site[found.end():] if found else site
        default_set = (re.sub(r"[^A-Za-z0-9_.]+", "-", rest).strip(".-") or "block") + "-neurons"
    key = (model_id or np_model or model_id_of(loaded.name), layer, sae_set or default_set, site)
    return key, target, term.unit


def _direction_row(unit: Any, width: int) -> Tensor:
    """The feature's decoder row in the site's basis (a neuron's basis vector)."""
    if isinstance(unit, Neuron):
        row = torch.zeros(width)
        if unit.index < width:
            row[unit.index] = 1.0
        return row
    weights = read_sae_folder(unit.path) if is_sae_folder(unit.path) else None
    if weights is None or weights.transcoder:
        return torch.zeros(width)
    return weights.W_dec[unit.index].float()


def _alignment(row: Tensor) -> dict[str, Any]:
    values, indices = row.topk(min(3, row.numel()))
    l1 = row.abs().sum().clamp(min=1e-12)
    return {"neuron_alignment_indices": indices.tolist(), "neuron_alignment_values": _round(values),
            "neuron_alignment_l1": _round(values.abs() / l1)}


def _histogram(values: Tensor) -> tuple[list[float], list[int]]:
    """Bin centres and counts of `values` in `HISTOGRAM_BINS` equal bins from their min to max ([] when empty)."""
    if values.numel() == 0:
        return [], []
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return _round([low]), [int(values.numel())]
    counts = torch.histc(values.float(), bins=HISTOGRAM_BINS, min=low, max=high)
    width = (high - low) / HISTOGRAM_BINS
    return _round([low + (i + 0.5) * width for i in range(HISTOGRAM_BINS)]), [int(c) for c in counts.tolist()]


def _logits(loaded: LoadedModel, spec: str) -> Tensor | None:
    """Direct logits of the feature's output direction, `direction @ W_U` (None without one)."""
    unembed = loaded.model.get_output_embeddings()
    try:
        _, direction = output_direction(loaded, spec)
    except (TargetError, ValueError):
        return None
    if unembed is None or direction.numel() != unembed.weight.shape[1]:
        return None
    return direction.to(unembed.weight) @ unembed.weight.detach().T


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


def _logit_fields(loaded: LoadedModel, spec: str) -> dict[str, Any]:
    logits = _logits(loaded, spec)
    if logits is None:
        return {"neg_str": [], "neg_values": [], "pos_str": [], "pos_values": [],
                "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": []}
    logits = logits.float().cpu()
    top = logits.topk(TOP_TOKENS)
    bottom = (-logits).topk(TOP_TOKENS)
    bars, heights = _histogram(logits)
    return {"neg_str": [_token_text(loaded.tokenizer, i) for i in bottom.indices.tolist()], "neg_values": _round(-bottom.values),
            "pos_str": [_token_text(loaded.tokenizer, i) for i in top.indices.tolist()], "pos_values": _round(top.values),
            "logits_hist_data_bar_heights": heights, "logits_hist_data_bar_values": bars}


def _windows(loaded: LoadedModel, records: Sequence[dict[str, Any]], corpus: "str | TextCorpus | None", n_windows: int,
             window: int, seed: int, max_words: int | None) -> tuple[Tensor, str]:
    """Token windows `[N, window]` for the statistics and the data set's name: random windows of `corpus`, or
    without one the records' maxima windows of the commonest length."""
    if corpus is not None:
        split = corpus_windows(loaded.tokenizer, [corpus], window=window, heldout_windows=n_windows, seed=seed,
                               max_words=max_words)
        return split.heldout, split.corpora[0]
    rows = [m["token_ids"] for r in records for m in (r.get("maxima") or []) if m.get("token_ids")]
    if not rows:
        raise ValueError("the records have no dataset maxima windows to compute statistics on; give a corpus "
                         "(corpus=..., --dataset) or run with --maxima")
    lengths = [len(r) for r in rows]
    common = max(set(lengths), key=lengths.count)
    unique = list(dict.fromkeys(tuple(r) for r in rows if len(r) == common))
    name = next((r.get("maxima_dataset") for r in records if r.get("maxima_dataset")), "maxima")
    return torch.tensor(unique, dtype=torch.long), f"{name} (the exported maxima windows)"


def _statistics(loaded: LoadedModel, specs: list[str], site: str, windows: Tensor, chunk: int = 32
                ) -> tuple[Tensor, Tensor]:
    """Each target's value at every window token (`[n_targets, tokens]`) and the site's activations (`[tokens, D]`),
    the start position of each window left out."""
    from dreamy.language.layout import start_token

    probe = Probe(loaded.model, specs + [site])
    start = start_token(loaded.tokenizer)
    values, acts = [], []
    with torch.no_grad():
        for first in range(0, len(windows), chunk):
            ids = with_start(windows[first:first + chunk], start).to(loaded.device)
            result = probe(input_ids=ids, keep_activations=True)
            maps = probe.maps(result.activations)
            values.append(torch.stack([m[:, 1:].reshape(-1) for m in maps[:-1]]).float().cpu())
            site_acts = result.activations[str(probe.targets[-1].terms[0].site)]
            acts.append(site_acts[:, 1:].reshape(-1, site_acts.shape[-1]).float().cpu())
    return torch.cat(values, dim=1), torch.cat(acts)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson r of vector `a [N]` with each column of `b [N, M]`."""
    a = a - a.mean()
    b = b - b.mean(dim=0)
    return (a @ b) / (a.norm() * b.norm(dim=0)).clamp(min=1e-12)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b) / (a.norm() * b.norm(dim=0)).clamp(min=1e-12)


def _correlations(values: Tensor, others: Tensor, prefix: str) -> dict[str, Any]:
    r = _pearson(values, others)
    top = torch.nan_to_num(r, nan=-2.0).topk(min(3, others.shape[1]))
    return {f"{prefix}_indices": top.indices.tolist(), f"{prefix}_l1": _round(_cosine(values, others[:, top.indices])),
            f"{prefix}_pearson": _round(r[top.indices])}


def _examples(record: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for item in (record.get("maxima") or [])[:MAX_EXAMPLES]:
        tokens, values = item.get("tokens") or [], item.get("token_activations") or []
        if not tokens or len(tokens) != len(values):
            continue
        out.append({"bin_min": -1, "bin_max": _round(item.get("activation", max(values))), "bin_contains": -1,
                    "tokens": list(tokens), "values": _round(list(values)), "qualifying_token_index": len(tokens) - 1})
    return out


def _dreamed(loaded: LoadedModel, record: dict[str, Any], spec: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The record's dreamed prompts (best first) as activation records, with the value at each token after the
    start token, and what `dreamy.json` says about each."""
    points = sorted((p for p in record.get("frontier") or [] if p.get("token_ids")), key=lambda p: -p.get("activation", 0.0))
    points = points[:MAX_DREAMED]
    if not points:
        return [], []
    settings = record.get("settings") or {}
    lengths = {len(p["token_ids"]) for p in points}
    out, notes = [], []
    probe = Probe(loaded.model, [spec], sequence_reduce="pos=-1")
    for n_tokens in sorted(lengths):
        group = [p for p in points if len(p["token_ids"]) == n_tokens]
        layout = make_layout(loaded.tokenizer, n_tokens, settings.get("prefix") or "", settings.get("suffix") or "",
                             device=loaded.device)
        ids = layout.full(torch.tensor([p["token_ids"] for p in group], device=loaded.device))
        with torch.no_grad():
            result = probe(input_ids=ids, keep_activations=True)
        maps = probe.maps(result.activations)[0][:, 1:].float().cpu()
        for point, row, full in zip(group, maps, ids[:, 1:].tolist()):
            tokens = [_token_text(loaded.tokenizer, t) for t in full]
            out.append({"bin_min": DREAMED, "bin_max": _round(row[-1]), "bin_contains": DREAMED, "tokens": tokens,
                        "values": _round(row), "qualifying_token_index": len(tokens) - 1})
            notes.append({"text": point.get("text"), "activation": point.get("activation"),
                          "xentropy": point.get("xentropy"), "method": record.get("method")})
    return out, notes


def neuronpedia_sources(loaded: LoadedModel, records: Sequence[dict[str, Any]], *, model_id: str | None = None,
                        sae_set: str | None = None, corpus: "str | TextCorpus | None" = None, n_windows: int = 256,
                        window: int = 64, seed: int = 0, max_words: int | None = 200_000
                        ) -> tuple[list[NeuronpediaSource], list[dict[str, str]]]:
    """The Neuronpedia sources of a prompt run's `records` (see the module docstring) and the records left out
    (`[{"target", "reason"}]`). `corpus` (a `dreamy.datasets.open_text` name, path or `TextCorpus`) gives the
    `n_windows` random windows of `window` tokens (from its first `max_words` words) the statistics are computed
    on; without it, the records' maxima windows. `model_id` and `sae_set` override the names read from each
    SAE's `neuronpedia_id` (else the model's name, the SAE folder's name, or the site's for neurons).
    """
    groups, skipped = _grouped(loaded, records, lambda r: r.get("kind", "prompt") == "prompt",
                               "only prompt records are exported", model_id, sae_set)
    sources = []
    for (mid, layer, set_name, site), members in groups.items():
        windows, dataset = _windows(loaded, [m[0] for m in members], corpus, n_windows, window, seed, max_words)
        values, acts = _statistics(loaded, [m[1] for m in members], site, windows)
        source = NeuronpediaSource(mid, layer, set_name, site)
        for j, (record, spec, unit) in enumerate(members):
            value = values[j]
            positive = value[value > 0]
            bars, heights = _histogram(positive)
            dreamed, notes = _dreamed(loaded, record, spec)
            feature = {"feature_index": unit.index, **_alignment(_direction_row(unit, acts.shape[1])),
                       **_correlations(value, acts, "correlated_neurons"),
                       **_correlations(value, values.T, "correlated_features"),
                       **_logit_fields(loaded, spec),
                       "frac_nonzero": _round(float((value > 0).float().mean())),
                       "freq_hist_data_bar_values": bars, "freq_hist_data_bar_heights": heights,
                       "n_prompts_total": int(windows.shape[0]), "n_tokens_in_prompt": int(windows.shape[1]),
                       "dataset": dataset, "decoder_weights_dist": [],
                       "activations": _examples(record) + dreamed, "vector": []}
            feature["correlated_features_indices"] = [members[i][2].index for i in feature["correlated_features_indices"]]
            source.features.append({name: feature[name] for name in _FEATURE_FIELDS})
            first = len(feature["activations"]) - len(dreamed)
            source.dreamed[unit.index] = [{"activation_index": first + i, **note} for i, note in enumerate(notes)]
        sources.append(source)
    return sources, skipped


def _site_width(loaded: LoadedModel, site: str) -> int:
    """The number of values per token at `site` (one forward of two start tokens)."""
    from dreamy.language.layout import start_token

    probe = Probe(loaded.model, [site])
    ids = torch.full((1, 2), start_token(loaded.tokenizer), dtype=torch.long, device=loaded.device)
    with torch.no_grad():
        result = probe(input_ids=ids, keep_activations=True)
    return int(result.activations[str(probe.targets[0].terms[0].site)].shape[-1])


def _log_histogram(statistics: dict[str, Any]) -> tuple[list[float], list[int]]:
    """A dashboard's log-binned histogram of firing values as bar centres (geometric, between each bin's edges)
    and counts."""
    histogram = statistics.get("histogram") or {}
    edges, counts = histogram.get("log10_edges") or [], histogram.get("counts") or []
    return _round([10 ** ((edges[i] + edges[i + 1]) / 2) for i in range(min(len(counts), len(edges) - 1))]), \
        [int(c) for c in counts[:max(len(edges) - 1, 0)]]


def _scanned(item: dict[str, Any], bin_min: Any, bin_max: Any) -> dict[str, Any] | None:
    """A dashboard example (its scanned window, the value at each token) as an activation record."""
    tokens, values = item.get("tokens") or [], item.get("context_activations") or item.get("token_activations") or []
    if not tokens or len(tokens) != len(values):
        return None
    index, start = item.get("index"), item.get("context_start")
    at = index - start if isinstance(index, int) and isinstance(start, int) and 0 <= index - start < len(tokens) \
        else len(tokens) - 1
    return {"bin_min": bin_min, "bin_max": bin_max, "bin_contains": -1, "tokens": list(tokens),
            "values": _round([0.0 if v is None else v for v in values]), "qualifying_token_index": at}


def _dashboard_activations(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The top examples (`bin_min` -1, `bin_max` the example's value), then each sample group's examples (`bin_min`
    and `bin_max` the lowest and highest value of the group)."""
    out = [_scanned(item, -1, _round(item.get("activation", 0.0))) for item in (record.get("maxima") or [])[:MAX_EXAMPLES]]
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in record.get("samples") or []:
        groups.setdefault(str(item.get("group")), []).append(item)
    for items in groups.values():
        values = [float(i.get("activation") or 0.0) for i in items]
        out += [_scanned(item, _round(min(values)), _round(max(values))) for item in items]
    return [a for a in out if a is not None]


def dashboard_sources(loaded: LoadedModel, records: Sequence[dict[str, Any]], *, model_id: str | None = None,
                      sae_set: str | None = None) -> tuple[list[NeuronpediaSource], list[dict[str, str]]]:
    """The Neuronpedia sources of a `dream dashboard` run's records (kind "dashboard") and the records left out,
    from the values its scan recorded (nothing is scanned again): `frac_nonzero` is the record's density over
    every scanned token, `freq_hist_*` its log-binned histogram of firing values (bar centres between the bin
    edges), `activations` its top examples then its quantile and random samples, each its scanned window with the
    value at every token; logit fields and alignment as `neuronpedia_sources` computes them. A dead feature (never
    > 0) goes to the source's `skipped_indexes`, as SAEDashboard lists them, not into a batch. The correlation
    fields are empty: the scan keeps no feature's values beside another's.

    Example:
        >>> from dreamy.models import load
        >>> record = {"kind": "dashboard", "target": "model.layers.1.mlp.down_proj@in:5", "dead": True}
        >>> sources, skipped = dashboard_sources(load("tiny:lm"), [record])
        >>> [(s.sae_set, s.skipped_indexes, s.features) for s in sources], skipped
        ([('mlp.down_proj-in-neurons', [5], [])], [])
    """
    groups, skipped = _grouped(loaded, records, lambda r: r.get("kind") == "dashboard",
                               "only dashboard records are exported from a dashboard run", model_id, sae_set)
    sources = []
    for (mid, layer, set_name, site), members in groups.items():
        source = NeuronpediaSource(mid, layer, set_name, site)
        width = None
        for record, spec, unit in members:
            if record.get("dead"):
                source.skipped_indexes.append(unit.index)
                continue
            if width is None:
                width = _site_width(loaded, site)
            statistics = record.get("statistics") or {}
            settings = record.get("settings") or {}
            window = int(settings.get("window") or 0)
            bars, heights = _log_histogram(statistics)
            feature = {"feature_index": unit.index, **_alignment(_direction_row(unit, width)),
                       "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
                       "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
                       **_logit_fields(loaded, spec), "frac_nonzero": _round(record.get("density") or 0.0),
                       "freq_hist_data_bar_values": bars, "freq_hist_data_bar_heights": heights,
                       "n_prompts_total": int(statistics.get("tokens", 0)) // window if window else 0,
                       "n_tokens_in_prompt": window, "dataset": record.get("maxima_dataset"),
                       "decoder_weights_dist": [], "activations": _dashboard_activations(record), "vector": []}
            source.features.append({name: feature[name] for name in _FEATURE_FIELDS})
        sources.append(source)
    return sources, skipped


class ExportFolderError(ValueError):
    """An export folder that cannot take this export (a file, the user's files, another run's export)."""


def _same_run(a: Any, b: dict[str, Any]) -> bool:
    """Whether the `run` of an earlier export's dreamy.json is the run `b` (the same run folder and fingerprint)."""
    if not isinstance(a, dict):
        return False
    if a.get("fingerprint") != b.get("fingerprint"):
        return False
    where = [r.get("run_dir") for r in (a, b)]
    if where[0] is None or where[1] is None:
        return where[0] == where[1]
    try:
        return Path(str(where[0])).resolve() == Path(str(where[1])).resolve()
    except (OSError, RuntimeError):
        return False


def earlier_export(out_dir: str | os.PathLike, run: dict[str, Any] | None = None) -> list[Path]:
    """The files of an earlier export of the same `run` in `out_dir` (that writing this one replaces), checked
    before any work: `ExportFolderError` (one line) for a path that is a file, a folder holding anything but
    source folders of an export (the user's files), and an export of another run, so one export folder never
    holds two runs' files. Empty for a new or empty folder.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()); _ = (out / "notes.txt").write_text("mine")
        >>> earlier_export(out)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dreamy.sae.neuronpedia.ExportFolderError: export folder ... holds files that are not a dreamy Neuronpedia export ('notes.txt'); export into an empty or new folder
    """
    from dreamy.core.folders import LOCK_NAME, foreign_entries

    out = Path(out_dir)
    run = run or {}
    if out.exists() and not out.is_dir():
        raise ExportFolderError(f"export folder {out} is a file; give a folder")
    if not out.is_dir():
        return []
    files, others = [], []
    for entry in sorted(out.iterdir(), key=lambda e: e.name):
        if entry.name == LOCK_NAME:
            continue
        if not entry.is_dir() or entry.is_symlink() or not (entry / "dreamy.json").is_file() \
                or foreign_entries(entry, pattern=_EXPORT_FILE):
            others.append(entry.name)
            continue
        try:
            earlier = json.loads((entry / "dreamy.json").read_text()).get("run")
        except (OSError, ValueError, AttributeError):
            others.append(entry.name)
            continue
        if not _same_run(earlier, run):
            where = earlier.get("run_dir") if isinstance(earlier, dict) else None
            raise ExportFolderError(f"export folder {out} holds the export of another run"
                                    f"{f' ({where})' if where else ''}; export into another folder, or delete that one first")
        files += [path for path in entry.iterdir() if path.name != LOCK_NAME]
    if others:
        shown = ", ".join(repr(name) for name in others[:3]) + (", ..." if len(others) > 3 else "")
        raise ExportFolderError(f"export folder {out} holds files that are not a dreamy Neuronpedia export ({shown}); "
                                "export into an empty or new folder")
    return files


def write_neuronpedia(out_dir: str | os.PathLike, sources: Sequence[NeuronpediaSource], skipped: Sequence[dict[str, str]] = (),
                      run: dict[str, Any] | None = None) -> list[Path]:
    """Write each source's folder under `out_dir` (`batch-<i>.json`, `skipped_indexes.json`, `dreamy.json`; see the
    module docstring); returns the folders. An earlier export of the same `run` there is replaced (its files
    removed first: none of it stays beside the new one); anything else in `out_dir` is refused (`earlier_export`).

    Example:
        >>> import tempfile
        >>> folders = write_neuronpedia(tempfile.mkdtemp(), [NeuronpediaSource("m", 3, "res", "blocks.3.hook_resid_post",
        ...                                                                  [{"feature_index": 0}])])
        >>> sorted(p.name for p in folders[0].iterdir())
        ['batch-0.json', 'dreamy.json', 'skipped_indexes.json']
    """
    for path in earlier_export(out_dir, run):
        path.unlink()
        try:
            path.parent.rmdir()  # a source folder this export does not write again
        except OSError:
            pass
    folders = []
    for source in sources:
        folder = Path(out_dir) / source.folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for i, batch in enumerate(source.batches()):
            write_json_atomic(folder / f"batch-{i}.json", batch)
        write_json_atomic(folder / "skipped_indexes.json", {"model_id": source.model_id, "layer": str(source.layer),
                                                            "sae_set": source.sae_set, "log_sparsity": -6,
                                                            "skipped_indexes": sorted(source.skipped_indexes)})
        write_json_atomic(folder / "dreamy.json", {
            "site": source.site, "run": run or {}, "dreamed_marker": {"bin_min": DREAMED, "bin_contains": DREAMED},
            "dreamed": {str(k): v for k, v in sorted(source.dreamed.items())}, "not_exported": list(skipped)})
        folders.append(folder)
    return folders
