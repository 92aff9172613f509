"""Judges: classifiers that were never optimized against, asked what a class dream shows.

A dream that raises `logits:285` of the model it was dreamed on may only exploit that model. A judge
(another classifier over the same classes, e.g. `bundled:efficientnet-lite1` for dreams from Lite0)
sees the final image resized to its own input and says how probable the target class is, its rank
among all classes and its top-5. Judging applies to class-logit targets only: one-term `logits:N` or
`logprobs:N` specs.

Example:
    >>> import torch
    >>> from dreamy.models import load
    >>> tiny = load("tiny:cnn")
    >>> verdict = judge_images(tiny, torch.rand(2, 3, 32, 32), [3, 4])[0]
    >>> verdict.judge, verdict.target, 1 <= verdict.rank <= 10, len(verdict.top5)
    ('tiny:cnn', 3, True, 5)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamy.core.frozen import frozen
from dreamy.models import LoadedModel


class JudgeError(ValueError):
    """A judge cannot judge these dreams (not a classifier, or other classes than the dreamed model)."""


@dataclass(frozen=True)
class Verdict:
    """What one judge says about one image dreamed for class `target`.

    `probability` is the judge's softmax probability of the target class, `rank` its rank (1 = the
    judge's top class), `top5` the names of the judge's five most probable classes.
    """

    judge: str
    target: int
    label: str
    probability: float
    rank: int
    top5: list[str]

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict.

        Example:
            >>> Verdict("j", 1, "b", 0.5, 1, ["b", "a"]).to_record()["rank"]
            1
        """
        return asdict(self)


def check_judge(judge: LoadedModel, n_classes: int | None = None) -> None:
    """Raise `JudgeError` unless `judge` is a vision classifier (with `n_classes` classes, when given).

    Example:
        >>> from dreamy.models import load
        >>> check_judge(load("tiny:cnn"), 10)
    """
    if judge.kind != "vision" or not judge.class_names:
        raise JudgeError(f"judge {judge.name} is not an image classifier with class names; use e.g. "
                         "bundled:efficientnet-lite1")
    if n_classes is not None and len(judge.class_names) != n_classes:
        raise JudgeError(f"judge {judge.name} has {len(judge.class_names)} classes but the dreamed model has {n_classes}; "
                         "a judge must classify the same classes")


@torch.no_grad()
def judge_images(judge: LoadedModel, images: Tensor, targets: Sequence[int], *, batch_size: int = 16) -> list[Verdict]:
    """Judge `[n, 3, H, W]` images in [0, 1], image i dreamed for class `targets[i]`; resized to the judge's input.
    The judge runs in eval mode (`core.frozen`) and is left as it was.

    Example:
        >>> from dreamy.models import load
        >>> [v.target for v in judge_images(load("tiny:cnn"), torch.rand(2, 3, 8, 8), [0, 9])]
        [0, 9]
    """
    check_judge(judge)
    if images.ndim != 4 or images.shape[1] != 3 or len(images) != len(targets):
        raise JudgeError(f"judge_images needs [n, 3, H, W] images and one target class per image; got "
                         f"{tuple(images.shape)} and {len(targets)} target(s)")
    n_classes = len(judge.class_names)
    bad = [t for t in targets if not 0 <= int(t) < n_classes]
    if bad:
        raise JudgeError(f"class {bad[0]} is out of range for judge {judge.name} with classes 0..{n_classes - 1}")
    verdicts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].to(judge.device, torch.float32)
        batch = judge.preprocess.normalize(chunk).contiguous(memory_format=torch.channels_last)
        with frozen(judge.model):  # a judge in train mode neither updates its statistics nor drops out
            output = judge.model(batch)
        logits = output.logits if hasattr(output, "logits") else output
        probs = logits.float().softmax(dim=-1).cpu()
        top5 = probs.topk(min(5, n_classes), dim=-1).indices
        for row, target in enumerate(targets[start : start + batch_size]):
            p = probs[row, int(target)]
            rank = int((probs[row] > p).sum()) + 1
            verdicts.append(Verdict(judge.name, int(target), judge.class_names[int(target)], float(p), rank,
                                    [judge.class_names[int(i)] for i in top5[row]]))
    return verdicts


__all__ = ["JudgeError", "Verdict", "check_judge", "judge_images"]
