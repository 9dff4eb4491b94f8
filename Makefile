# The README's two commands: `make run` (the main job) and `make test` (every test CI runs).
# `make run` installs only what the main job needs; `make test` also installs what only the tests need (Chromium and
# MathJax for the docs pages).
VENV ?= .venv
export VENV

.PHONY: install install-test run test docs readme clean
install:
	bash tools/install.sh

install-test:
	bash tools/install.sh --test

run: install
	$(VENV)/bin/pulse run

test: install-test
	bash tools/test.sh

readme: install
	$(VENV)/bin/python tools/readme.py

docs: install
	$(VENV)/bin/python tools/docs.py --install-mathjax
	$(VENV)/bin/python tools/docs.py

clean:
	rm -rf _proc _docs _site .pytest_cache
