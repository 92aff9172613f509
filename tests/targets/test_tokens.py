"""Token sites of vision transformers: the default averages patch tokens, /cls reads the class token, /tokens=i one patch."""

import pytest
import torch
from torch import nn

from dreamy.targets import Probe, TargetError
from dreamy.targets.check import check_targets


class Tokens(nn.Module):
    """Returns its input `[B, T, D]` through an identity module named `blocks`."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Identity()

    def forward(self, x):
        return self.blocks(x)


X = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 class token + 4 patch tokens, 3 features


def score(spec, **options):
    return Probe(Tokens(), [spec], **options)(X).scores[:, 0]


def test_default_and_explicit_reductions_skip_the_class_token():
    assert torch.allclose(score("blocks:1", patch_tokens=4), X[:, 1:, 1].mean(1))
    assert torch.allclose(score("blocks:1/max", patch_tokens=4), X[:, 1:, 1].max(1).values)
    assert torch.allclose(score("blocks:1/sum", patch_tokens=4), X[:, 1:, 1].sum(1))
    assert torch.allclose(score("blocks:1", patch_tokens=5), X[:, :, 1].mean(1))  # no prefix: every token
    assert torch.allclose(score("blocks:1"), X[:, :, 1].mean(1))  # the probe does not know the patches


def test_cls_and_tokens_pick_single_tokens():
    assert torch.equal(score("blocks:2/cls", patch_tokens=4), X[:, 0, 2])
    assert torch.equal(score("blocks:2/tokens=0", patch_tokens=4), X[:, 1, 2])
    assert torch.equal(score("blocks:2/tokens=-1", patch_tokens=4), X[:, 4, 2])
    assert torch.equal(score("blocks:2/pos=0", patch_tokens=4), X[:, 0, 2])  # pos=N indexes every token
    assert torch.equal(score("blocks:2/tokens=0"), X[:, 0, 2])


def test_language_sequences_keep_their_last_token_default():
    assert torch.equal(score("blocks:2", sequence_reduce="pos=-1"), X[:, -1, 2])


def test_token_reductions_are_checked_against_the_site():
    with pytest.raises(TargetError, match="out of range for site 'blocks' with 4 patch tokens"):
        score("blocks:2/tokens=4", patch_tokens=4)
    with pytest.raises(TargetError, match="no class token"):
        score("blocks:2/cls", patch_tokens=5)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(TargetError, match=r"reads a token site \[B, tokens, D\]"):
        Probe(conv, ["0:1/cls"])(torch.zeros(1, 3, 8, 8))
    errors = check_targets(Tokens(), ["blocks:1/tokens=3", "blocks:1/tokens=4"], X, patch_tokens=4)
    assert [spec for spec, _ in errors] == ["blocks:1/tokens=4"]
