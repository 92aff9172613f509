"""Language dreaming: GCG and EPO prompt search with a fluency Pareto front, for one target or many packed.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.language import epo
    >>> result = epo(load("tiny:lm"), "logits:7", n_tokens=3, iters=1, population=2, children=4, progress=False)
    >>> result.best is not None
    True
"""

from dreamy.language.config import EPOConfig, GCGConfig, PromptConfig
from dreamy.language.epo import epo, epo_many
from dreamy.language.gcg import gcg, gcg_many
from dreamy.language.result import FrontierPoint, PromptResult, PromptResults

__all__ = ["EPOConfig", "FrontierPoint", "GCGConfig", "PromptConfig", "PromptResult", "PromptResults", "epo", "epo_many",
           "gcg", "gcg_many"]
