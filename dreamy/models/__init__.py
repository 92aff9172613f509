"""Models by name (`load(name) -> LoadedModel`), what a run knows of a name before loading it, and tiny test models.

Example:
    >>> from dreamy.models import load
    >>> loaded = load("tiny:cnn")
    >>> loaded.kind, loaded.preprocess.size
    ('vision', (32, 32))
"""

from dreamy.models.loading import (EFFICIENTNET_LITES, IMAGENET_MEAN, IMAGENET_STD, KINDS_BY_NAME, NAMES, PREFIXES,
                                   LoadedModel, ModelLoadError, Preprocess, cache_dir, check_device,
                                   imagenet_class_names, kind_of, load)

__all__ = ["EFFICIENTNET_LITES", "IMAGENET_MEAN", "IMAGENET_STD", "KINDS_BY_NAME", "LoadedModel", "ModelLoadError",
           "NAMES", "PREFIXES", "Preprocess", "cache_dir", "check_device", "imagenet_class_names", "kind_of", "load"]
