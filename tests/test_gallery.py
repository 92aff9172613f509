"""The gallery page: dreams, maxima, frontier tables, errors, escaping."""

import torch
from PIL import Image

from dreamy.gallery import render_index, write_index
from dreamy.png import png_bytes
from dreamy.results import write_atomic


def test_image_records_show_dreams_and_maxima(tmp_path):
    write_atomic(tmp_path / "images" / "a.png", png_bytes(torch.rand(3, 8, 8)))  # as batches and the CLI write them
    assert Image.open(tmp_path / "images" / "a.png").size == (8, 8)
    page = render_index([{"kind": "image", "target": "logits:3", "label": "Egyptian <cat>", "model": "m", "method": "fourier",
                          "activation": 3.5, "images": ["images/a.png"], "activations": [3.5],
                          "maxima": [{"image": "maxima/x.png", "activation": 1.25, "label": "chelsea"}],
                          "maxima_dataset": "photos"}])
    assert "images/a.png" in page and "maxima/x.png" in page and "3.5" in page and "1.25" in page
    assert "most activating images (photos)" in page and "chelsea" in page
    assert "Egyptian &lt;cat&gt;" in page
    assert 'class="beats">dream 3.5 vs best dataset example 1.25 (2.8x)' in page


def test_a_dream_below_the_dataset_maximum_is_marked():
    page = render_index([{"kind": "image", "target": "c:1", "activation": 1.0, "images": ["a.png"],
                          "maxima": [{"image": "m.png", "activation": 2.0}]}])
    assert 'class="short">dream 1 vs best dataset example 2 (0.5x)' in page


def test_prompt_records_shade_tokens_and_escape_everything(tmp_path):
    record = {"target": "logits:<b>", "model": "m", "method": "epo", "frontier": [
        {"text": "a<img src=x>", "tokens": ["a", "<img src=x>"], "token_attribution": [0.1, -2.0],
         "activation": 2.0, "xentropy": 5.0}],
        "maxima": [{"text": "</table>", "tokens": ["</table>"], "token_activations": [1.0], "activation": 1.0, "xentropy": 3.0}]}
    path = write_index(tmp_path, [record])
    page = path.read_text()
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page and "logits:&lt;b&gt;" in page
    assert "</table></table>" not in page.replace("&lt;/table&gt;", "")
    assert "rgba(40,110,230" in page  # negative attribution shaded blue


def test_error_records_are_shown():
    page = render_index([{"target": "x:1", "method": "image", "error": "boom <here>"}])
    assert "failed: boom &lt;here&gt;" in page
