# The two commands of the quick start. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

run: $(VENV)/.installed
	$(BIN)/stockade demo
	$(BIN)/stockade serve

test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	$(BIN)/python bench/tickets_auth.py
	$(BIN)/python bench/dpop.py
	$(BIN)/python bench/reservations.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/redaction.py
	$(BIN)/python bench/retrieval.py
	$(BIN)/python bench/knowledge.py
	$(BIN)/python bench/gateway.py $(if $(LITELLM),--litellm $(LITELLM))

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

clean:
	rm -rf $(VENV)
