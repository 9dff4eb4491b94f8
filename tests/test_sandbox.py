"""The code-task sandbox of `pulse_nb.evaluate`: model code runs in a subprocess that cannot hang, exhaust memory,
reach the network or write outside its temporary folder, and leaves this process untouched."""
import os, resource, socket, sys, tempfile, threading
from pathlib import Path
import pytest
from fastcore.test import test_eq as teq
from pulse_nb.evaluate import run_code, sandbox_info, extract_code, CODE_TASKS
from pulse_nb.sandbox import netns_prefix, landlock_abi


def test_passing_code_passes():
    r = run_code('def add(a, b):\n    return a + b', CODE_TASKS[0]['tests'])
    teq(r['status'], 'pass'); teq(r['returncode'], 0)


def test_failing_asserts_fail():
    r = run_code('def add(a, b):\n    return a * b', CODE_TASKS[0]['tests'])
    teq(r['status'], 'fail')
    assert 'AssertionError' in r['stderr_tail'] and 'tests.py' in r['stderr_tail']


def test_error_and_syntax_error():
    teq(run_code('def add(a, b) return a', 'assert add(1, 2) == 3')['status'], 'error')
    r = run_code('def add(a, b): return a + b', 'assert sub(1, 2) == -1')
    teq(r['status'], 'error'); assert 'NameError' in r['stderr_tail']


def test_early_exit_is_not_a_pass():
    "Code that exits with status 0 before the tests run does not pass (the pass marker is printed after the tests)."
    teq(run_code('import sys\nsys.exit(0)', 'assert False')['status'], 'error')
    teq(run_code('import os\nos._exit(0)', 'assert False')['status'], 'error')


def test_all_builtin_tasks_have_working_reference_solutions():
    sols = {'add': 'def add(a, b): return a + b',
            'is_palindrome': 'def is_palindrome(s):\n    t = s.replace(" ", "").lower()\n    return t == t[::-1]',
            'fib': 'def fib(n):\n    a, b = 0, 1\n    for _ in range(n): a, b = b, a + b\n    return a',
            'count_vowels': 'def count_vowels(s): return sum(c in "aeiouAEIOU" for c in s)',
            'max_of_list': 'def max_of_list(xs):\n    m = xs[0]\n    for x in xs: m = x if x > m else m\n    return m',
            'reverse_words': 'def reverse_words(s): return " ".join(s.split()[::-1])',
            'factorial': 'def factorial(n):\n    r = 1\n    for i in range(2, n + 1): r *= i\n    return r',
            'unique_sorted': 'def unique_sorted(xs): return sorted(set(xs))'}
    teq(sorted(sols), sorted(t['id'] for t in CODE_TASKS))
    for t in CODE_TASKS: teq((t['id'], run_code(sols[t['id']], t['tests'])['status']), (t['id'], 'pass'))


def test_infinite_loop_times_out():
    r = run_code('while True:\n    pass', '', timeout=1)
    teq(r['status'], 'timeout')


def test_sleeping_child_is_killed_on_timeout():
    r = run_code('import time\ntime.sleep(60)', '', timeout=1)
    teq(r['status'], 'timeout')
    assert r['seconds'] < 30  # killed, not waited for (a generous bound, not a speed claim)


def test_memory_bomb_is_stopped():
    r = run_code('xs = []\nwhile True:\n    xs.append(bytearray(10**7))', '', mem_mb=256, timeout=20)
    teq(r['status'], 'error'); assert 'MemoryError' in r['stderr_tail']
    r = run_code('x = bytearray(8 * 2**30)', '', mem_mb=256)
    teq(r['status'], 'error'); assert 'MemoryError' in r['stderr_tail']


@pytest.fixture
def listener():
    "A TCP server on 127.0.0.1 in this process; yields (port, accepted list)."
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(5); srv.settimeout(0.2)
    accepted, stop = [], threading.Event()
    def loop():
        while not stop.is_set():
            try: c, _ = srv.accept(); accepted.append(c)
            except OSError: pass
    t = threading.Thread(target=loop, daemon=True); t.start()
    yield srv.getsockname()[1], accepted
    stop.set(); t.join(2); srv.close()
    for c in accepted: c.close()


CONNECT = 'import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(("127.0.0.1", {port}))'


def test_socket_connect_fails_with_all_layers(listener):
    port, accepted = listener
    # sanity: the listener is reachable from this process
    with socket.create_connection(('127.0.0.1', port), timeout=2): pass
    for _ in range(50):
        if accepted: break
        threading.Event().wait(0.1)
    n0 = len(accepted)
    teq(n0, 1)
    r = run_code(CONNECT.format(port=port), '')
    teq(r['status'], 'error')
    assert 'PermissionError' in r['stderr_tail'] or 'OSError' in r['stderr_tail'], r['stderr_tail']
    teq(len(accepted), n0)


def test_socket_blocked_by_audit_hook_alone(listener):
    port, accepted = listener
    r = run_code(CONNECT.format(port=port), '', netns=False)
    teq((r['status'], r['netns']), ('error', False))
    assert 'sandbox: socket.__new__ is not allowed' in r['stderr_tail'], r['stderr_tail']
    teq(accepted, [])


def test_socket_blocked_by_network_namespace_alone(listener):
    if not netns_prefix(): pytest.skip('unshare -n is not available here: only the audit hook blocks sockets')
    port, accepted = listener
    r = run_code(CONNECT.format(port=port), '', audit_hook=False, landlock=False)
    teq((r['status'], r['netns']), ('error', True))
    assert 'PermissionError' not in r['stderr_tail'] and ('Network is unreachable' in r['stderr_tail']
            or 'Connection refused' in r['stderr_tail'] or 'timed out' in r['stderr_tail']), r['stderr_tail']
    teq(accepted, [])
    teq(sandbox_info()['netns'], ' '.join(netns_prefix()))


def test_socket_blocked_by_landlock_alone(listener):
    if landlock_abi() < 4: pytest.skip('Landlock with TCP rules (ABI >= 4) is not available on this kernel')
    port, accepted = listener
    r = run_code(CONNECT.format(port=port), '', audit_hook=False, netns=False)
    teq((r['status'], r['netns'], r['landlock'] >= 4), ('error', False, True))
    assert 'PermissionError: [Errno 13]' in r['stderr_tail'], r['stderr_tail']
    teq(accepted, [])


def test_dns_lookup_blocked():
    r = run_code('import socket\nsocket.getaddrinfo("example.com", 80)', '')
    teq(r['status'], 'error')


@pytest.mark.parametrize('attack', [
    'open({p!r}, "w").write("x")',
    'open({p!r}, "a").write("x")',
    'import os\nos.close(os.open({p!r}, os.O_WRONLY | os.O_CREAT))',
    'from pathlib import Path\nPath({p!r}).write_text("x")',
    'import os\nopen("inside.txt", "w").write("x")\nos.rename("inside.txt", {p!r})',
    'import os\nos.symlink({p!r}, "link")\nopen("link", "w").write("x")',
    'import shutil\nopen("inside.txt", "w").write("x")\nshutil.copyfile("inside.txt", {p!r})',
])
def test_write_outside_temp_dir_fails(attack):
    outside = Path(tempfile.mkdtemp(prefix='pulse-outside-'))/'victim.txt'
    r = run_code(attack.format(p=str(outside)), '')
    teq(r['status'], 'error')
    assert 'sandbox:' in r['stderr_tail'], r['stderr_tail']
    assert not outside.exists()


def test_existing_file_outside_is_not_modified_or_removed():
    victim = Path(tempfile.mkdtemp(prefix='pulse-outside-'))/'keep.txt'
    victim.write_text('original')
    for attack in ('open({p!r}, "r+").write("HACK")', 'import os\nos.remove({p!r})', 'import os\nos.truncate({p!r}, 0)',
                   'import os\nos.chmod({p!r}, 0o777)'):
        teq(run_code(attack.format(p=str(victim)), '')['status'], 'error')
    teq(victim.read_text(), 'original')


def test_writes_inside_temp_dir_and_reads_work():
    r = run_code('import os, json\nos.mkdir("d")\nopen("d/f.txt", "w").write("hi")\nDATA = open("d/f.txt").read()',
                 'assert DATA == "hi"\nimport math\nassert math.sqrt(4) == 2')
    teq(r['status'], 'pass')


def test_processes_cannot_be_started():
    for code in ('import os\nos.system("true")', 'import subprocess\nsubprocess.run(["true"])',
                 'import os\nos.execv("/bin/true", ["true"])', 'import os\nos.fork()', 'import ctypes'):
        r = run_code(code, '')
        teq((code, r['status']), (code, 'error'))
        assert 'sandbox:' in r['stderr_tail'], (code, r['stderr_tail'])


def test_child_is_isolated_python_with_scrubbed_env():
    os.environ['PULSE_SECRET_TEST'] = 'x'
    try:
        r = run_code('import os, sys, tempfile', 'assert sys.flags.isolated == 1\n'
                     'assert set(os.environ) <= {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}, sorted(os.environ)\n'
                     'assert os.path.realpath(os.getcwd()) == os.path.realpath(os.environ["HOME"])\n'
                     'assert os.path.basename(os.getcwd()).startswith("pulse-sandbox-")')
        teq(r['status'], 'pass')
    finally: del os.environ['PULSE_SECRET_TEST']


def test_temp_dir_removed_unless_kept():
    r = run_code('open("f", "w").write("x")', '', keep_dir=True)
    assert Path(r['dir'], 'f').exists()
    import shutil; shutil.rmtree(r['dir'])


def test_main_process_unaffected(tmp_path):
    cwd, limits = os.getcwd(), {k: resource.getrlimit(k) for k in (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE)}
    env, mods, path = dict(os.environ), set(sys.modules), list(sys.path)
    for code in ('import os\nos.chdir("/")\nimport sys\nsys.path.clear()', 'x = bytearray(8 * 2**30)', 'while True: pass',
                 'import socket\nsocket.socket()', 'import builtins\nbuiltins.open = None'):
        run_code(code, '', timeout=1, mem_mb=256)
    teq(os.getcwd(), cwd)
    teq({k: resource.getrlimit(k) for k in limits}, limits)
    teq(dict(os.environ), env)
    assert 'solution' not in sys.modules and not (set(sys.modules) - mods) & {'__sandbox__'}
    (tmp_path/'still.txt').write_text('ok'); teq((tmp_path/'still.txt').read_text(), 'ok')
    with socket.socket() as s: s.bind(('127.0.0.1', 0))  # this process can still open sockets
    teq(sys.path, path)                    # the child's sys.path.clear() did not reach this process
    import builtins, io
    assert builtins.open is io.open        # nor did its `builtins.open = None`


def test_extract_code():
    teq(extract_code('x\n```python\ndef f():\n    return 1\n```\n```python\ndef g(): pass\n```'), 'def f():\n    return 1')
    teq(extract_code('```py\ndef f(): pass\n```'), 'def f(): pass')
    teq(extract_code('Sure!\n\ndef f(x):\n    return x'), 'Sure!\n\ndef f(x):\n    return x')
    teq(extract_code('I cannot help with that.'), None)
    teq(extract_code(''), None)
