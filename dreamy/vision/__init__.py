"""Vision dreaming: gradient ascent on images with parametrizations, transforms and regularizers.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.vision import dream
    >>> dream(load("tiny:cnn"), ["head:3"], steps=3, progress=False).images.shape
    torch.Size([1, 3, 32, 32])
"""

from dreamy.vision.config import DreamConfig
from dreamy.vision.facets import dream_facets, facet_starts, kmeans
from dreamy.vision.generators import GeneratorParam, RandomDecoder, random_decoder_param
from dreamy.vision.judges import judge_images
from dreamy.vision.param import FourierParam, ImageParam, MacoParam, PixelParam, magnitude_of, make_param
from dreamy.vision.prior import DeepImagePrior
from dreamy.vision.regularizers import pull_to
from dreamy.vision.render import DreamResult, dream
from dreamy.vision.transforms import Transforms

__all__ = ["DeepImagePrior", "DreamConfig", "DreamResult", "FourierParam", "GeneratorParam", "ImageParam", "MacoParam", "PixelParam",
           "RandomDecoder", "Transforms", "dream", "dream_facets", "facet_starts", "judge_images", "kmeans",
           "magnitude_of", "make_param", "pull_to", "random_decoder_param"]
