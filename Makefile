# Quick start: `make demo`, then `make test`. Both install what they need and are safe to re-run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 (on this project's machines it lies on local disk).
TORCH_SPEC ?= torch==2.13.0
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.ilct-installed

.PHONY: install data demo test clean

$(PY):
	@$(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): on Debian/Ubuntu run: apt-get install python3-venv"; exit 1; }

# torch first (when none is importable), so that the project's `torch` requirement takes nothing else.
$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)

data:
	@if [ -f "$(FMNIST_DIR)/train-images-idx3-ubyte.gz" ] && [ -f "$(FMNIST_DIR)/t10k-images-idx3-ubyte.gz" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing from $(FMNIST_DIR); install it with: sudo apt-get install dataset-fashion-mnist"; exit 1; \
	fi

demo: install data
	$(VENV)/bin/ilct demo --data-dir "$(FMNIST_DIR)"

test: install data
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
