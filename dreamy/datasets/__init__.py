"""Where dataset maxima come from: image sets and text corpora that install from a package, or your own files.

Image sets (`open_images`, `dreamy.datasets.images`): `photos`, `fashion-mnist[:test|train|all]`, or any folder
of images. Text corpora (`open_text`, `dreamy.datasets.text`): `fortunes`, `bible-kjv`, any text file or folder,
or a table with a text column (`dreamy.datasets.tables`: a `datasets` folder, `.jsonl`, `.parquet`, `.csv`,
`hf:NAME[:SPLIT]`). Both take a limit (images / words) that becomes part of the name. A corpus' tokens, cut to a
token budget and cached per tokenizer: `token_stream` (`dreamy.datasets.tokens`).

Example:
    >>> from dreamy.datasets import open_images, open_text
    >>> open_images("photos", limit=5).name, open_text("fortunes", max_words=10).name
    ('photos[:5]', 'fortunes[:10w]')
"""

from dreamy.datasets.errors import DatasetError
from dreamy.datasets.images import (FASHION_CLASSES, FASHION_MNIST_DIR, IMAGE_SETS, IMAGE_SUFFIXES, SKIMAGE_PHOTOS,
                                    ImageSet, fashion_mnist, image_folder, open_images, sample_photos, to_tensor)
from dreamy.datasets.tables import TABLE_SUFFIXES, is_table, read_table
from dreamy.datasets.text import (FORTUNES_DIR, TEXT_CORPORA, TextCorpus, bible_kjv, fortunes, open_text, read_until,
                                  text_files)
from dreamy.datasets.tokens import TokenStream, limit_tokens, token_stream, tokenizer_identity

__all__ = ["DatasetError", "FASHION_CLASSES", "FASHION_MNIST_DIR", "FORTUNES_DIR", "IMAGE_SETS", "IMAGE_SUFFIXES",
           "ImageSet", "SKIMAGE_PHOTOS", "TABLE_SUFFIXES", "TEXT_CORPORA", "TextCorpus", "TokenStream", "bible_kjv",
           "fashion_mnist", "fortunes", "image_folder", "is_table", "limit_tokens", "open_images", "open_text",
           "read_table", "read_until", "sample_photos", "text_files", "to_tensor", "token_stream", "tokenizer_identity"]
