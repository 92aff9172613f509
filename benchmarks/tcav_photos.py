"""Does EfficientNet-Lite0's "Egyptian cat" depend on a concept made from the bundled photos? (issue 21; TCAV)

The bundled photos are 21 pictures, each as a full square crop and 9 half-size crops. Concepts are made from
the photos' sources: `textures` (scikit-image's three texture samples: brick, grass, gravel; 30 crops) and
`grayscale` (the photos stored without colour: astronaut is not, camera, coins, moon, page, text, brick, grass,
gravel, cell are; found from the pixels). The class is an ImageNet logit (default 285, "Egyptian cat") over the
crops of the one cat photo (chelsea, 10 crops), which the model calls Egyptian cat; random sets are drawn from
the remaining photos (neither the concept's nor the cat's), 30 crops each. For each concept: the TCAV score (10 CAVs against
random sets), the paper's two-sided t-test against one random stand-in's CAVs, and the test against 10 random
stand-in concepts (see dreamy.directions.tcav), with each CAV's held-out accuracy.

    python -m benchmarks.tcav_photos                       # both concepts at _blocks.10 and _blocks.14
    python -m benchmarks.tcav_photos --site _blocks.6 --concept textures --target logits:281
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks import common
from dreamy.datasets import ImageSet, open_images
from dreamy.directions import TCAVConfig, tcav
from dreamy.models import load

TEXTURES = ("brick", "grass", "gravel")
CLASS_PHOTO = "chelsea"


def photo_of(source: str) -> str:
    """The photo a crop comes from, from its source text.

    Example:
        >>> photo_of("skimage brick half r0c1 (128,0,256px)"), photo_of("sklearn china full")
        ('brick', 'china')
    """
    return source.split()[1]


def is_grayscale(image: np.ndarray) -> bool:
    """Whether an `[H, W, 3]` image has the same value in its three channels everywhere.

    Example:
        >>> is_grayscale(np.zeros((2, 2, 3), np.uint8)), is_grayscale(np.eye(3, dtype=np.uint8)[None])
        (True, False)
    """
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def subset(images: ImageSet, indices: list[int], name: str) -> ImageSet:
    """The images `indices` of `images` as an image set of their own.

    Example:
        >>> len(subset(open_images("photos"), [0, 5], "two"))
        2
    """
    return ImageSet(name, len(indices), lambda i: images.image(indices[i]), lambda i: images.source(indices[i]))


def splits(images: ImageSet, concept: str) -> dict[str, list[int]]:
    """Indices of the concept's crops, the class's crops and the random pool (the rest) for `concept`.

    Example:
        >>> found = splits(open_images("photos"), "textures")
        >>> len(found["concept"]), len(found["class"]), len(found["pool"])
        (30, 10, 170)
    """
    photos = [photo_of(images.source(i)) for i in range(len(images))]
    if concept == "textures":
        members = {p for p in photos if p in TEXTURES}
    elif concept == "grayscale":
        full = {p: i for i, p in reversed(list(enumerate(photos)))}  # the first (full) crop of each photo
        members = {p for p, i in full.items() if is_grayscale(images.image(i))}
    else:
        raise ValueError(f"unknown concept {concept!r}; use textures or grayscale")
    members.discard(CLASS_PHOTO)
    return {"concept": [i for i, p in enumerate(photos) if p in members],
            "class": [i for i, p in enumerate(photos) if p == CLASS_PHOTO],
            "pool": [i for i, p in enumerate(photos) if p not in members and p != CLASS_PHOTO],
            "photos": sorted(members)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run TCAV for each concept and site; print a table and write results/tcav_photos.json."""
    started = time.perf_counter()
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:efficientnet-lite0")
    p.add_argument("--target", default="logits:285", help="the class logit (default %(default)s, Egyptian cat)")
    p.add_argument("--site", action="append", default=None, help="default: _blocks.10 and _blocks.14")
    p.add_argument("--concept", action="append", choices=["textures", "grayscale"], default=None,
                   help="default: both")
    p.add_argument("--random-runs", type=int, default=10)
    p.add_argument("--random-size", type=int, default=30, help="examples per random set (default %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N photos' crops (smoke runs)")
    args = p.parse_args(argv)

    loaded = load(args.model)
    images = open_images("photos", args.limit)
    sites = args.site or ["_blocks.10", "_blocks.14"]
    config = TCAVConfig(random_runs=args.random_runs, random_size=args.random_size, seed=0)
    rows, records = [], []
    for concept in args.concept or ["textures", "grayscale"]:
        found = splits(images, concept)
        sets = {key: subset(images, found[key], f"photos {key} ({concept})") for key in ("concept", "class", "pool")}
        for site in sites:
            mark = time.perf_counter()
            result = tcav(loaded, args.target, site, sets["concept"], sets["pool"], sets["class"], config,
                          sources={"concept": f"photos {', '.join(found['photos'])}", "class": f"photos {CLASS_PHOTO}",
                                   "random_pool": "the other photos"})
            seconds = time.perf_counter() - mark
            accuracy = [a for a in result.cav_accuracy if a is not None]
            random_accuracy = [a for a in result.random_cav_accuracy if a is not None]
            rows.append({"concept": concept, "site": site, "tcav_score": result.score,
                         "random_score": sum(result.random_scores) / len(result.random_scores),
                         "p_value": result.p_value, "null_p_value": result.null_p_value,
                         "cav_accuracy": sum(accuracy) / len(accuracy) if accuracy else None,
                         "random_cav_accuracy": sum(random_accuracy) / len(random_accuracy) if random_accuracy else None,
                         "seconds": seconds})
            record = result.to_records()[0]
            record.update({"concept": concept, "photos": found["photos"], "n_concept": len(found["concept"]),
                           "n_pool": len(found["pool"]), "seconds": seconds})
            records.append(record)
    name = loaded.class_names[int(args.target.split(":")[1])] if loaded.class_names and args.target.startswith("logits:") else args.target
    common.print_table(rows, title=f"TCAV of {args.target} ({name}) on the {CLASS_PHOTO} crops, {args.random_runs} random "
                                   "runs (p_value: the paper's t-test; null_p_value: against 10 random stand-in concepts)")
    figures = {"rows": rows, "records": records, "seconds": time.perf_counter() - started}
    common.write_result("tcav_photos", figures, settings={"model": args.model, "target": args.target, "sites": sites,
                                                          "random_runs": args.random_runs, "random_size": args.random_size,
                                                          "limit": args.limit},
                        results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
