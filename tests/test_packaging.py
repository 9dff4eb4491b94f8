"""The package as users install it: a wheel built from the repo imports in a fresh venv without nbdev."""
import subprocess, sys, venv
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_imports_without_nbdev(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path/'dist'),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel, = (tmp_path/'dist').glob('pulse_nb-*.whl')
    venv.create(tmp_path/'env', with_pip=True)
    py = tmp_path/'env'/'bin'/'python'
    subprocess.run([str(py), '-m', 'pip', 'install', '-q', '--no-deps', str(wheel)], check=True, capture_output=True, timeout=600)
    code = ('import importlib.util, pulse_nb, pulse_nb._modidx; '
            'assert importlib.util.find_spec("nbdev") is None, "nbdev leaked into the fresh venv"; '
            'print(pulse_nb.__version__, sorted(pulse_nb._modidx.d["syms"]))')
    r = subprocess.run([str(py), '-c', code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'pulse_nb.models' in r.stdout and 'pulse_nb.cli' in r.stdout
    # no exported module imports the development tools
    for f in (ROOT/'pulse_nb').glob('*.py'):
        src = f.read_text()
        assert 'import nbdev' not in src and 'from nbdev' not in src and 'fastcore' not in src, f.name
