"The review protocol on the embedded model: resume after SIGKILL in every stage, config checks, unparsed critiques."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
from pulse_nb.review import (review, load_run, read_jsonl, repair_jsonl, run_stage, assign, RunError, STAGES,
                             unparsed_rate)
from pulse_nb.preferences import diagnostics, build_pairs, label_all
from pulse_nb.engines import Engine, Generation, Completion

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
def engine(hf_engine): return hf_engine


class Scripted(Engine):
    """A peer whose reply to each chat is `reply(conv)`. It pins exactly what a critic says (a verdict, a position
    bias), which a real model does only by chance; the tests around it run the real model."""
    name, supports_logprobs = 'scripted', False
    def __init__(self, reply, model='scripted'): self.reply, self.model = reply, model
    def _generate(self, convs, sc, progress=False, truncate=False):
        return [Generation([Completion(self.reply(c), 1, 'stop')], 1) for c in convs]


def peer(verdict):
    "A scripted peer: answers 'Short.', revises to a longer answer, scores 5, and gives `verdict(answer A, answer B)`."
    def reply(conv):
        u = conv[-1]['content']
        if '[Answer A]' in u:
            a, b = (u.split(f'[Answer {x}]\n')[1].split(f'\n[End of answer {x}]')[0] for x in 'AB')
            return f'Both answer it.\nBetter: {verdict(a, b)}'
        if '[Answer]' in u: return 'Fine.\nScore: 5'
        return 'A longer, revised answer.' if any(m['role'] == 'assistant' for m in conv) else 'Short.'
    return Scripted(reply)

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
    # one more critique unparsed, recorded as `review` records it: counted once more, and that critic leaves the pair
    c = r['critiques'][0]
    forced = dict(r, critiques=[dict(c, score=None, parsed=False, raw='No score here.')] + r['critiques'][1:])
    d2 = diagnostics(forced)
    assert d2['n_unparsed'] == n_unp + (1 if c['parsed'] else 0)
    assert d2['unparsed_per_critic'][c['critic']]['unparsed'] == d['unparsed_per_critic'][c['critic']]['unparsed'] + c['parsed']
    pairs, _ = label_all(forced)
    assert all(c['critic'] not in p['critics'] for p in pairs if p['prompt_id'] == c['prompt_id'])
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
    # each record's verdict was read from the chat of its order: rescoring that chat gives its P(' A'), P(' B'), and
    # in that chat answer A is the one the record names `first`
    from pulse_nb import prompts as P
    texts = {(t, x['prompt_id']): x['text'] for t, f in (('a0', 'answers'), ('a1', 'revisions')) for x in r[f]}
    ptext = {p['id']: p['prompt'] for p in r['prompts']}
    for c in cmp_:
        a0, a1 = texts[('a0', c['prompt_id'])], texts[('a1', c['prompt_id'])]
        conv = dict(zip(('a0', 'a1'), P.pairwise_convs(ptext[c['prompt_id']], a0, a1, c['persona'])))[c['first']]
        shown_a = conv[-1]['content'].split('[Answer A]\n')[1].split('\n[End of answer A]')[0]
        assert shown_a == texts[(c['first'], c['prompt_id'])]
        ro = engine.score([P.score_conv(conv, c['feedback'], P.PAIRWISE_PREFIX)], list(P.PAIRWISE_CANDIDATES))[0]
        ca, cb = P.PAIRWISE_CANDIDATES
        assert abs(ro.probs[ca] - c['p_a']) < 1e-3 and abs(ro.probs[cb] - c['p_b']) < 1e-3, (c, ro)
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
    from trl.data_utils import is_conversational
    ds = build_pairs(run, source='pairwise')
    assert len(ds) == len(pairs) and all(is_conversational(row) for row in ds)


def test_manifest_records_the_personas_and_critics_that_ran(tmp_path):
    "Distinct models keep the persona of their pool index (not personas[:n_critics]): the manifest records what ran."
    pool = [Scripted(peer(lambda a, b: 'A').reply, model=f'm{i}') for i in range(3)]
    run = review(['What is 2+2?', 'Name a colour.', 'Say hi.'], pool, n_critics=2, out_dir=tmp_path/'r',
                 score_mode='text', progress=False)
    ran = {(c['critic'], c['critic_model'], c['persona']) for c in load_run(run)['critiques']}
    cfg = json.loads((run/'manifest.json').read_text())['rounds']['0']['config']
    assert {c['persona'] for c in load_run(run)['critiques']} == {'strict', 'editor', 'teacher'} == set(cfg['personas'])
    assert {(k, v['model'], v['persona']) for k, v in cfg['critics'].items()} == ran
    two = review(['What is 2+2?'], pool[1:], n_critics=1, actor='fixed', out_dir=tmp_path/'two', score_mode='text', progress=False)
    cfg = json.loads((two/'manifest.json').read_text())['rounds']['0']['config']
    assert cfg['personas'] == ['editor'] and cfg['critics'] == {'m2/editor': {'model': 'scripted:m2', 'persona': 'editor'}}

def test_pairwise_text_verdicts_are_read_per_position(tmp_path):
    "Scripted critics: one prefers the revision wherever it is shown, one always says A (pure position bias)."
    fair = review(['What is 2+2?', 'Name a colour.'], peer(lambda a, b: 'A' if 'revised' in a else 'B'), n_critics=1,
                  out_dir=tmp_path/'fair', pairwise=True, score_mode='text', progress=False)
    cmp_ = load_run(fair)['comparisons']
    assert sorted((c['first'], c['p_a'], c['p_b'], c['parsed']) for c in cmp_) == \
        [('a0', 0.0, 1.0, True)] * 2 + [('a1', 1.0, 0.0, True)] * 2
    ds = build_pairs(fair, source='pairwise')
    assert len(ds) == 2 and all(p['chosen_is_revision'] and p['margin'] == 1.0 for p in ds)
    assert {p['chosen'][0]['content'] for p in ds} == {'A longer, revised answer.'}
    assert diagnostics(fair)['pairwise']['first_position_rate'] == 0.5
    biased = review(['What is 2+2?', 'Name a colour.'], peer(lambda a, b: 'A'), n_critics=1, out_dir=tmp_path/'biased',
                    pairwise=True, score_mode='text', progress=False)
    pairs, drops = label_all(biased, source='pairwise')
    assert pairs == [] and drops == {'margin': 2}  # a verdict that only follows the position cancels out
    assert diagnostics(biased)['pairwise']['first_position_rate'] == 1.0


class WithVerdict(Engine):
    """The embedded model's own pairwise explanation (which, at 24 tokens, never holds a verdict), then a verdict line in
    one of the shapes critics write, for the longer of the two answers shown (the revision or not, in either position)."""
    name, supports_logprobs = 'hf+verdict', False
    SHAPES = ('Better: {}', '**Better:** {}', 'Verdict: [[{}]]', 'Better answer: {}')
    def __init__(self, inner): self.inner, self.model = inner, inner.model
    def _generate(self, convs, sc, progress=False, truncate=False):
        gens, out = self.inner.generate(convs, sc), []
        for i, (conv, g) in enumerate(zip(convs, gens)):
            u, c = conv[-1]['content'], g.completions[0]
            if '[Answer A]' in u:
                a, b = (u.split(f'[Answer {x}]\n')[1].split(f'\n[End of answer {x}]')[0] for x in 'AB')
                c = Completion(c.text + '\n' + self.SHAPES[i % 4].format('A' if (len(a), a) > (len(b), b) else 'B'),
                               c.n_tokens, c.finish_reason)
            out.append(Generation([c], g.prompt_tokens))
        return out


@pytest.mark.slow
def test_pairwise_text_mode_parses_verdicts(engine, tmp_path):
    "Text-mode verdicts on the embedded model: text without a verdict is unparsed, every verdict line parses, read per position."
    import re
    qs = ['What is 2+2?', 'Name a primary colour.']
    verdict = re.compile(r'(?:better(?: answer)?|verdict)\s*\**\s*[:=]\s*\**\s*\[?\[?([AB])\b', re.I)  # an independent reader
    run = review(qs, engine, n_critics=1, out_dir=tmp_path/'own', max_new_tokens=24, pairwise=True, score_mode='text',
                 progress=False)
    cmp_ = load_run(run)['comparisons']
    assert len(cmp_) == 4
    for c in cmp_:  # the model's own text: parsed exactly when it holds a verdict line, and then P(A), P(B) follow it
        v = (verdict.findall(c['raw']) or [None])[-1]
        assert (c['parsed'], c['p_a'], c['p_b']) == ((True, float(v.upper() == 'A'), float(v.upper() == 'B')) if v
                                                     else (False, None, None)), c
    run = review(qs, WithVerdict(engine), n_critics=1, out_dir=tmp_path/'verdict', max_new_tokens=24, pairwise=True,
                 score_mode='text', progress=False)
    r = load_run(run)
    cmp_ = r['comparisons']
    texts = {(t, x['prompt_id']): x['text'] for t, f in (('a0', 'answers'), ('a1', 'revisions')) for x in r[f]}
    assert len(cmp_) == 4 and all(c['parsed'] for c in cmp_), [c['raw'] for c in cmp_]
    for c in cmp_:
        a = texts[(c['first'], c['prompt_id'])]
        b = texts[('a1' if c['first'] == 'a0' else 'a0', c['prompt_id'])]
        want = 'A' if (len(a), a) > (len(b), b) else 'B'
        assert (c['p_a'], c['p_b']) == (float(want == 'A'), float(want == 'B')), (want, c)
    # both orders agree (the longer answer wins): each pair with two different answers chooses the longer one
    ds = build_pairs(run, source='pairwise')
    longer = {pid: max(texts[('a0', pid)], texts[('a1', pid)], key=lambda t: (len(t), t))
              for pid in {c['prompt_id'] for c in cmp_} if texts[('a0', pid)] != texts[('a1', pid)]}
    assert {p['prompt_id']: p['chosen'][0]['content'] for p in ds} == longer and all(p['margin'] == 1.0 for p in ds)
    with pytest.raises(ValueError, match='pairwise=True'): build_pairs(review(['What is 2+2?'], engine, n_critics=1,
                                     out_dir=tmp_path/'plain', max_new_tokens=8, progress=False), source='pairwise')


def test_a_manifest_from_before_the_critics_were_recorded_still_resumes(tmp_path):
    "An old manifest (personas as configured, no critic slots) resumes when everything else agrees, and then records what ran."
    from pulse_nb.review import check_manifest, RunError
    new = {'n_prompts': 3, 'seed': 0, 'personas': ['editor', 'teacher'],
           'critics': {'hf:a': {'model': 'a', 'persona': 'editor'}, 'hf:b': {'model': 'b', 'persona': 'teacher'}}}
    old = {'n_prompts': 3, 'seed': 0, 'personas': ['strict', 'editor']}
    (tmp_path/'manifest.json').write_text(json.dumps({'format': 1, 'created': 0, 'rounds': {'0': {'config': old}}}))
    with pytest.raises(RunError, match='seed'): check_manifest(tmp_path, 0, {**new, 'seed': 1})
    check_manifest(tmp_path, 0, new)
    assert json.loads((tmp_path/'manifest.json').read_text())['rounds']['0']['config'] == new


def test_a_resume_with_other_numerics_or_chunks_is_refused_before_it_writes(tmp_path):
    "The engine's numerics are recorded with the round; a resume on an engine that computes differently, or with another chunk size, is refused in one line."
    from pulse_nb.engine_hf import HFEngine
    kw = dict(n_critics=1, limit=2, out_dir=tmp_path/'r', max_new_tokens=8, seed=1, progress=False, batch_size=2)
    with HFEngine(batch_size=4) as e: review('builtin:arithmetic', e, stop_after='answers', **kw)
    man = json.loads((tmp_path/'r'/'manifest.json').read_text())
    num = man['rounds']['0']['numerics']['hf:smollm2-135m-instruct']
    assert num['batch_size'] == 4 and num['dtype'] == 'float32' and num['threads'] >= 1 and num['cpu']
    with HFEngine(batch_size=8) as e, pytest.raises(RunError, match=r"batch_size 4 then, 8 now") as err:
        review('builtin:arithmetic', e, **kw)
    assert '\n' not in str(err.value) and load_run(tmp_path/'r')['critiques'] == []
    with HFEngine(batch_size=4) as e, pytest.raises(RunError, match='batch_size'):
        review('builtin:arithmetic', e, **{**kw, 'batch_size': 3})  # other chunks: other seeds
    with HFEngine(batch_size=4) as e: review('builtin:arithmetic', e, **kw)  # the same setup resumes
    assert len(load_run(tmp_path/'r')['critiques']) == 2
