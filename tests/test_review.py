"The review protocol on the embedded model: resume after SIGKILL in every stage, config checks, unparsed critiques."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from pulse_nb.review import (review, load_run, read_jsonl, repair_jsonl, run_stage, assign, RunError, STAGES,
                             unparsed_rate)
from pulse_nb.preferences import diagnostics, build_pairs

ROOT = Path(__file__).resolve().parents[1]
# a tiny run: 3 prompts x 2 critics, 2 records per chunk, seeded sampling
SCRIPT = """import sys, torch
torch.set_num_threads(1)
from pulse_nb.review import review
review('builtin:arithmetic', 'hf', n_critics=2, limit=3, out_dir=sys.argv[1], max_new_tokens=12, batch_size=2,
       seed=3, temperature=0.7, progress=False)
"""

def _env():
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'OMP_NUM_THREADS': '1'}

def _start(script, out): return subprocess.Popen([sys.executable, str(script), str(out)], env=_env(),
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def _lines(p): return len(p.read_bytes().splitlines()) if p.exists() else 0

def _records(d):
    out = {}
    for s in STAGES:
        lines = [json.loads(l) for l in (d/f'{s}.jsonl').read_text().splitlines()]
        keys = [r['key'] for r in lines]
        assert len(keys) == len(set(keys)), f'duplicated records in {s}'
        out[s] = {r['key']: r for r in lines}
    return out

def test_jsonl_torn_tail(tmp_path):
    p = tmp_path/'s.jsonl'
    p.write_bytes(b'{"key": "a"}\n{"key": "b"}\n{"key": "c", "x": ')
    assert [r['key'] for r in read_jsonl(p)] == ['a', 'b']
    repair_jsonl(p); assert p.read_bytes() == b'{"key": "a"}\n{"key": "b"}\n'
    p.write_bytes(b'{"key": "a"}\n{"key": "b"\n')  # a complete line that is not valid JSON, at the end
    repair_jsonl(p); assert p.read_bytes() == b'{"key": "a"}\n'
    p.write_bytes(b'{"key": "a"}\ngarbage\n{"key": "b"}\n')
    with pytest.raises(RunError, match='line 2'): read_jsonl(p)

def test_run_stage_resumes_by_chunk(tmp_path):
    seen = []
    def work(ch, seed): seen.append(([it['key'] for it in ch], seed)); return [{'key': it['key'], 's': seed} for it in ch]
    items = [{'key': str(i)} for i in range(5)]
    full = run_stage(tmp_path/'a.jsonl', items, work, batch_size=2, progress=False)
    (tmp_path/'b.jsonl').write_text(json.dumps(full[0]) + '\n' + json.dumps(full[2]) + '\n' + '{"key": "4"')
    seen.clear()
    again = run_stage(tmp_path/'b.jsonl', items, work, batch_size=2, progress=False)
    assert again == full and [k for k, _ in seen] == [['0', '1'], ['2', '3'], ['4']]
    assert len(read_jsonl(tmp_path/'b.jsonl')) == 5

def test_assign_rejects_bad_actor():
    with pytest.raises(ValueError, match='actor must be'): assign(1, [object()], 1, actor='best')
    with pytest.raises(ValueError, match='personas'): assign(1, [object()], 9)

@pytest.mark.slow
def test_sigkill_in_every_stage_then_resume(tmp_path):
    "Kill the review during each of the 4 stages in turn (and tear the last line once); the resumed run equals an uninterrupted one."
    script = tmp_path/'run.py'; script.write_text(SCRIPT)
    ref, run = tmp_path/'ref', tmp_path/'killed'
    p = _start(script, ref); assert p.wait(timeout=1500) == 0, p.stderr.read().decode()[-3000:]
    killed_during = []
    for stage in STAGES:
        f = run/f'{stage}.jsonl'
        p = _start(script, run)
        while p.poll() is None and _lines(f) < 2: time.sleep(0.05)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL); p.wait()
            killed_during.append(stage)
            if stage == 'critiques':  # a kill in the middle of a write leaves a torn line
                with open(f, 'ab') as fh: fh.write(b'{"key": "r0/torn", "feedback": "hal')
        else: assert p.returncode == 0, p.stderr.read().decode()[-3000:]
    p = _start(script, run); assert p.wait(timeout=1500) == 0, p.stderr.read().decode()[-3000:]
    assert len(killed_during) >= 4, killed_during
    a, b = _records(ref), _records(run)
    for s in STAGES:
        assert set(a[s]) == set(b[s]), s
        assert a[s] == b[s], f'{s}: resumed records differ from an uninterrupted run'
    assert [len(a[s]) for s in STAGES] == [3, 6, 3, 6]

@pytest.fixture(scope='module')
def engine(request):
    try: return request.getfixturevalue('hf_engine')
    except pytest.FixtureLookupError:
        import torch
        from pulse_nb.engines import HFEngine
        return HFEngine()

@pytest.mark.slow
def test_text_mode_unparsed_counted_and_excluded_and_config_refused(engine, tmp_path):
    run = review('builtin:arithmetic', engine, n_critics=2, limit=2, out_dir=tmp_path, score_mode='text',
                 max_new_tokens=24, seed=0, progress=False)
    r = load_run(run)
    assert r['manifest']['rounds']['0']['config']['score_mode'] == 'text'
    crit = r['critiques'] + r['rescores']
    assert len(crit) == 8 and all((c['score'] is None) == (not c['parsed']) for c in crit)
    assert all(c['raw'] for c in crit if not c['parsed']) or all(c['parsed'] for c in crit)
    n_unp = sum(not c['parsed'] for c in crit)
    d = diagnostics(run)
    assert d['n_unparsed'] == n_unp and sum(v['unparsed'] for v in d['unparsed_per_critic'].values()) == n_unp
    assert unparsed_rate(run)['critiques']['unparsed'] == sum(not c['parsed'] for c in r['critiques'])
    ds = build_pairs(run)
    for row in ds:  # only critics that parsed both answers count
        ok = [k for k in row['critics']
              if any(c['critic'] == k and c['prompt_id'] == row['prompt_id'] and c['parsed'] for c in r['critiques'])
              and any(c['critic'] == k and c['prompt_id'] == row['prompt_id'] and c['parsed'] for c in r['rescores'])]
        assert ok == row['critics']
    assert len(ds) + sum(d['dropped'].values()) == 2
    with pytest.raises(RunError, match='different config'):
        review('builtin:arithmetic', engine, n_critics=2, limit=2, out_dir=tmp_path, score_mode='logprobs', progress=False)
    with pytest.raises(RunError, match='seed'):
        review('builtin:arithmetic', engine, n_critics=2, limit=2, out_dir=tmp_path, score_mode='text',
               max_new_tokens=24, seed=1, progress=False)
    assert [len(load_run(run)[s]) for s in STAGES] == [2, 4, 2, 4]  # refused runs wrote nothing


@pytest.mark.slow
def test_pairwise_mode_swaps_positions_and_labels_trl_pairs(engine, tmp_path):
    "Pairwise stage on the embedded model: both orders per critic, mass consistent, P(a1) read from the right slot, TRL accepts the pairs."
    from pulse_nb.preferences import pairwise_prefs, label_all
    run = review('builtin:arithmetic', engine, n_critics=2, limit=3, out_dir=tmp_path/'pw', max_new_tokens=12,
                 pairwise=True, progress=False)
    r = load_run(run)
    assert r['manifest']['rounds']['0']['config']['pairwise'] is True
    cmp_ = r['comparisons']
    assert len(cmp_) == 3 * 2 * 2 and len({c['key'] for c in cmp_}) == len(cmp_)
    for c in cmp_:
        assert 0 <= c['p_a'] and 0 <= c['p_b'] and abs(c['p_a'] + c['p_b'] - c['mass']) < 1e-6
        assert c['parsed'] == (c['mass'] >= 0.5)
    # the order-swapped chat really shows the other answer first
    a0 = {x['prompt_id']: x['text'] for x in r['answers']}
    pw = pairwise_prefs(cmp_)
    for (rnd, pid), critics in pw.items():
        for k, v in critics.items():
            o = {c['first']: c for c in cmp_ if c['prompt_id'] == pid and c['critic'] == k}
            want0 = o['a0']['p_b'] / (o['a0']['p_a'] + o['a0']['p_b'])
            want1 = o['a1']['p_a'] / (o['a1']['p_a'] + o['a1']['p_b'])
            assert abs(v['p_rev'] - (want0 + want1) / 2) < 1e-12
    pairs, drops = label_all(run, source='pairwise')
    assert len(pairs) + sum(drops.values()) == 3
    d = diagnostics(run)
    assert d['pairwise']['n_comparisons'] == 12 and 0 <= d['pairwise']['first_position_rate'] <= 1
    # a rerun resumes (nothing new) and a run without pairwise into the same dir is a different config
    review('builtin:arithmetic', engine, n_critics=2, limit=3, out_dir=run, max_new_tokens=12, pairwise=True, progress=False)
    assert len(read_jsonl(run/'comparisons.jsonl')) == 12
    with pytest.raises(RunError, match='different config'):
        review('builtin:arithmetic', engine, n_critics=2, limit=3, out_dir=run, max_new_tokens=12, progress=False)
    ds = build_pairs(run, source='pairwise')
    if len(ds):
        from trl.data_utils import is_conversational
        assert is_conversational(ds[0])


@pytest.mark.slow
def test_pairwise_text_mode_parses_verdicts(engine, tmp_path):
    run = review(['What is 2+2?', 'Name a primary colour.'], engine, n_critics=1, out_dir=tmp_path, max_new_tokens=24,
                 pairwise=True, score_mode='text', progress=False)
    cmp_ = load_run(run)['comparisons']
    assert len(cmp_) == 4
    for c in cmp_:
        assert (c['p_a'] is None) == (not c['parsed'])
        if c['parsed']: assert {c['p_a'], c['p_b']} == {0.0, 1.0}
    with pytest.raises(ValueError, match='pairwise=True'): build_pairs(review(['What is 2+2?'], engine, n_critics=1,
                                     out_dir=tmp_path/'plain', max_new_tokens=8, progress=False), source='pairwise')
