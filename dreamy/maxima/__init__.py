"""Dataset maxima: the real inputs that drive each target hardest, found in one streamed pass and cached.

`image_maxima` streams an image set (`dreamy.datasets.open_images`) and `text_maxima` a text corpus
(`dreamy.datasets.open_text`, 64-token windows) through one early-exiting `Probe` for all targets,
keeping a streaming top-k per target. Results land in an on-disk cache that the gallery reads with
`load_cached_maxima(cache_dir, model_name, target)`. `matched_windows` gives a prompt search the windows of its
own length to start from, before it runs.

Example:
    >>> import tempfile
    >>> from dreamy.models import load
    >>> folder = tempfile.mkdtemp()
    >>> _ = image_maxima(load("tiny:cnn"), ["conv3:0"], "photos", k=2, limit=8, cache_dir=folder, progress=False)
    >>> load_cached_maxima(folder, "tiny:cnn", "conv3:0").dataset
    'photos[:8]'
"""

from dreamy.maxima.images import image_maxima
from dreamy.maxima.matched import matched_windows
from dreamy.maxima.records import (Example, Maxima, MaximaResults, default_cache_dir, entry_dir, list_cached_maxima, load_cached_maxima,
                                   save_maxima)
from dreamy.maxima.text import corpus_xentropy, text_maxima
from dreamy.maxima.topk import StreamingTopK, summarize
from dreamy.maxima.verdict import near_copy_distance, token_edit_distance, verdict_of

__all__ = ["Example", "Maxima", "MaximaResults", "StreamingTopK", "corpus_xentropy", "default_cache_dir", "entry_dir", "image_maxima",
           "list_cached_maxima", "load_cached_maxima", "matched_windows", "near_copy_distance", "save_maxima", "summarize", "text_maxima",
           "token_edit_distance", "verdict_of"]
