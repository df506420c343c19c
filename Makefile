# The two commands of the README. Each sets up .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# one job per GPU; on a machine without one, two CPU jobs (config/demo.yaml: cpu_slots: 2)
DEMO_SLOTS := $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); [ "$$n" -gt 0 ] && echo $$n || echo 2)

.PHONY: demo test

$(INSTALLED): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo/model demo/fasta &: | $(INSTALLED)
	$(BIN)/python -m seqembed.demo demo

demo: $(INSTALLED) demo/model demo/fasta
	$(BIN)/snakemake --configfile config/demo.yaml --cores all --resources gpu=$(DEMO_SLOTS)

# the demo data gives `snakemake --lint` a workflow with inputs to read
test: $(INSTALLED) demo/model demo/fasta
	$(BIN)/ruff check src scripts tests bench
	$(BIN)/ruff format --check src scripts tests bench
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/python -m pytest -q
