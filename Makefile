# Two commands do all the set-up on a fresh Linux machine with Python 3.11:
#   make reproduce   the demo reproduction (embedded digits data set, CPU, minutes)
#   make test        the linter and format check (ruff) and the test suite (as root also on a
#                    one-node SLURM cluster: docs/scale-out.md)
# Both create or update .venv from pyproject.toml when it is missing or older than pyproject.toml.

PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PROFILE ?= demo
# make lab: PORT=8890 for another port, NO_BROWSER=1 on a remote machine, IP=0.0.0.0 in a container
PORT ?= 8888
IP ?= localhost

.PHONY: reproduce test lab figures mutation clean-venv

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade --quiet pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	$(VENV)/bin/python -m ipykernel install --prefix $(VENV) --name camri --display-name "Python (camri)" >/dev/null
	@touch $(STAMP)

reproduce: $(STAMP)
	$(VENV)/bin/camri reproduce --profile $(PROFILE)

# The slurm-marked tests run on a one-node SLURM cluster: scripts/with-slurm.sh starts it (as root) and stops
# it after pytest, also when tests fail; without root they skip. CAMRI_SLURM=0 starts nothing.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	scripts/with-slurm.sh $(VENV)/bin/python -m pytest

# Mutation testing of losses, protocol, io and train against their tests (docs/testing.md). Not part of
# `make test` or CI: hours on 2 cores. One module at a time, the most valuable first; interrupt it at any
# point and run it again: mutmut resumes. MUTATE="camri.losses*" limits it to one module.
MUTATE ?= camri.losses* camri.protocol* camri.io* camri.train*
MUTATION_CHILDREN ?= 1
mutation: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet 'mutmut>=3.8,<4'
	for module in $(MUTATE); do \
		OMP_NUM_THREADS=1 nice $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) "$$module" || exit 1; \
	done
	$(VENV)/bin/mutmut results

figures: $(STAMP)
	$(VENV)/bin/camri figures --profile $(PROFILE)

lab: $(STAMP)
	$(VENV)/bin/camri lab --port $(PORT) --ip $(IP)$(if $(NO_BROWSER), --no-browser)

clean-venv:
	rm -rf $(VENV)
