# The README's two commands: `make run` (the main job) and `make test` (every test CI runs).
VENV ?= .venv
export VENV

.PHONY: install run test docs readme clean
install:
	bash tools/install.sh

run: install
	$(VENV)/bin/pulse run --quick

test: install
	bash tools/test.sh

readme: install
	$(VENV)/bin/python tools/readme.py

docs: install
	$(VENV)/bin/python tools/docs.py

clean:
	rm -rf _proc _docs _site .pytest_cache
