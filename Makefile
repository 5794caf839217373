# Two commands do all the set-up on a fresh Linux machine with Python 3.11:
#   make reproduce   the demo reproduction (embedded digits data set, CPU, minutes)
#   make test        the linter (ruff check) and the test suite
# Both create or update .venv from pyproject.toml when it is missing or older than pyproject.toml.

PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PROFILE ?= demo

.PHONY: reproduce test lab figures clean-venv

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade --quiet pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	$(VENV)/bin/python -m ipykernel install --prefix $(VENV) --name camri --display-name "Python (camri)" >/dev/null
	@touch $(STAMP)

reproduce: $(STAMP)
	$(VENV)/bin/camri reproduce --profile $(PROFILE)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest

figures: $(STAMP)
	$(VENV)/bin/camri figures --profile $(PROFILE)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-venv:
	rm -rf $(VENV)
