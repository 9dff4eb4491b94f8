"""SIGKILL `pulse generate` at many points, each rerun resuming from what the previous kill left: with 2 records per
checkpoint the run has 10 checkpoints (2+3+2+3 chunks over the four stages), and every run is killed the moment a
checkpoint lands (while the next chunk is already computing), then once while the pairs are written. After every kill
the run directory holds only whole records equal to an uninterrupted run's (same seeds); the final rerun ends with
exactly the uninterrupted run's records and pairs: none lost, none duplicated."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from pulse_nb.review import read_jsonl, STAGES

N_DELAYS = 10
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}


def cmd(out):
    return [sys.executable, '-m', 'pulse_nb.cli', 'generate', '--prompts', 'builtin:arithmetic', '--limit', '3',
            '--critics', '2', '--engine', 'hf', '--max-new-tokens', '8', '--seed', '5', '--batch-size', '2', '--out', str(out)]


def run_to_end(out) -> float:
    t0 = time.time()
    r = subprocess.run(cmd(out), env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.time() - t0


def records(run) -> dict:
    "Every stage's records by key; fails on a duplicated key or a line that is not whole JSON (except none at all)."
    out = {}
    for s in STAGES:
        p = Path(run)/f'{s}.jsonl'
        if p.exists() and p.stat().st_size:
            raw = p.read_bytes()
            body = raw if raw.endswith(b'\n') else raw[:raw.rfind(b'\n') + 1]  # a torn tail is cut on resume
            for line in body.splitlines(): json.loads(line)
        recs = read_jsonl(p)
        keys = [r['key'] for r in recs]
        assert len(keys) == len(set(keys)), f'duplicated records in {s}'
        out[s] = {r['key']: r for r in recs}
    return out


def n_lines(run) -> int:
    return sum(len(read_jsonl(Path(run)/f'{s}.jsonl')) for s in STAGES)


def kill_when(out, pred, timeout=900) -> bool:
    "Start a run, SIGKILL its process group as soon as `pred()` holds (polled every 5 ms); False if it ended first."
    p = subprocess.Popen(cmd(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while p.poll() is None and not pred() and time.time() - t0 < timeout: time.sleep(0.005)
    alive = p.poll() is None
    if alive: os.killpg(p.pid, signal.SIGKILL)
    p.wait(60)
    return alive and p.returncode == -signal.SIGKILL


def check_prefix(out, ref):
    "Whatever is on disk is part of the truth: known keys, identical content."
    got = records(out) if (out/'manifest.json').exists() else {s: {} for s in STAGES}
    for s in STAGES:
        assert set(got[s]) <= set(ref[s]), s
        for k, v in got[s].items(): assert v == ref[s][k], (s, k)
    return [len(got[s]) for s in STAGES]


@pytest.mark.slow
def test_sigkill_generate_at_many_points(tmp_path, model_path):
    T = run_to_end(tmp_path/'ref')
    ref = records(tmp_path/'ref')
    assert [len(ref[s]) for s in STAGES] == [3, 6, 3, 6]
    out, kills, log = tmp_path/'work', 0, []
    while n_lines(out) < sum(len(ref[s]) for s in STAGES):  # one kill per checkpoint
        before = n_lines(out)
        killed = kill_when(out, lambda: n_lines(out) > before)
        kills += killed
        log.append(('checkpoint', killed, check_prefix(out, ref)))
        assert n_lines(out) > before, log  # every run makes progress: a resume never redoes a saved checkpoint
    # every record is on disk; now kill while the pairs are being written (their temp file exists)
    tmp_seen = lambda: any(p.name.startswith('.pairs') for p in out.iterdir())
    killed = kill_when(out, tmp_seen); kills += killed
    log.append(('pairs temp file', killed, check_prefix(out, ref), (out/'pairs.jsonl').exists()))
    run_to_end(out)
    assert records(out) == ref
    assert (out/'pairs.jsonl').read_bytes() == (tmp_path/'ref'/'pairs.jsonl').read_bytes()
    assert not [p.name for p in out.iterdir() if p.name.startswith('.') and p.name != '.lock']  # no temp file left
    print(f'one run: {T:.1f}s; kills (point, really killed, records per stage):', *log, sep='\n  ')
    assert kills >= 10, log
