"""Session fixtures shared by every pulse-nb test file.

`model_path`  the embedded model's safetensors folder (converted once).
`hf_engine`   an `HFEngine` on the embedded model, one per session.
`vllm_engine` an in-process `VLLMEngine` on the embedded model, started once per session (about 2 minutes on CPU).
`vllm_server` a real `vllm serve` (OpenAI-compatible) on 127.0.0.1 with a free port; yields its base URL.
"""
import functools, os, re, socket, subprocess, sys, tempfile, time
from pathlib import Path
import pytest

os.environ.setdefault('VLLM_ENABLE_V1_MULTIPROCESSING', '0')
os.environ.setdefault('VLLM_CPU_KVCACHE_SPACE', '1')  # GiB of KV cache on CPU: plenty for the tests

VLLM_DTYPE = os.environ.get('PULSE_TEST_VLLM_DTYPE', 'float32')  # float32 matches HFEngine's CPU dtype
SERVER_START_TIMEOUT = int(os.environ.get('PULSE_TEST_SERVER_TIMEOUT', '900'))


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: heavy test (model loads, vLLM); still runs in CI')


@functools.cache
def names_a_vllm_fixture(path: Path) -> bool:
    "Whether a test file names a vLLM session fixture (`vllm_engine`, `vllm_server`)."
    return bool(re.search(r'\bvllm_(engine|server)\b', path.read_text()))


# Seconds the longest units took on 2 one-thread workers (tools/test.sh with --durations, 2026-12-07; the vLLM unit is
# every file that names a vLLM fixture). The scheduler hands out the longest unit first, so that no long file starts last
# while the other worker idles: xdist's own order is by the number of tests, which put a one-test, 8-minute file last.
# A unit not listed counts 2 s per test; a stale figure only costs balance, never a test.
UNIT_SECONDS = {'vllm': 960, 'tests/test_reports.py': 760, 'tests/test_loop.py': 730, 'tests/test_review.py': 290,
                'tests/test_report_positive_control.py': 300, 'tests/test_train.py': 210, 'tests/faults/test_kill_train.py': 200,
                'tests/faults/test_kill_generate.py': 200, 'tests/test_cli.py': 190, 'tests/test_loop_signal.py': 160,
                'tests/test_preferences.py': 150, 'tests/test_best_of_n.py': 150, 'tests/test_models.py': 140,
                'tests/test_benchmarks.py': 120, 'tests/faults/test_disk_full.py': 100, 'tests/test_critic_modes.py': 75}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (tools/test.sh runs `-n 2`) each test file is one unit of work, so its module fixtures are built
    once; and the files that name a vLLM fixture form one unit, so the engine and `vllm serve` start once per session, not
    once per worker. Units go out longest first (`UNIT_SECONDS`). (A scheduler, because pytest 9.2 ignores the ids xdist's
    `xdist_group` marks make.)"""
    from xdist.scheduler import LoadScopeScheduling
    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split('::', 1)[0]
            return 'vllm' if names_a_vllm_fixture(config.rootpath/path) else path
        def _assign_work_unit(self, node):
            longest = sorted(self.workqueue.items(), key=lambda u: -UNIT_SECONDS.get(u[0], 2 * len(u[1])))
            self.workqueue.clear(); self.workqueue.update(longest)
            super()._assign_work_unit(node)
    return FileScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """CI runs every test (tools/test.sh sets both variables): with `PULSE_REQUIRE_VLLM=1` a test skipped because vllm
    does not import fails; with `PULSE_ALLOWED_SKIPS=REGEX` a skip whose reason does not match REGEX fails."""
    rep = yield
    if not rep.skipped or hasattr(rep, 'wasxfail'): return rep
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    allowed = os.environ.get('PULSE_ALLOWED_SKIPS')
    if os.environ.get('PULSE_REQUIRE_VLLM') == '1' and re.search(r"import '?vllm", reason):
        why = f'vllm is required here (PULSE_REQUIRE_VLLM=1) but the test was skipped: {reason}'
    elif allowed is not None and not (allowed and re.search(allowed, reason)):
        why = f'skipped for a reason CI does not allow (PULSE_ALLOWED_SKIPS={allowed!r}): {reason}'
    else: return rep
    rep.outcome, rep.longrepr = 'failed', why
    return rep


@pytest.fixture(scope='session')
def model_path():
    from pulse_nb.models import resolve_model
    return resolve_model()


@pytest.fixture(scope='session')
def hf_engine(model_path):
    from pulse_nb.engine_hf import HFEngine
    with HFEngine() as e: yield e


@pytest.fixture(scope='session')
def vllm_engine(model_path):
    import vllm  # installed in CI (the CPU build): a missing vLLM is an error, not a skip
    from pulse_nb.engine_vllm import VLLMEngine
    with VLLMEngine(dtype=VLLM_DTYPE, max_model_len=2048) as e: yield e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def vllm_server(model_path):
    "Start `vllm serve` on the embedded model; yields the base URL; killed at teardown."
    import vllm  # installed in CI (the CPU build): a missing vLLM is an error, not a skip
    import httpx
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix='pulse-vllm-serve-'))/'server.log'
    env = {**os.environ, 'VLLM_CPU_KVCACHE_SPACE': os.environ.get('VLLM_CPU_KVCACHE_SPACE', '1')}
    env.pop('VLLM_ENABLE_V1_MULTIPROCESSING', None)  # the server manages its own processes
    cmd = [sys.executable, '-m', 'vllm.entrypoints.openai.api_server', '--model', model_path,
           '--served-model-name', 'smollm2', '--host', '127.0.0.1', '--port', str(port), '--dtype', VLLM_DTYPE,
           '--max-model-len', '2048', '--seed', '0']
    with open(log, 'wb') as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url, t0 = f'http://127.0.0.1:{port}/v1', time.time()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f'vllm serve exited with {proc.returncode}; log tail:\n{log.read_text()[-3000:]}')
            try:
                if httpx.get(url + '/models', timeout=2).status_code == 200: break
            except httpx.HTTPError: pass
            if time.time() - t0 > SERVER_START_TIMEOUT:
                pytest.fail(f'vllm serve not ready after {SERVER_START_TIMEOUT}s; log tail:\n{log.read_text()[-3000:]}')
            time.sleep(2)
        print(f'vllm serve ready at {url} after {time.time() - t0:.0f}s')
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the server's own process group (start_new_session)
            try: proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)
