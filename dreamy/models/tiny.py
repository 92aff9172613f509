"""Tiny seeded random models for tests and smoke runs: a small CNN and a 2-layer Llama LM.

Both are deterministic (their own `torch.Generator`, no global RNG) and need no download; the LM's
byte-level BPE tokenizer is trained in milliseconds on a short built-in text.

Example:
    >>> net = tiny_cnn()
    >>> net(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CORPUS = """The cat sat on the mat. The dog ran in the park and the bird sang in the tree.
A small model learns words, numbers like 1 2 3 and 42, and punctuation: commas, periods; dashes - too!
Paris is the capital of France. Rome is in Italy. The sun is hot and the moon is bright at night.
She wrote a letter to her friend, and he read a book about the sea, the stars and the old city.
Dreams show what a neuron wants to see. Activation maximization finds inputs that excite a unit.
"""


def _init_(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim > 1:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return module


class TinyCNN(nn.Module):
    """Three conv blocks, a global pool and a linear head: sites conv1, conv2, conv3, pool, head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.conv3 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv3(self.conv2(self.conv1(x)))))


def tiny_cnn(seed: int = 0) -> TinyCNN:
    """A seeded `TinyCNN` taking normalized 3x32x32 images.

    Example:
        >>> torch.equal(tiny_cnn().head.weight, tiny_cnn().head.weight)
        True
    """
    return _init_(TinyCNN(), seed)


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (about 300 tokens) trained on a built-in text; no download.

    Example:
        >>> tok = tiny_tokenizer()
        >>> tok.decode(tok("The cat sat.")["input_ids"])
        'The cat sat.'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<unk>", pad_token="<|endoftext|>")


def tiny_lm(seed: int = 0) -> tuple[nn.Module, Any]:
    """A seeded 2-layer `LlamaForCausalLM` (hidden 64) and its tiny tokenizer.

    Example:
        >>> model, tok = tiny_lm()
        >>> model.config.num_hidden_layers
        2
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    _init_(model, seed)
    with torch.no_grad():  # small embeddings keep the random model's logits in a sane range
        model.model.embed_tokens.weight.mul_(0.1)
    return model, tokenizer
