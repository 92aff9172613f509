"""Does a direction act? Project it out of a site and measure how a two-answer readout changes.

Tigges et al. (2023) ablate the sentiment direction and report the share of the model's above-chance accuracy
that is lost. Here the readout is a logit difference between two single-token answers (" positive" minus
" negative") at the last token of a prompt made from each sentence of a contrast pair. The model's answer is the
larger of the two logits, and its classification accuracy over both sentences of every pair is the paper's
measure (chance 0.5); the pair accuracy, the share of pairs whose positive sentence reads higher, is blind to a
shift of every readout to one side and is reported beside it. Directional ablation removes the direction's
component, `a - (a . u) u`, at every position of the site after the start token, in every forward.
`share_lost = (clean - ablated) / (clean - 0.5)`; the same for random directions is the control.

Example:
    >>> from dreamy.models import load
    >>> lm = load("tiny:lm")
    >>> pairs = [("The cat sat.", "The dog ran."), ("A bird sang.", "A fish swam.")]
    >>> check = ablation_check(lm, "model.layers.0", torch.ones(64), pairs, answers=(" the", " a"), random_directions=1)
    >>> check.n_pairs, 0.0 <= check.accuracy_clean <= 1.0
    (2, True)
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from dreamy.core.stepping import make_generator
from dreamy.directions.examples import bare_site, length_batches, token_rows
from dreamy.language.states import takes_logits_to_keep
from dreamy.models import LoadedModel
from dreamy.sae.splice import after_start, edit_site


def project_out(direction: Tensor) -> Callable[[Tensor], Tensor]:
    """`a -> a - (a . u) u` on the last dimension, `u` the unit vector along `direction`.

    Example:
        >>> project_out(torch.tensor([1.0, 0.0]))(torch.tensor([[3.0, 4.0]])).tolist()
        [[0.0, 4.0]]
    """
    unit = direction.detach().float().reshape(-1)
    norm = float(unit.norm())
    if norm == 0.0:
        raise ValueError("cannot project out a zero direction")
    unit = unit / norm

    def ablate(activation: Tensor) -> Tensor:
        u = unit.to(activation)
        if activation.shape[-1] != u.numel():
            raise ValueError(f"the direction has {u.numel()} values but the site has {activation.shape[-1]} features")
        return activation - (activation @ u).unsqueeze(-1) * u
    return ablate


@contextmanager
def ablated(loaded: LoadedModel, site: "str | Sequence[str]", direction: Tensor) -> Iterator[None]:
    """While open, every forward of `loaded` has `direction` projected out of `site` (or each of a list of sites;
    language models: every position but the start token).

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm")
        >>> ids = torch.tensor([[0, 5, 6]])
        >>> with ablated(lm, "model.layers.1", torch.ones(64)):
        ...     edited = lm.model(input_ids=ids).logits
        >>> bool(torch.allclose(edited, lm.model(input_ids=ids).logits))
        False
    """
    edit = project_out(direction)
    edit = after_start(edit) if loaded.kind == "language" else edit
    with ExitStack() as stack:
        for where in ([site] if isinstance(site, str) else list(site)):
            stack.enter_context(edit_site(loaded.model, bare_site(where), edit))
        yield


def answer_ids(loaded: LoadedModel, answers: Sequence[str]) -> list[int]:
    """The token id of each answer text, refusing answers that are not exactly one token.

    Example:
        >>> from dreamy.models import load
        >>> len(answer_ids(load("tiny:lm"), [" the", " a"]))
        2
    """
    ids = []
    for answer in answers:
        tokens = loaded.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise ValueError(f"answer {answer!r} is {len(tokens)} tokens for this tokenizer; give single-token answers "
                             "(e.g. ' positive' with a leading space)")
        ids.append(tokens[0])
    return ids


@torch.no_grad()
def answer_logit_difference(loaded: LoadedModel, prompts: Sequence[str], answers: Sequence[str] = (" positive", " negative"),
                            batch_size: int = 16) -> Tensor:
    """`[N]`: logit of `answers[0]` minus logit of `answers[1]` after each prompt (start token prepended).

    Example:
        >>> from dreamy.models import load
        >>> tuple(answer_logit_difference(load("tiny:lm"), ["The cat", "A dog ran"], (" the", " a")).shape)
        (2,)
    """
    first, second = answer_ids(loaded, answers)
    rows = token_rows(loaded, prompts)
    out = torch.zeros(len(rows))
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(loaded.model) else {}
    for indices in length_batches(rows, batch_size):
        ids = torch.tensor([rows[i] for i in indices], device=loaded.device)
        logits = loaded.model(input_ids=ids, **keep).logits[:, -1].float()
        out[indices] = (logits[:, first] - logits[:, second]).cpu()
    return out


def pair_accuracy(positive: Tensor, negative: Tensor) -> float:
    """The share of pairs whose positive member has the larger readout (ties count half).

    Example:
        >>> pair_accuracy(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]))
        0.5
    """
    wins = (positive > negative).float() + 0.5 * (positive == negative).float()
    return float(wins.mean())


def share_lost(clean: float, ablated: float) -> float | None:
    """The share of above-chance accuracy lost: `(clean - ablated) / (clean - 0.5)` (None when clean is at chance).

    Example:
        >>> share_lost(0.9, 0.6)
        0.75
    """
    if clean <= 0.5:
        return None
    return round((clean - ablated) / (clean - 0.5), 12)


@dataclass
class AblationResult:
    """Readouts of held-out pairs with and without the direction projected out (see the module docstring).

    `accuracy_*`: the model's classification accuracy, its answer being the larger of the two answer logits (the
    paper's measure; chance 0.5 on balanced pairs); `pair_accuracy_*`: the share of pairs whose positive sentence
    reads higher (blind to a shift of every readout to one side); `share_lost` / `pair_share_lost`: the share of
    above-chance accuracy the ablation loses (`random_*` the same for random directions, the control); `gap_*`: the
    mean readout difference between a pair's members, `gap_lost` the share of the clean gap the ablation removes.
    `site` names the ablated sites, comma-separated; `readouts` holds the per-sentence values.
    """

    site: str
    answers: tuple[str, str]
    template: str
    n_pairs: int
    accuracy_clean: float
    accuracy_ablated: float
    accuracy_random: list[float]
    pair_accuracy_clean: float
    pair_accuracy_ablated: float
    pair_accuracy_random: list[float]
    gap_clean: float
    gap_ablated: float
    gap_random: list[float]
    readouts: dict[str, list[float]] = field(default_factory=dict)

    @property
    def share_lost(self) -> float | None:
        """The share of above-chance classification accuracy the ablation loses."""
        return share_lost(self.accuracy_clean, self.accuracy_ablated)

    @property
    def random_share_lost(self) -> list[float | None]:
        """`share_lost` of each random direction."""
        return [share_lost(self.accuracy_clean, a) for a in self.accuracy_random]

    @property
    def pair_share_lost(self) -> float | None:
        """The share of above-chance pair accuracy the ablation loses."""
        return share_lost(self.pair_accuracy_clean, self.pair_accuracy_ablated)

    @property
    def gap_lost(self) -> float | None:
        """The share of the clean readout gap that the ablation removes, `1 - gap_ablated / gap_clean`.

        Example:
            >>> AblationResult("s", ("a", "b"), "{text}", 1, 1.0, 0.5, [], 1.0, 1.0, [], 2.0, 0.5, []).gap_lost
            0.75
        """
        return None if self.gap_clean <= 0 else 1.0 - self.gap_ablated / self.gap_clean

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record of the check (readouts included), with the derived shares.

        Example:
            >>> check = AblationResult("s", ("a", "b"), "{text}", 1, 1.0, 0.5, [1.0], 1.0, 1.0, [1.0], 2.0, 0.1, [2.0])
            >>> check.to_records()[0]["share_lost"], check.to_records()[0]["random_share_lost"]
            (1.0, [0.0])
        """
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["answers"] = list(self.answers)
        for name in ("share_lost", "random_share_lost", "pair_share_lost", "gap_lost"):
            record[name] = getattr(self, name)
        return [{"kind": "ablation", **record}]


def _sign_accuracy(positive: Tensor, negative: Tensor) -> float:
    return float(torch.cat([(positive > 0).float(), (negative <= 0).float()]).mean())


def ablation_check(loaded: LoadedModel, site: "str | Sequence[str]", direction: Tensor, pairs: Sequence[tuple[str, str]], *,
                   template: str = "{text}", answers: Sequence[str] = (" positive", " negative"),
                   random_directions: int = 2, seed: int = 0, batch_size: int = 16) -> AblationResult:
    """Readouts of `pairs` (positive, negative) put into `template` (`{text}` marks the sentence) with and without
    `direction` projected out of `site` (or of every site of a list, e.g. the site and each later block), and with
    each of `random_directions` seeded random directions projected out instead; see the module docstring.

    Example:
        >>> from dreamy.models import load
        >>> check = ablation_check(load("tiny:lm"), "model.layers.1", torch.ones(64), [("Good.", "Bad.")] * 2,
        ...                        answers=(" the", " a"), random_directions=0)
        >>> check.accuracy_random, check.n_pairs
        ([], 2)
    """
    if "{text}" not in template:
        raise ValueError(f"template {template!r} has no {{text}} for the sentence")
    if len(answers) != 2:
        raise ValueError(f"give two answers (the readout is their logit difference), got {list(answers)}")
    if not pairs:
        raise ValueError("no pairs to check; give at least one (positive, negative) pair")
    where = [str(bare_site(s)) for s in ([site] if isinstance(site, str) else site)]
    if not where:
        raise ValueError("no site to ablate; give a site or a list of sites")
    prompts = [template.replace("{text}", text) for pair in pairs for text in pair]

    def readout() -> tuple[Tensor, Tensor]:
        values = answer_logit_difference(loaded, prompts, answers, batch_size)
        return values[0::2], values[1::2]

    clean_pos, clean_neg = readout()
    with ablated(loaded, where, direction):
        abl_pos, abl_neg = readout()
    generator = make_generator(seed)
    random_sign, random_pair, random_gap = [], [], []
    for _ in range(random_directions):
        vector = torch.randn(direction.numel(), generator=generator)
        with ablated(loaded, where, vector):
            rnd_pos, rnd_neg = readout()
        random_sign.append(_sign_accuracy(rnd_pos, rnd_neg))
        random_pair.append(pair_accuracy(rnd_pos, rnd_neg))
        random_gap.append(float((rnd_pos - rnd_neg).mean()))
    readouts = {"clean_positive": clean_pos.tolist(), "clean_negative": clean_neg.tolist(),
                "ablated_positive": abl_pos.tolist(), "ablated_negative": abl_neg.tolist()}
    return AblationResult(
        site=where[0] if len(where) == 1 else ",".join(where), answers=(answers[0], answers[1]), template=template,
        n_pairs=len(pairs), accuracy_clean=_sign_accuracy(clean_pos, clean_neg),
        accuracy_ablated=_sign_accuracy(abl_pos, abl_neg), accuracy_random=random_sign,
        pair_accuracy_clean=pair_accuracy(clean_pos, clean_neg), pair_accuracy_ablated=pair_accuracy(abl_pos, abl_neg),
        pair_accuracy_random=random_pair, gap_clean=float((clean_pos - clean_neg).mean()),
        gap_ablated=float((abl_pos - abl_neg).mean()), gap_random=random_gap, readouts=readouts)


__all__ = ["AblationResult", "ablated", "ablation_check", "answer_ids", "answer_logit_difference", "pair_accuracy",
           "project_out", "share_lost"]
