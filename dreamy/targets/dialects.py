"""Hook-name dialects: TransformerLens hook names read on Hugging Face models.

Example:
    >>> is_transformerlens_name("blocks.9.hook_resid_post"), is_transformerlens_name("model.layers.9")
    (True, False)
"""

from __future__ import annotations

import re

_TL_NAME = re.compile(r"^(?:blocks\.\d+\.(?:hook_\w+|attn\.hook_\w+|mlp\.hook_\w+|ln\d\.hook_\w+)|ln_final\.hook_\w+|hook_embed|hook_pos_embed)$")


def is_transformerlens_name(path: str) -> bool:
    """True when `path` is spelled as a TransformerLens hook name (`blocks.L.hook_resid_post`, `ln_final.hook_normalized`).

    Example:
        >>> is_transformerlens_name("blocks.3.attn.hook_z")
        True
    """
    return bool(_TL_NAME.match(path))
