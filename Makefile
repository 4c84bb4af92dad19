# Quick start: `make demo`, then `make test`. Both install what they need and are safe to re-run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 (on this project's machines it lies on local disk).
TORCH_SPEC ?= torch==2.13.0
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
EMOJI_FONT ?= /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
EMOJI_TEST ?= /usr/share/unicode/emoji/emoji-test.txt
CORE := $(VENV)/.ilct-core-installed
STAMP := $(VENV)/.ilct-installed

.PHONY: install data demo test ablation clean

$(PY):
	@$(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): on Debian/Ubuntu run: apt-get install python3-venv"; exit 1; }

# torch first (when none is importable), so that the project's `torch` requirement takes nothing else.
# The demo needs only the core; the tests also take the extras (diffusers, sentence-transformers, av, ...).
$(CORE): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e .
	@touch $@

$(STAMP): $(CORE)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)

# Real data from Debian packages: Fashion-MNIST (demo and tests), the Noto Color Emoji font (tests) and
# Unicode's emoji groups (emoji-test.txt, the emoji scorer's classes).
data:
	@missing=""; \
	[ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] && [ -f "$(FMNIST_DIR)/t10k-images-idx3-ubyte.gz" ] || missing="dataset-fashion-mnist"; \
	[ -f "$(EMOJI_FONT)" ] || missing="$$missing fonts-noto-color-emoji"; \
	[ -f "$(EMOJI_TEST)" ] || missing="$$missing unicode-data"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	else \
		echo "missing data; install it with: sudo apt-get install $$missing"; exit 1; \
	fi

demo: $(CORE) data
	$(VENV)/bin/ilct demo --data-dir "$(FMNIST_DIR)"

test: install data
	$(PY) -m pytest

# The paper's ablation on Fashion-MNIST latents (hours on a CPU): see benchmarks/quality/ablation.py.
LATENTS ?= builtin
BUDGET ?= cpu
AUTOENCODER ?= runs/demo/autoencoder
ablation: install data
	$(PY) benchmarks/quality/ablation.py --latents $(LATENTS) --budget $(BUDGET) --autoencoder $(AUTOENCODER)

clean:
	rm -rf $(VENV) runs .pytest_cache
