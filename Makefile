# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test serve sandbox bench clean

$(BIN)/wecom-bot: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

demo: $(BIN)/wecom-bot
	$(BIN)/wecom-bot demo

test: $(BIN)/wecom-bot
	$(BIN)/pytest -q

serve: $(BIN)/wecom-bot
	$(BIN)/wecom-bot serve

sandbox: $(BIN)/wecom-bot
	$(BIN)/wecom-bot sandbox

bench: $(BIN)/wecom-bot
	$(BIN)/python scripts/bench_callbacks.py

clean:
	rm -rf $(VENV) var .pytest_cache
