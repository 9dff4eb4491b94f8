"""End-to-end tests of the `pulse` command: the main job, determinism, kill-and-resume, bad input."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from fastcore.test import test_eq as teq

PULSE = [sys.executable, '-m', 'pulse_nb.cli']
ENV = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2'), 'PULSE_ENGINE': 'hf',
       'TOKENIZERS_PARALLELISM': 'false'}
SMALL = ['--quick', '--limit', '4', '--max-new-tokens', '32', '--seed', '3']


def pulse(*args, timeout=1800, check=True):
    r = subprocess.run(PULSE + list(args), env=ENV, capture_output=True, text=True, timeout=timeout)
    if check: assert r.returncode == 0, f'pulse {args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r


def test_help_lists_subcommands():
    out = pulse('--help').stdout
    for cmd in ('generate', 'train', 'evaluate', 'run'): assert cmd in out


def test_bad_input_is_a_clear_error(tmp_path):
    "Bad input: exit 1 and one line `pulse CMD: error: ...` that names the problem, never a traceback; nothing written."
    for cmd, args, names in (('generate', ['--prompts', str(tmp_path/'missing.jsonl')], 'missing.jsonl'),
                             ('train', ['--data', str(tmp_path/'nothing'), '--loss', 'no-such-loss'], 'no-such-loss')):
        r = pulse(cmd, *args, '--out', str(tmp_path/cmd), check=False)
        lines = r.stderr.strip().splitlines()
        assert (r.returncode, len(lines)) == (1, 1), (r.returncode, r.stderr[-3000:])
        assert lines[0].startswith(f'pulse {cmd}: error: ') and names in lines[0], lines
        assert not (tmp_path/cmd).exists()


def _lines(p): return Path(p).read_text().splitlines() if Path(p).exists() else []


@pytest.mark.slow
def test_run_end_to_end_killed_and_resumed_matches_uninterrupted(tmp_path):
    "`pulse run` killed during review and rerun gives exactly the dataset of an uninterrupted run with the same seed."
    a, b = tmp_path/'a', tmp_path/'b'
    # run A: SIGKILL once the first review stage has checkpointed something, then rerun to the end
    p = subprocess.Popen(PULSE + ['run', *SMALL, '--out', str(a)], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not list((a/'review').glob('critiques*.jsonl')):
        time.sleep(0.5)
    assert p.poll() is None, 'the run ended before it could be killed'
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert not (a/'summary.md').exists()
    r = pulse('run', *SMALL, '--out', str(a))
    assert str(a/'summary.md') in r.stdout
    # run B: uninterrupted, same settings
    pulse('run', *SMALL, '--out', str(b))
    teq(_lines(a/'pairs.jsonl'), _lines(b/'pairs.jsonl'))
    for stage in ('answers', 'critiques', 'revisions', 'rescores'):
        fa = sorted((a/'review').glob(f'{stage}*.jsonl'))
        teq([len(_lines(f)) for f in fa], [len(_lines(f)) for f in sorted((b/'review').glob(f'{stage}*.jsonl'))])
        for f in fa:
            keys = [json.dumps({k: v for k, v in json.loads(l).items() if k in ('prompt_id', 'round', 'critic', 'target')},
                               sort_keys=True) for l in _lines(f)]
            teq(len(keys), len(set(keys)))  # nothing duplicated
    # every artifact of the run is there and loadable
    for f in ('run.json', 'pairs.parquet', 'diagnostics.json', 'eval.json', 'summary.md', 'train/metrics.json'):
        assert (a/f).exists(), f
    assert (a/'train'/'adapter'/'adapter_config.json').exists()
    ev = json.loads((a/'eval.json').read_text())
    assert 0 <= ev['win_rate']['win_rate'] <= 1
    assert list((a/'plots').glob('*.png')), 'no plots written'
    # a rerun of a finished run does no work and changes nothing
    before = (a/'pairs.jsonl').read_text()
    pulse('run', *SMALL, '--out', str(a))
    teq((a/'pairs.jsonl').read_text(), before)
    # other settings on the same directory are refused
    r = pulse('run', *SMALL[:-1], '4', '--out', str(a), check=False)
    teq(r.returncode, 2)
    assert 'other settings' in r.stderr
