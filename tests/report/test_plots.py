"""dreamy/plots.py: frontier and per-step plots decode as PNGs; evaluated prompts are kept compact."""

import io

import matplotlib
from PIL import Image

from dreamy.report.plots import evaluated_points, frontier_png, plot_name, steps_png


def decoded(data):
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_frontier_plot_decodes_with_and_without_windows_and_evaluated_prompts():
    full = {"frontier": [{"xentropy": 4.0, "activation": 1.0}, {"xentropy": 6.0, "activation": 3.0}],
            "maxima": [{"xentropy": 5.0, "activation": 2.0}], "maxima_dataset": "fortunes",
            "evaluated": {"xentropy": [4.0, 5.0, 7.0], "activation": [1.0, 0.5, 2.0]}}
    for record in (full, {"frontier": full["frontier"]}, {"frontier": []}):
        assert decoded(frontier_png(record)).size == (480, 320)


def test_steps_plot_decodes_and_leaves_no_pyplot_figures():
    before = len(matplotlib._pylab_helpers.Gcf.get_all_fig_managers())
    assert decoded(steps_png([[0.0, 1.0, 2.0], [0.5, 1.5, 1.0]])).mode in ("RGB", "RGBA")
    assert len(matplotlib._pylab_helpers.Gcf.get_all_fig_managers()) == before


def test_steps_plot_is_drawn_at_the_size_it_is_shown_beside_a_dream_at_twice_the_resolution():
    """Drawn at 2.4 x 1.6 in (the 240 x 160 px it takes on a card) its type reads at the size it was set; the
    pixels are doubled to stay sharp. The old plot, 4.8 x 3.2 in at 100 dpi, was shown at 480 px under the dreams."""
    image = decoded(steps_png([[0.0, 1.0, 2.0]], "objective (under transforms)"))
    inches = tuple(round(pixels / dpi, 2) for pixels, dpi in zip(image.size, image.info["dpi"]))
    assert inches == (2.4, 1.6) and image.size == (480, 320)

def test_evaluated_points_are_thinned_and_rounded():
    history = [{"xentropy": 1.0 + i / 3, "activation": float(i)} for i in range(5000)]
    points = evaluated_points(history, limit=100)
    assert len(points["xentropy"]) == len(points["activation"]) == 100
    assert points["activation"][0] == 0.0 and points["xentropy"][1] == round(1.0 + 50 / 3, 3)


def test_plot_names_are_per_target_and_kind():
    assert len({plot_name("a:1", "frontier"), plot_name("a:1", "steps"), plot_name("a:2", "steps")}) == 3
    assert plot_name("a:1", "steps").startswith("images/")
