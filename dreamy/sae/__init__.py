"""Sparse autoencoders end to end: train a TopK SAE on a language model's site, read and write the
SAELens folder layout, measure it, and describe what a feature does to the output.

- `SAE` (model.py): encode (ReLU, JumpReLU, TopK) and decode.
- `save`, `load` (files.py): SAELens folders (`cfg.json` + `sae_weights.safetensors`).
- `train_sae` (train.py) with `SAETrainConfig` (config.py): Gao et al.'s TopK SAE with AuxK, streamed from text corpora, checkpoints, resume.
- `evaluate` (metrics.py): FVE, L0 and loss recovered on held-out text.
- `output_direction`, `vocab_projection`, `token_change` (describe.py): output-side descriptions.
A folder written here is a target unit too: `model.layers.9:sae=sae-l9#12`.

Example:
    >>> import tempfile, torch
    >>> sae = SAE.initialized(8, 16, 4, generator=torch.Generator().manual_seed(0))
    >>> load(save(sae, tempfile.mkdtemp())).d_sae
    16
"""

from dreamy.sae.config import SAETrainConfig
from dreamy.sae.describe import OutputTokens, TokenScore, output_direction, token_change, vocab_projection
from dreamy.sae.files import load, save
from dreamy.sae.metrics import evaluate
from dreamy.sae.model import SAE
from dreamy.sae.train import TrainResult, train_sae

__all__ = ["SAE", "SAETrainConfig", "OutputTokens", "TokenScore", "TrainResult", "evaluate", "load", "output_direction", "save",
           "token_change", "train_sae", "vocab_projection"]
