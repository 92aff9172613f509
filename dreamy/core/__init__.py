"""What every layer shares and nothing in dreamy sits below: configs, step loops, files, PNGs, memory,
the shape of a run's records (`records`).

Example:
    >>> from dreamy.core.files import safe_name
    >>> safe_name("conv3:1")
    'conv3_1-74bf4bd9'
"""
