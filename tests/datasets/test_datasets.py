"""Tests for dreamy.datasets: image sets and text corpora for dataset maxima."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamy import datasets
from dreamy.datasets import DatasetError, TextCorpus, open_images, open_text, to_tensor

FASHION = Path(datasets.FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").exists()
FORTUNES = Path(datasets.FORTUNES_DIR, "fortunes").exists()


def test_photos_are_rgb_uint8_crops_with_distinct_sources():
    photos = open_images("photos")
    assert len(photos) == 10 * (len(datasets.SKIMAGE_PHOTOS) + 2)
    image = photos.image(1)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] == image.shape[1]  # square crops
    assert len({photos.source(i) for i in range(len(photos))}) == len(photos)
    batch = photos.tensor([0, 5, 200], (24, 24))
    assert batch.shape == (3, 3, 24, 24) and batch.min() >= 0 and batch.max() <= 1


def test_batches_cover_every_image_once_from_start():
    photos = open_images("photos", limit=7)
    seen = [i for indices, images in photos.batches(3, (8, 8), start=2) for i in indices]
    assert seen == [2, 3, 4, 5, 6]
    assert photos.name == "photos[:7]" and len(photos) == 7
    with pytest.raises(IndexError, match="out of range"):
        photos.image(7)


def test_to_tensor_takes_the_centre_square_of_any_image_type():
    image = np.zeros((10, 20), np.uint8)
    image[:, 10:] = 255  # right half white: the centre square (columns 5..14) is half black, half white
    out = to_tensor(image, (10, 10))
    assert out.shape == (3, 10, 10)
    assert torch.allclose(out[:, :, :5], torch.tensor(0.0)) and torch.allclose(out[:, :, 5:], torch.tensor(1.0))
    assert to_tensor(np.ones((4, 4), bool), (4, 4)).min() == 1.0
    assert to_tensor(np.full((4, 4, 4), 0.5, np.float32), (2, 2)).shape == (3, 2, 2)  # RGBA: alpha dropped


def test_image_folder_reads_nested_images_lazily(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (5, 5), 128).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = open_images(str(tmp_path))
    assert len(folder) == 2 and folder.source(1) == "sub/b.jpg"
    assert folder.image(0)[0, 0].tolist() == [255, 0, 0]
    assert folder.image(1).shape == (5, 5, 3)
    with pytest.raises(DatasetError, match="does not exist"):
        open_images(f"folder:{tmp_path / 'sub' / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        open_images(f"folder:{tmp_path / 'empty'}")


def test_unknown_image_set_names_the_choices():
    with pytest.raises(DatasetError, match="fashion-mnist"):
        open_images("imagenet")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        datasets.fashion_mnist(root=tmp_path)
    with pytest.raises(DatasetError, match="split"):
        datasets.fashion_mnist("validation", root=tmp_path)


@pytest.mark.skipif(not FASHION, reason="Debian dataset-fashion-mnist is not installed")
def test_fashion_mnist_splits_and_labels():
    test = open_images("fashion-mnist")
    assert len(test) == 10_000 and test.image(0).shape == (28, 28, 3)
    assert test.source(0) == "fashion-mnist test #0 (Ankle boot)"
    everything = open_images("fashion-mnist:all")
    assert len(everything) == 70_000
    assert np.array_equal(everything.image(60_000), test.image(0))


def test_text_corpus_limit_keeps_whole_words():
    corpus = TextCorpus("t", "one two\nthree  four five")
    assert corpus.n_words == 5
    cut = corpus.limited(3)
    assert cut.text == "one two\nthree" and cut.name == "t[:3w]"
    assert corpus.limited(10) is corpus


def test_text_files_from_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha beta")
    (tmp_path / "b.md").write_text("gamma")
    assert open_text(str(tmp_path)).n_words == 3
    assert open_text(str(tmp_path / "a.txt")).text == "alpha beta"
    with pytest.raises(DatasetError, match="fortunes"):
        open_text("no-such-corpus")


@pytest.mark.skipif(not FORTUNES, reason="Debian fortunes is not installed")
def test_fortunes_is_large_enough_for_the_issue_4_check():
    corpus = open_text("fortunes")
    assert corpus.n_words >= 200_000
    assert "\n%\n" not in corpus.text


@pytest.mark.parametrize("data, words", [
    (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, "NUL bytes"),
    ("UTF-16 text".encode("utf-16"), "NUL bytes"),
    (bytes(range(128, 256)) * 8, "not valid UTF-8"),
    (b"latin-1 \xe9t\xe9 " * 10, "not valid UTF-8"),
])
def test_a_file_that_is_not_text_is_refused(tmp_path, data, words):
    path = tmp_path / "blob"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=f"text corpus '{path}' is not text: .*{words}"):
        open_text(str(path))


def test_a_few_stray_bytes_are_still_text(tmp_path):
    path = tmp_path / "mostly.txt"
    path.write_bytes(b"plain words " * 100 + b"\xff")  # under 1% invalid
    assert open_text(str(path)).text.endswith("\ufffd") and "\ufffd" not in open_text(str(path)).text[:-1]


def test_a_folder_leaves_out_binary_and_hidden_files(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("alpha beta")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main")
    with caplog.at_level("WARNING"):
        corpus = open_text(str(tmp_path))
    assert corpus.text == "alpha beta"
    assert "left out 1 file(s) that are not text, e.g. 'photo.png'" in caplog.text


def test_a_folder_without_text_is_refused(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(DatasetError, match=r"holds no text file: all 3 file\(s\) are not text"):
        open_text(str(tmp_path))


def test_a_file_corpus_is_named_by_its_path_and_text(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("alpha beta")
    first = open_text(str(path)).name
    path.write_text("alpha gamma")
    assert first.startswith(f"file:{path}#") and open_text(str(path)).name != first  # an edit is another corpus


def test_the_photos_carry_the_imagenet_classes_they_show_and_other_sets_none(tmp_path):
    from dreamy.datasets.images import PHOTO_CLASSES, image_classes, set_classes

    photos = open_images("photos")
    sources = [photos.source(i) for i in range(len(photos))]
    assert all(any(s.startswith(photo + " ") for s in sources) for photo in PHOTO_CLASSES)  # no stale photo name
    chelsea = [s for s in sources if s.startswith("skimage chelsea ")]
    assert len(chelsea) == 10 and all(285 in image_classes("photos", s) for s in chelsea)
    assert image_classes("photos[:20]", "skimage coffee half r0c0 (0,0,200px)") == (967, 968)
    assert image_classes("photos", "skimage moon full") == ()
    assert 1 not in set_classes("photos") and 948 not in set_classes("photos")  # no goldfish, no Granny Smith
    assert image_classes("fashion-mnist", "fashion-mnist test #0 (Ankle boot)") is None
    assert image_classes(f"folder:{tmp_path}", "a.png") is None and set_classes("fashion-mnist:train") is None
