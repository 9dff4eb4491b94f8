"""Disk full while a review writes its JSONL: a clear error, no torn line trusted, and a resume that ends with the same
records as an uninterrupted run.

"Disk full" is a per-file size limit (`RLIMIT_FSIZE`) set inside a child process, with `SIGXFSZ` ignored so that
`write()` fails with `EFBIG` (the same `OSError` path as `ENOSPC`, without root or a tmpfs mount). Every run is a real
`review(...)` with the HF engine in its own process (1 thread, so every process computes the same numbers)."""
import errno, json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
from pulse_nb.review import read_jsonl, repair_jsonl, load_run, STAGES, append_jsonl, write_atomic

PROMPTS = ['What is 2+2?', 'Name a colour.']

CHILD = textwrap.dedent(r'''
    import json, os, resource, signal, sys
    out, limit = sys.argv[1], int(sys.argv[2])
    import torch; torch.set_num_threads(1)
    from pulse_nb.engine_hf import HFEngine
    from pulse_nb.review import review
    engine = HFEngine()  # load the model before the limit: only the run's own writes are limited
    if limit > 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try: review(json.loads(sys.argv[3]), engine, n_critics=1, out_dir=out, max_new_tokens=16, batch_size=1, progress=False)
    except OSError as e:
        print(f'OSERROR errno={e.errno} {e}', file=sys.stderr); sys.exit(3)
''')


def run_review(out, limit=0):
    "A review of PROMPTS into `out` in a child process whose files may not grow past `limit` bytes (0: no limit)."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    return subprocess.run([sys.executable, '-c', CHILD, str(out), str(limit), json.dumps(PROMPTS)], env=env,
                          capture_output=True, text=True, timeout=900)


def lines(path) -> list[bytes]: return Path(path).read_bytes().splitlines(keepends=True)


def records(run_dir) -> dict:
    run = load_run(run_dir)
    return {s: run[s] for s in ('prompts', *STAGES)}


@pytest.fixture(scope='module')
def reference(tmp_path_factory, model_path):
    "An uninterrupted run: the records every interrupted-then-resumed run must end with."
    out = tmp_path_factory.mktemp('disk')/'ref'
    r = run_review(out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_disk_full_mid_stage_then_resume(reference, tmp_path):
    ref = records(reference)
    crit = lines(reference/'critiques.jsonl')
    assert len(crit) == 2 and all(l.endswith(b'\n') for l in crit)
    # the limit falls in the second critique: answers, manifest and prompts fit, critique 2 does not. The manifest
    # records the machine (its CPU model, for one), so its size varies: the limit moves past it when it must
    small = {f.name: f.stat().st_size for f in reference.iterdir() if f.name in ('answers.jsonl', 'manifest.json', 'prompts.jsonl')}
    both = len(crit[0]) + len(crit[1])
    limit = max(len(crit[0]) + len(crit[1]) // 2, (max(small.values()) + both) // 2)
    assert max(small.values()) < limit < both, (small, limit, both)

    out = tmp_path/'run'
    r = run_review(out, limit)
    # a clear error, naming the file, not a silent truncation and not a success
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    err = r.stderr.strip().splitlines()[-1]
    assert f'errno={errno.EFBIG}' in err and 'critiques.jsonl' in err and 'rerun' in err, err
    # what is on disk: every line whole, valid JSON, and exactly the reference's first records
    got = lines(out/'critiques.jsonl')
    assert all(l.endswith(b'\n') for l in got), got[-1][-80:]
    assert got == crit[:len(got)] and len(got) < len(crit)
    assert lines(out/'answers.jsonl') == lines(reference/'answers.jsonl')
    assert not (out/'revisions.jsonl').exists() and not (out/'rescores.jsonl').exists()
    assert [p.name for p in out.iterdir() if p.name.startswith('.') and p.name != '.lock'] == []  # no temp file left

    # a torn tail (as a kill in the middle of a write leaves it) is never trusted
    with open(out/'critiques.jsonl', 'ab') as f: f.write(crit[len(got)][:len(crit[len(got)]) // 2])
    assert [c['key'] for c in read_jsonl(out/'critiques.jsonl')] == [json.loads(l)['key'] for l in got]

    # resume without the limit: the torn line is cut and rewritten, and the run ends as if never interrupted
    r = run_review(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert records(out) == ref
    for s in STAGES: assert lines(out/f'{s}.jsonl') == lines(reference/f'{s}.jsonl'), s
    keys = [c['key'] for c in read_jsonl(out/'critiques.jsonl')]
    assert len(keys) == len(set(keys)) == 2  # no lost, no duplicated record


@pytest.mark.slow
def test_disk_full_on_manifest_leaves_no_half_file(tmp_path, model_path):
    "A limit smaller than the manifest: the error names manifest.json and neither it nor a temp file is left."
    out = tmp_path/'run'
    r = run_review(out, 64)
    assert r.returncode == 3, (r.returncode, r.stderr[-3000:])
    err = r.stderr.strip().splitlines()[-1]
    assert f'errno={errno.EFBIG}' in err and 'manifest.json' in err, err
    assert sorted(p.name for p in out.iterdir()) == ['.lock']


def test_append_jsonl_failure_cuts_back_and_names_file(tmp_path):
    "In-process, with a real failing write: a file opened read-only makes `os.write` fail (EBADF)."
    p = tmp_path/'x.jsonl'
    with open(p, 'a') as f: append_jsonl(f, [{'key': 'a'}])
    with open(p, 'r') as f:
        with pytest.raises(OSError, match='x.jsonl'): append_jsonl(f, [{'key': 'b'}])
    assert p.read_bytes() == b'{"key": "a"}\n'


def test_repair_cuts_only_the_torn_tail(tmp_path):
    "A torn tail in any form (unterminated, invalid JSON, cut UTF-8) is cut; whole lines are kept."
    p = tmp_path/'x.jsonl'
    for tail in (b'{"key": "c", "te', b'{"key": "c"}', b'{"key": "c"', b'\xff\xfe', b'{"key": "c", "text": "\xe2\x82'):
        p.write_bytes(b'{"key": "a"}\n{"key": "b"}\n' + tail)
        # read_jsonl never returns a partial record; a whole object missing only its newline is complete data
        want = ['a', 'b', 'c'] if tail == b'{"key": "c"}' else ['a', 'b']
        assert [r['key'] for r in read_jsonl(p)] == want, tail
        assert repair_jsonl(p) == len(tail)  # the resume still rewrites it, so the file ends in whole lines
        assert p.read_bytes() == b'{"key": "a"}\n{"key": "b"}\n'


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
    "A write that cannot encode leaves the previous file and no temp file."
    p = tmp_path/'m.json'
    write_atomic(p, '{"a": 1}')
    with pytest.raises(UnicodeEncodeError): write_atomic(p, '{"a": "\ud800"}')
    assert p.read_text() == '{"a": 1}' and sorted(x.name for x in tmp_path.iterdir()) == ['m.json']


@pytest.mark.slow
def test_pulse_generate_disk_full_is_a_clear_cli_error(tmp_path, model_path):
    "The CLI turns the OSError into a one-line error (exit 1) that names the file and says a rerun resumes; no traceback."
    code = ('import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
            'resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))\nfrom pulse_nb.cli import main\nmain(sys.argv[1:])')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', 'PULSE_ENGINE': 'hf'}
    r = subprocess.run([sys.executable, '-c', code, 'generate', '--prompts', 'builtin:arithmetic', '--limit', '2',
                        '--critics', '1', '--engine', 'hf', '--max-new-tokens', '8', '--out', str(tmp_path/'run')],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert 'Traceback' not in r.stderr and 'manifest.json' in r.stderr and 'rerun the same command' in r.stderr, r.stderr[-3000:]
    assert not (tmp_path/'run'/'manifest.json').exists()
