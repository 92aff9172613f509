"""Token-space labels: a one-token label for a target, found by gradient descent over a relaxed label token, with the
language model as the judge that must predict the target's activation from the label (Schulz & Fallows 2025,
"Automated Feature Labeling with Token-Space Gradient Descent").

The label is a distribution `p = softmax(v)` over candidate tokens; its embedding `p @ E` fills the `{label}` slot
of a prompt such as `Text: "{text}"\\nDoes the text mention{label}? Answer:` and the judge's answer is the logit of
" Yes" minus that of " No" at the last token. `v` is trained by Adam so that the answer (plus a learned bias)
tells windows where the target is active from windows where it is not (cross-entropy), plus an entropy term that
pushes `p` towards one token and a fluency term, the KL divergence of `p` from the judge's own next-token
distribution at the label's position. The text part of every prompt comes before the label, so it is run once
and its keys and values are reused at every step; a step runs only the label and the tokens after it.

Windows: the target is read at every token of each window (`[N, T]` token ids, no start token); a window's
activation is its maximum; the `active` most activating windows and `inactive` windows at or below a quantile
are shown as the `context` tokens ending at their most activating token. The top tokens of `p` are then scored as
hard labels: a threshold on the judge's answer is chosen on the fitted windows and the accuracy is taken on the
held-out ones (balanced, so chance is 0.5). The baseline is the rule "the window holds the most frequent
top-activating token" (the most activating token of each fitted active window, the most frequent of them).

Example:
    >>> from dreamy.models import load
    >>> lm = load("tiny:lm")
    >>> windows = torch.randint(3, 300, (24, 6), generator=torch.Generator().manual_seed(0))
    >>> found = token_labels(lm, "model.layers.1:3", windows, active=6, inactive=6, steps=2, context=4,
    ...                      answers=(" the", " a"))   # the tiny tokenizer has no " Yes" token
    >>> len(found.labels), 0.0 <= found.best.heldout_accuracy <= 1.0
    (5, True)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamy.core.memory import run_chunked
from dreamy.core.stepping import make_generator, progress as progress_bar
from dreamy.labels.config import LabelConfig
from dreamy.language.layout import start_token
from dreamy.language.states import cache_kwarg, cache_rows, output_cache, takes_logits_to_keep
from dreamy.language.tokens import allowed_tokens, decode_each
from dreamy.models import LoadedModel
from dreamy.sae.activations import with_start
from dreamy.targets import Probe

_WORD = re.compile(r"^ [A-Za-z]{2,}$")


@dataclass(frozen=True)
class LabelScore:
    """One label token: its probability in the final label distribution, the judge's accuracy with it on the
    fitted and the held-out windows, and the threshold on the judge's answer chosen on the fitted ones."""

    token: str
    id: int
    probability: float
    train_accuracy: float
    heldout_accuracy: float
    threshold: float


@dataclass(frozen=True)
class BaselineRule:
    """The rule "the window holds `token`" (the most frequent top-activating token of the fitted active windows):
    its accuracy, and the judge's accuracy with `token` as the label."""

    token: str
    id: int
    train_accuracy: float
    heldout_accuracy: float
    judge_train_accuracy: float
    judge_heldout_accuracy: float


@dataclass
class TokenLabels:
    """The result of `token_labels`: `labels` (the top tokens, most probable first), `best` (the one with the best
    accuracy on the fitted windows; its held-out accuracy is the label's figure), `baseline`, the relaxed label's own
    held-out accuracy, the loss history, the window counts and the settings."""

    target: str
    labels: list[LabelScore]
    baseline: BaselineRule | None
    soft_heldout_accuracy: float
    history: list[dict[str, Any]]
    counts: dict[str, Any]
    settings: dict[str, Any]
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def best(self) -> LabelScore:
        """The label with the highest accuracy on the fitted windows (ties: the more probable).

        Example:
            >>> labels = [LabelScore(" a", 1, 0.6, 0.7, 0.5, 0.0), LabelScore(" b", 2, 0.3, 0.9, 0.8, 0.0)]
            >>> TokenLabels("t", labels, None, 0.5, [], {}, {}).best.token
            ' b'
        """
        return max(self.labels, key=lambda label: (label.train_accuracy, label.probability))

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record: the labels, the best one, the baseline, counts, settings and the loss history.

        Example:
            >>> TokenLabels("t", [LabelScore(" a", 1, 1.0, 1.0, 0.75, 0.0)], None, 0.5, [], {}, {}).to_records()[0]["best"]["heldout_accuracy"]
            0.75
        """
        return [{"kind": "labels", "target": self.target, "labels": [asdict(label) for label in self.labels],
                 "best": asdict(self.best), "baseline": asdict(self.baseline) if self.baseline else None,
                 "soft_heldout_accuracy": self.soft_heldout_accuracy, "counts": dict(self.counts),
                 "settings": dict(self.settings), "examples": dict(self.examples), "history": list(self.history)}]


@torch.no_grad()
def window_activations(loaded: LoadedModel, target: "str | Sequence[str]", windows: Tensor, batch_size: int = 16) -> Tensor:
    """The target at every token of each window (run as start token + window; the start is dropped): `[N, T]` for
    one target, `[K, N, T]` for a list of K targets (one forward per batch serves them all).

    Example:
        >>> from dreamy.models import load
        >>> ones = torch.ones(3, 5, dtype=torch.long)
        >>> tuple(window_activations(load("tiny:lm"), "model.layers.0:2", ones).shape)
        (3, 5)
        >>> tuple(window_activations(load("tiny:lm"), ["model.layers.0:2", "logits:4"], ones).shape)
        (2, 3, 5)
    """
    targets = [target] if isinstance(target, str) else list(target)
    probe = Probe(loaded.model, targets, sequence_reduce="pos=-1")
    start = start_token(loaded.tokenizer)

    def one(rows: slice) -> Tensor:
        ids = with_start(windows[rows].long(), start).to(loaded.device)
        kept = probe(input_ids=ids, keep_activations=True, need_output=probe.reads_logits).activations
        maps = probe.maps(kept)
        for spec, values in zip(targets, maps):
            if values.ndim != 2:
                raise ValueError(f"target '{spec}' gives positions {tuple(values.shape[1:])}; a label needs a token site")
        return torch.stack([values[:, 1:].float().cpu() for values in maps])

    values = torch.cat(run_chunked(one, windows.shape[0], batch_size), dim=1)
    return values[0] if isinstance(target, str) else values


def best_threshold(values: Tensor, labels: Tensor) -> tuple[float, float]:
    """The threshold t that makes `values > t` agree with the 0/1 `labels` most often: (t, accuracy).

    Example:
        >>> best_threshold(torch.tensor([0.0, 0.5, 0.25, 1.0]), torch.tensor([0, 0, 1, 1]))
        (0.125, 0.75)
    """
    order = values.sort().values
    cuts = torch.cat([order[:1] - 1.0, (order[1:] + order[:-1]) / 2, order[-1:] + 1.0])
    correct = ((values[None, :] > cuts[:, None]) == labels.bool()[None, :]).double().mean(dim=1)
    best = int(correct.argmax())
    return float(cuts[best]), float(correct[best])


def _accuracy(values: Tensor, labels: Tensor, threshold: float) -> float:
    return float(((values > threshold) == labels.bool()).double().mean())  # 18/20 is 0.9, not 0.8999999


def label_candidates(tokenizer: Any, vocab_size: int, words_only: bool = True) -> Tensor:
    """Ids of the tokens a label may be: printable ASCII, not special; with `words_only` a space and a word of at
    least two letters.

    Example:
        >>> from dreamy.models import load
        >>> tok = load("tiny:lm").tokenizer
        >>> ids = label_candidates(tok, len(tok))
        >>> all(tok.decode([i]).startswith(" ") for i in ids.tolist())
        True
    """
    ids = allowed_tokens(tokenizer, ascii_only=True, vocab_size=vocab_size).nonzero().flatten()
    if not words_only:
        return ids
    words = [i for i, text in zip(ids.tolist(), decode_each(tokenizer, ids.tolist())) if _WORD.match(text)]
    if not words:
        raise ValueError("the tokenizer has no word tokens (a space and two or more letters); set words_only=False")
    return torch.tensor(words)


class Judge:
    """The language model answering the template for fixed windows: their text part is run once (keys and values
    kept); `answer(label_embeddings, rows)` runs the label and the rest of the prompt for some of the windows."""

    def __init__(self, loaded: LoadedModel, texts: Tensor, config: LabelConfig, batch_size: int) -> None:
        tokenizer, model = loaded.tokenizer, loaded.model
        before, rest = config.template.split("{text}", 1)
        middle, after = rest.split("{label}", 1)

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

        self.answers = []
        for answer in config.answers:
            tokens = ids(answer)
            if len(tokens) != 1:
                raise ValueError(f"answer {answer!r} is {len(tokens)} tokens for this tokenizer; give single-token answers")
            self.answers.append(tokens[0])
        head = torch.tensor([start_token(tokenizer)] + ids(before), dtype=torch.long)
        tail = torch.tensor(ids(middle), dtype=torch.long)
        rows = texts.shape[0]
        self.prefix = torch.cat([head.expand(rows, -1), texts.long().cpu(), tail.expand(rows, -1)], dim=1)
        self.model, self.loaded, self.batch_size = model, loaded, batch_size
        self.embeddings = model.get_input_embeddings().weight
        self.suffix = self.embeddings[torch.tensor(ids(after), dtype=torch.long, device=self.embeddings.device)].detach()
        self.cache_name = cache_kwarg(model)
        self.keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
        layers, priors = [], []
        with torch.no_grad():
            for first in range(0, rows, batch_size):
                chunk = self.prefix[first:first + batch_size].to(loaded.device)
                out = model(input_ids=chunk, use_cache=True, **self.keep)
                layers.append([(layer.keys.detach(), layer.values.detach()) for layer in output_cache(out).layers])
                priors.append(out.logits[:, -1].float().log_softmax(dim=-1))
        self.layers = [(torch.cat([part[i][0] for part in layers]), torch.cat([part[i][1] for part in layers]))
                       for i in range(len(layers[0]))]
        self.prior = torch.cat(priors)  # [rows, V]: the judge's next-token log-probabilities at the label slot

    def answer(self, label: Tensor, rows: Tensor) -> Tensor:
        """`[len(rows)]`: yes-minus-no logit of windows `rows` with label embedding(s) `label` (`[d]` or `[len(rows), d]`)."""
        count = rows.numel()
        label = label.reshape(-1, label.shape[-1]).to(self.embeddings.dtype).expand(count, -1)
        embeds = torch.cat([label[:, None], self.suffix[None].expand(count, -1, -1)], dim=1)
        cache = cache_rows(self.layers, rows.to(self.layers[0][0].device))
        out = self.model(inputs_embeds=embeds, use_cache=True, **{self.cache_name: cache}, **self.keep)
        logits = out.logits[:, -1].float()
        return logits[:, self.answers[0]] - logits[:, self.answers[1]]

    @torch.no_grad()
    def answer_all(self, label: Tensor, rows: Tensor) -> Tensor:
        """`answer` in chunks of the batch size, without gradients."""
        parts = [self.answer(label, rows[i:i + self.batch_size]) for i in range(0, rows.numel(), self.batch_size)]
        return torch.cat(parts).cpu()


def _select(values: Tensor, config: LabelConfig, generator: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """The active windows (most activating first) and the inactive ones drawn below the quantile; the cut."""
    peak = values.max(dim=1).values if values.ndim == 2 else values
    cut = float(torch.quantile(peak, config.inactive_quantile))
    order = peak.argsort(descending=True)
    active = order[peak[order] > cut][:config.active]
    low = (peak <= cut).nonzero().flatten()
    inactive = low[torch.randperm(low.numel(), generator=generator)[:config.inactive]]
    if active.numel() < 2 or inactive.numel() < 2:
        raise ValueError(f"need at least 2 active and 2 inactive windows, got {active.numel()} above the "
                         f"{config.inactive_quantile} quantile ({cut:.4g}) and {inactive.numel()} at or below it; "
                         "give more windows or change inactive_quantile")
    return active, inactive, cut


def _split(rows: Tensor, share: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    order = torch.randperm(rows.numel(), generator=generator)
    held = min(rows.numel() - 1, max(1, round(rows.numel() * share)))
    return rows[order[held:]], rows[order[:held]]


def token_labels(loaded: LoadedModel, target: str, windows: Tensor, config: LabelConfig | None = None, *,
                 activations: Tensor | None = None, progress: bool = False, **overrides: Any) -> TokenLabels:
    """Search for one-token labels of `target` on `windows` (`[N, T]` token ids, no start token); see the module
    docstring. `activations` (`[N]` per window, or `[N, T]` per token) stands in for reading the target.

    Example:
        >>> from dreamy.models import load
        >>> windows = torch.randint(3, 300, (20, 5), generator=torch.Generator().manual_seed(1))
        >>> found = token_labels(load("tiny:lm"), "planted", windows, active=5, inactive=5, steps=1, context=5,
        ...                      activations=torch.arange(20.0), answers=(" the", " a"))
        >>> found.counts["active"], found.counts["inactive"]
        (5, 5)
    """
    config = LabelConfig.build(config, **overrides)
    if loaded.kind != "language" or loaded.tokenizer is None:
        raise ValueError(f"token labels need a language model to judge them; '{loaded.name}' is a {loaded.kind} model")
    windows = windows.long().cpu()
    if windows.ndim != 2 or windows.shape[1] < 1:
        raise ValueError(f"windows must be token ids [N, T], got shape {tuple(windows.shape)}")
    values = window_activations(loaded, target, windows, config.batch_size) if activations is None else activations.float().cpu()
    if values.shape[0] != windows.shape[0] or (values.ndim == 2 and values.shape != windows.shape) or values.ndim > 2:
        raise ValueError(f"activations must be [N] or [N, T] for windows {tuple(windows.shape)}, got {tuple(values.shape)}")
    generator = make_generator(config.seed)
    active, inactive, cut = _select(values, config, generator)
    length = min(config.context, windows.shape[1])
    peaks = values.argmax(dim=1) if values.ndim == 2 else torch.full((windows.shape[0],), windows.shape[1] - 1)
    ends = peaks.clamp(min=length - 1)
    chosen = torch.cat([active, inactive])
    texts = torch.stack([windows[w, e - length + 1:e + 1] for w, e in zip(chosen.tolist(), ends[chosen].tolist())])
    peak_tokens = windows[chosen, peaks[chosen]]  # each window's most activating token
    labels = torch.cat([torch.ones(active.numel()), torch.zeros(inactive.numel())])
    local = torch.arange(chosen.numel())
    fit_a, held_a = _split(local[:active.numel()], config.heldout, generator)
    fit_i, held_i = _split(local[active.numel():], config.heldout, generator)
    fitted, heldout = torch.cat([fit_a, fit_i]), torch.cat([held_a, held_i])

    judge = Judge(loaded, texts, config, config.batch_size)
    candidates = label_candidates(loaded.tokenizer, judge.embeddings.shape[0], config.words_only).to(judge.embeddings.device)
    table = judge.embeddings[candidates].detach().float()
    prior = judge.prior[:, candidates].log_softmax(dim=-1)  # the judge's next-token distribution over the candidates
    logits = torch.zeros(candidates.numel(), device=table.device, requires_grad=True)
    bias = torch.zeros((), device=table.device, requires_grad=True)
    optimizer = torch.optim.Adam([logits, bias], lr=config.lr)
    history = []
    half = max(1, config.batch_size // 2)
    bar = progress_bar(config.steps, f"labels {target}", enabled=progress)
    with torch.enable_grad():
        for step in range(config.steps):
            rows = torch.cat([fit_a[torch.randperm(fit_a.numel(), generator=generator)[:half]],
                              fit_i[torch.randperm(fit_i.numel(), generator=generator)[:half]]])
            p = logits.softmax(dim=0)
            if config.relaxation == "gumbel":  # straight through: each window sees a sampled token, gradients the soft one
                noise = -torch.log(-torch.log(torch.rand(rows.numel(), p.numel(), generator=generator).clamp(1e-9, 1 - 1e-9)))
                soft = (logits[None] + noise.to(logits)).softmax(dim=1)
                hard = torch.nn.functional.one_hot(soft.argmax(dim=1), p.numel()).to(soft)
                mixed = hard - soft.detach() + soft
            else:
                mixed = p[None]
            answer = judge.answer(mixed @ table, rows.to(table.device))
            fit_loss = torch.nn.functional.binary_cross_entropy_with_logits(answer + bias, labels[rows].to(answer))
            log_p = logits.log_softmax(dim=0)
            entropy = -(p * log_p).sum()
            kl = (p * (log_p - prior[rows.to(prior.device)].mean(dim=0))).sum()
            loss = fit_loss + config.entropy_weight * entropy + config.fluency_weight * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            p = p.detach()
            top = int(p.argmax())
            figures = torch.stack([loss, fit_loss, entropy, kl, p[top]]).detach().tolist()  # one transfer per step
            history.append({"step": step, **dict(zip(("loss", "fit_loss", "entropy", "kl", "top_probability"), figures)),
                            "top_token": loaded.tokenizer.decode([int(candidates[top])])})
            bar.update(1)
    bar.close()

    def score(embedding: Tensor) -> tuple[float, float, float]:
        answers = judge.answer_all(embedding, local.to(table.device))
        threshold, train = best_threshold(answers[fitted], labels[fitted])
        return train, _accuracy(answers[heldout], labels[heldout], threshold), threshold

    with torch.no_grad():
        p = logits.softmax(dim=0)
        soft = score(p @ table)[1]
        found = []
        for index in p.topk(min(config.top, p.numel())).indices.tolist():
            token_id = int(candidates[index])
            train, held, threshold = score(table[index])
            found.append(LabelScore(loaded.tokenizer.decode([token_id]), token_id, float(p[index]), train, held, threshold))
        baseline = _baseline(loaded, judge, texts, peak_tokens, labels, fitted, heldout, active.numel(), score)
    decode = loaded.tokenizer.decode
    counts = {"windows": windows.shape[0], "active": active.numel(), "inactive": inactive.numel(),
              "fitted": fitted.numel(), "heldout": heldout.numel(), "context": length, "inactive_cut": cut,
              "candidates": candidates.numel()}
    examples = {"active": [decode(row) for row in texts[:min(5, active.numel())].tolist()],
                "inactive": [decode(row) for row in texts[active.numel():active.numel() + 3].tolist()]}
    return TokenLabels(target, found, baseline, soft, history, counts, config.to_dict(), examples)


def _baseline(loaded: LoadedModel, judge: Judge, texts: Tensor, peak_tokens: Tensor, labels: Tensor, fitted: Tensor,
              heldout: Tensor, n_active: int, score: Any) -> BaselineRule:
    """The most frequent top-activating token of the fitted active windows, as a containment rule and as a label."""
    tops = peak_tokens[fitted[fitted < n_active]]
    token = int(torch.mode(tops).values)
    holds = (texts == token).any(dim=1).float()
    rule_train = float((holds[fitted] == labels[fitted]).double().mean())
    rule_held = float((holds[heldout] == labels[heldout]).double().mean())
    judge_train, judge_held, _ = score(judge.embeddings[token].detach().float())
    return BaselineRule(loaded.tokenizer.decode([token]), token, rule_train, rule_held, judge_train, judge_held)


__all__ = ["BaselineRule", "Judge", "LabelScore", "TokenLabels", "best_threshold", "label_candidates", "token_labels",
           "window_activations"]
