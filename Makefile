# The README's two set-up commands: `make demo` and `make test`.
# Each creates (or reuses) the local virtual environment .venv and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.zoo-installed
DEMO_STEPS ?= 7000
DEMO_DIR ?= runs/demo
# A DCGAN small enough to draw recognisable shapes within the demo's steps on 2 CPU cores: 32 filters (the
# model's default is 64), a higher learning rate, the adversarial loss alone (--loss perceptual costs about
# six times as much a step on a CPU: README.md).
DEMO_TRAIN ?= --model dcgan --model-opt ngf=32 --model-opt ndf=32 --model-opt nz=64 --batch-size 32 --lr 5e-4

.PHONY: demo test venv bench-startup clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zoo list
	@if [ -f $(DEMO_DIR)/config.json ]; then \
		$(BIN)/zoo train --resume $(DEMO_DIR) --max-steps $(DEMO_STEPS); \
	else \
		$(BIN)/zoo train $(DEMO_TRAIN) --max-steps $(DEMO_STEPS) --run-dir $(DEMO_DIR); \
	fi
	$(BIN)/zoo test --run $(DEMO_DIR)
	@echo "Sample grids: $(DEMO_DIR)/samples/latest.png (tensorboard --logdir $(DEMO_DIR)/tensorboard)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-startup: $(STAMP)
	$(BIN)/python bench/startup.py

clean:
	rm -rf $(VENV) runs build *.egg-info
