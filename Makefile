PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install schemas clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tpa up

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

schemas: $(STAMP)
	$(BIN)/python -m contracts.generate

clean:
	rm -rf $(VENV) .tpa
