"""The gallery page: dreams, maxima, frontier tables, errors, escaping."""

import torch
from PIL import Image

from dreamy.report.page import render_index, write_index
from dreamy.core.png import png_bytes
from dreamy.core.files import write_atomic


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
    assert "&lt;/table&gt;" in page and page.count("<table") == page.count("</table>")  # the window's text closes no table
    assert "rgba(40,110,230" in page  # negative attribution shaded blue


def test_error_records_are_shown():
    page = render_index([{"target": "x:1", "method": "image", "error": "boom <here>"}])
    assert "failed: boom &lt;here&gt;" in page


def test_dreams_open_at_full_resolution_and_class_dreams_are_large():
    page = render_index([{"kind": "image", "target": "logits:285", "activation": 9.0, "images": ["images/cat.png"]},
                         {"kind": "image", "target": "conv3:1", "activation": 2.0, "images": ["images/c.png"]}])
    assert '<a href="images/cat.png" target="_blank"' in page and '<a href="images/c.png" target="_blank"' in page
    assert page.index('class="class"') < page.index("images/cat.png") < page.index('class="plain"') < page.index("images/c.png")
    assert ".class figure img{width:224px;height:224px}" in page


def test_judges_verdicts_follow_the_dataset_verdict():
    verdicts = [{"judge": "bundled:efficientnet-lite1", "probability": 0.93, "rank": 1, "top5": ["Egyptian cat", "tabby"]},
                {"judge": "bundled:efficientnet-lite2", "probability": 0.01, "rank": 40, "top5": ["<lynx>"]}]
    page = render_index([{"kind": "image", "target": "logits:285", "activation": 9.0, "images": ["a.png"],
                          "maxima": [{"image": "m.png", "activation": 2.0}], "judges": verdicts}])
    dataset = page.index("best dataset example")
    lite1 = page.index('class="beats" title="top-5 of efficientnet-lite1: Egyptian cat, tabby">efficientnet-lite1: p=0.93, rank 1')
    lite2 = page.index('class="short" title="top-5 of efficientnet-lite2: &lt;lynx&gt;">efficientnet-lite2: p=0.01, rank 40')
    assert dataset < lite1 < lite2 and "<lynx>" not in page


def test_a_layer_range_gets_one_sheet_of_all_channels_linked_to_their_sections():
    records = [{"kind": "image", "target": f"_blocks.8:{i}", "activation": float(i), "images": [f"images/b{i}.png"]}
               for i in (2, 0, 1)]
    records.append({"kind": "image", "target": "_blocks.8:3", "error": "diverged"})
    records.append({"kind": "image", "target": "_blocks.9:0", "activation": 1.0, "images": ["images/x.png"]})
    records.append({"kind": "image", "target": "logits:1", "activation": 1.0, "images": ["images/l1.png"]})
    records.append({"kind": "image", "target": "logits:2", "activation": 1.0, "images": ["images/l2.png"]})
    page = render_index(records)
    assert page.count('class="target sheet"') == 1 and "_blocks.8 · 4 channels" in page
    sheet = page[page.index('class="target sheet"'):page.index('id="t-_blocks.8:2"')]
    assert sheet.index("#0<") < sheet.index("#1<") < sheet.index("#2<") < sheet.index("#3<")
    assert 'href="#t-_blocks.8:0"' in sheet and "images/b0.png" in sheet and "failed" in sheet
    assert "images/x.png" not in sheet and "images/l1.png" not in sheet
    assert 'id="t-_blocks.8:0"' in page


def test_dream_image_over_a_channel_range_writes_one_layer_sheet(tmp_path):
    from dreamy.cli import main

    assert main(["image", "--model", "tiny:cnn", "--target", "conv3:0-7", "--steps", "2", "--out", str(tmp_path), "--quiet"]) == 0
    page = (tmp_path / "index.html").read_text()
    assert page.count('class="target sheet"') == 1 and "conv3 · 8 channels" in page
    assert all(f'href="#t-conv3:{i}"' in page for i in range(8))


def prompt_record(target, activation, window, promoted, plot=None):
    record = {"kind": "prompt", "target": target, "model": "m", "method": "epo", "activation": activation,
              "settings": {"n_tokens": 4},
              "frontier": [{"text": "x", "tokens": ["x"], "token_ids": [7, 7, 7, 7], "token_attribution": [1.0], "activation": activation,
                            "xentropy": 4.0}],
              "maxima_matched": [{"text": "w", "tokens": ["w"], "token_ids": [8, 8, 8, 8], "token_activations": [1.0],
                                  "activation": window, "xentropy": 5.0}],
              "description": {"site": "s", "vocab_proj": {"promoted": [[t, 2.0] for t in promoted], "suppressed": [["down", -1.0]]},
                              "token_change": {"promoted": [["tc<up>", 0.5]], "suppressed": [["tcdown", -0.5]],
                                               "contexts": "maxima", "n_contexts": 1, "alpha": 8.0}}}
    if plot:
        record["plot"] = plot
    return record


def test_prompt_cards_have_an_index_output_tokens_and_the_frontier_plot(tmp_path):
    records = [prompt_record("m.layers.1:sae=s#0", 3.0, 2.0, ["<b>", "cat"], plot="images/p0_frontier.png"),
               prompt_record("m.layers.1:sae=s#1", 1.0, 2.0, ["dog"])]
    page = write_index(tmp_path, records).read_text()
    index = page[page.index('class="target findex"'):page.index('id="t-')]
    assert index.count('<a href="#t-m.layers.1:sae_s_0"') == 1 and '<a href="#t-m.layers.1:sae_s_1"' in index
    assert index.index('class="beats">yes') < index.index('class="short">no')  # 3.0 at xent 4 beats the window 2.0 at 5
    assert "&#x27;&lt;b&gt;&#x27;" in index and "<b>" not in index  # tokens are shown quoted and escaped
    assert "tc&lt;up&gt;" in page and "tcdown" in page and "VocabProj" in page and "TokenChange (maxima, 1 contexts)" in page
    assert '<img class="plot" src="images/p0_frontier.png"' in page
    assert page.index('class="target findex"') < page.index('id="t-m.layers.1:sae_s_0"')


def test_old_prompt_records_without_plot_or_description_still_render():
    record = {"kind": "prompt", "target": "logits:5", "activation": 1.0,
              "frontier": [{"text": "x", "activation": 1.0, "xentropy": 4.0}]}
    page = render_index([record, {**record, "target": "logits:6", "description_error": "ValueError: <no>"}])
    assert 'class="plot"' not in page and "logits:5" in page
    assert "no output-side description: ValueError: &lt;no&gt;" in page


def test_image_cards_show_their_steps_plot():
    page = render_index([{"kind": "image", "target": "conv1:0", "activation": 1.0, "images": ["images/a.png"],
                          "plot": "images/a_steps.png"}])
    assert '<img class="plot" src="images/a_steps.png"' in page and "objective per step" in page
    assert 'class="target findex"' not in page


def test_the_verdict_is_at_matched_length_and_context_windows_are_only_context(tmp_path):
    record = prompt_record("model.layers.9:sae=/home/me/runs/sae-l9#3", 3.0, 2.0, ["cat"])
    record["maxima"] = [{"text": "long", "tokens": ["long"], "token_activations": [1.0], "activation": 9.0, "xentropy": 3.0}]
    record["frontier"] += [{"text": f"p{i}", "tokens": [f"p{i}"], "token_ids": [i], "activation": 0.1 * i, "xentropy": 6.0 + i}
                           for i in range(20)]
    page = write_index(tmp_path, [record]).read_text()
    index = page[page.index('class="target findex"'):page.index('id="t-')]
    assert ">sae-l9#3<" in index and "/home/me/runs" not in index.replace('title="model.layers.9:sae=/home/me/runs/sae-l9#3"', "")
    # the 64-token context window (9.0 at 3.0) would win by construction; the verdict uses the 1-token window
    assert 'class="beats">yes (1.5x), not a copy' in index and "4-token windows" in index
    assert "longer context windows, not comparable" in page and "the other 9 frontier prompts" in page


def test_a_prompt_card_never_compares_its_dream_with_the_longer_context_windows():
    """The 64-token context windows are not the yardstick: the card's header leaves them out (its verdict line
    compares with the matched-length windows instead)."""
    record = {"kind": "prompt", "target": "m.layers.0:3", "activation": 3.0, "settings": {"n_tokens": 2},
              "frontier": [{"text": "a", "token_ids": [1, 2], "activation": 3.0, "xentropy": 4.0}],
              "maxima": [{"text": "long", "tokens": ["long"], "activation": 1.0}],
              "maxima_matched": [{"text": "b", "token_ids": [3, 4], "activation": 2.0, "xentropy": 5.0}]}
    page = render_index([record])
    assert "best dataset example" not in page and "yes (1.5x" in page


def test_the_steps_plot_sits_beside_the_dreams_in_their_row_not_under_the_card():
    """The objective-per-step plot once sat under the dreams and maxima at 480 px and doubled the page's length; it is
    now a small figure in the dreams' own row, before the dataset maxima, for plain and class dreams alike."""
    for target, kind in (("conv3:0", "plain"), ("logits:1", "class")):
        page = render_index([{"kind": "image", "target": target, "activation": 1.0, "images": ["images/a.png"],
                              "plot": "images/a_steps.png", "maxima": [{"image": "maxima/m.png", "activation": 2.0}]}])
        row = page[page.index(f'class="{kind}"'):]
        row = row[row.index('class="row"'):]
        row = row[:row.index("</div>")]  # the dreams' row up to its end
        assert "images/a.png" in row and '<figure class="steps">' in row and 'src="images/a_steps.png"' in row
        assert page.index('class="steps"') < page.index('class="maxima"')
    assert ".row figure.steps img.plot{width:240px;height:160px" in page  # small: as tall as a dream



def test_long_prompts_and_tokens_wrap_inside_their_card():
    """A 64-token context window, a 32-token prompt or a long promoted token once ran past the card's right edge
    (`white-space:pre` cells); tokens now wrap at their spaces (or anywhere, if one token is too long) and anything
    still too wide scrolls inside its card."""
    record = prompt_record("m.layers.1:sae=s#0", 3.0, 2.0, [" supercalifragilistic"] * 5)
    page = render_index([record])
    assert "white-space:pre;" not in page and "white-space:pre}" not in page
    assert ".tok{font-family:monospace;white-space:pre-wrap;overflow-wrap:anywhere" in page
    target_rule = page[page.index(".target{"):]
    assert "overflow-x:auto" in target_rule[:target_rule.index("}")]


def _class_card(target, maxima):
    return render_index([{"kind": "image", "target": target, "activation": 3.0, "images": ["a.png"],
                          "maxima": maxima, "maxima_dataset": "photos"}])


def test_a_class_dream_on_photos_that_hold_no_such_class_says_so_in_place_of_the_ratio():
    page = _class_card("logits:1", [{"image": "m0.png", "activation": 2.0, "label": "skimage coffee full", "classes": [967, 968]},
                                    {"image": "m1.png", "activation": 1.0, "label": "skimage moon full", "classes": []}])
    assert "the photos hold no goldfish: the crops shown are the most activating, not examples of the class" in page
    assert "vs best" not in page and "x)</span>" not in page


def test_a_cat_dream_is_compared_with_the_best_crop_of_a_cat_photo_only():
    page = _class_card("logits:285", [{"image": "m0.png", "activation": 9.0, "label": "skimage coffee full", "classes": [967, 968]},
                                      {"image": "m1.png", "activation": 2.0, "label": "skimage chelsea half r1c1", "classes": [281, 282, 285]},
                                      {"image": "m2.png", "activation": 1.0, "label": "skimage chelsea full", "classes": [281, 282, 285]}])
    assert 'class="beats">dream 3 vs best crop of a photo with Egyptian cat 2 (1.5x)' in page
    assert "vs best dataset example 9" not in page


def test_a_class_the_photos_hold_but_no_shown_crop_shows_is_not_called_absent():
    page = _class_card("logits:285", [{"image": "m0.png", "activation": 9.0, "label": "skimage coffee full", "classes": [967]}])
    assert "none of these crops shows Egyptian cat" in page and "hold no" not in page


def test_an_unlabelled_set_keeps_the_comparison_and_says_it_is_unlabelled_but_channels_do_not():
    maxima = [{"image": "m.png", "activation": 2.0, "label": "fashion-mnist test #0 (Ankle boot)"}]
    page = _class_card("logits:1", maxima)
    assert 'dream 3 vs best dataset example 2 (1.5x)</span> · set unlabelled for classes' in page
    assert "unlabelled" not in _class_card("conv3:0", maxima)
