"""The target interface: spec strings -> frozen targets -> a probe that scores hooked activations.

Example:
    >>> import torch
    >>> from dreamy.targets import Probe, parse
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> Probe(net, [parse("1:2")])(torch.rand(2, 3, 8, 8)).scores.shape
    torch.Size([2, 1])
"""

from dreamy.targets.check import check_targets, fixed_position_errors
from dreamy.targets.errors import SpecError, TargetError
from dreamy.targets.probe import Probe, ProbeResult, features_last, list_sites, resolve_module, score_map
from dreamy.targets.spec import Site, Target, Term, class_index, expand, parse
from dreamy.targets.units import Direction, Head, Neuron, SAEFeature, Unit, load_unit

__all__ = [
    "Direction", "Head", "Neuron", "Probe", "ProbeResult", "SAEFeature", "Site", "SpecError", "Target", "check_targets",
    "fixed_position_errors", "TargetError", "Term", "Unit", "class_index", "expand", "features_last", "list_sites",
    "load_unit", "parse", "resolve_module", "score_map",
]
