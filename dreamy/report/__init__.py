"""Reports: a run's gallery page (`page`), its image cards and prompt feature dashboards, plots and HTML helpers.

Example:
    >>> from dreamy.report import render_index
    >>> "1 target(s)" in render_index([{"kind": "image", "target": "conv1:0", "images": []}])
    True
"""

from dreamy.report.page import gallery_title, render_index, write_index

__all__ = ["gallery_title", "render_index", "write_index"]
