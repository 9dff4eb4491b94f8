"""Best-of-n review on the embedded model: n sampled answers per prompt, each critiqued, revised and re-scored; one pair
per prompt from the best and the worst candidate by the pool's scores; every candidate kept in the records."""
import statistics as st
import pytest
from pulse_nb.review import review, load_run, STAGES
from pulse_nb.preferences import build_pairs, diagnostics
from pulse_nb.verifier import VerifierEngine
from pulse_nb.core import UserError
from pulse_nb.loop import LazyEngine
from pulse_nb.config import RunConfig, ConfigError

N, K = 3, 3  # prompts, answers per prompt


def pool():
    "The embedded SmolLM2 acting, the same weights as an LLM critic (as `pulse run` pairs them), and the verifier."
    actor = LazyEngine('hf:smollm2-135m-instruct', _box=BOX)
    return [actor, actor.alias(), VerifierEngine()]

BOX = {'engine': None, 'loads': 0}  # one model for the module

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('bon')/'run'
    review('builtin:arithmetic', pool(), n_critics=1, limit=N, out_dir=out, actor='fixed',
           n_answers=K, max_new_tokens=24, temperature=1.0, seed=5, batch_size=4, progress=False)
    return out


def test_every_sample_is_a_candidate_with_its_own_critiques_and_revision(run_dir):
    run = load_run(run_dir)
    assert len(run['answers']) == N and all(len(a['samples']) == K for a in run['answers'])
    assert all(a['text'] == a['samples'][0]['text'] for a in run['answers'])
    assert sum(len({s['text'] for s in a['samples']}) > 1 for a in run['answers']) >= 2, 'samples at temperature 1 should differ'
    assert len(run['revisions']) == N * K and len(run['critiques']) == len(run['rescores']) == N * K * 2  # an LLM critic + the verifier
    assert {r['sample'] for r in run['revisions']} == set(range(K))
    assert all(len({r['key'] for r in run[s]}) == len(run[s]) for s in STAGES)
    assert run['manifest']['rounds']['0']['config']['n_answers'] == K


def test_the_pair_is_the_best_against_the_worst_candidate(run_dir):
    run = load_run(run_dir)
    score = {}  # (prompt, sample, target) -> mean score over the critics that parsed, rebuilt from the records
    for c in run['critiques'] + run['rescores']:
        if c['parsed']: score.setdefault((c['prompt_id'], c['sample'], c['target']), []).append(c['score'])
    text = {(a['prompt_id'], j, 'a0'): s['text'] for a in run['answers'] for j, s in enumerate(a['samples'])}
    text |= {(r['prompt_id'], r['sample'], 'a1'): r['text'] for r in run['revisions']}
    pairs = build_pairs(run_dir).to_list()
    assert 1 <= len(pairs) <= N and len({p['prompt_id'] for p in pairs}) == len(pairs)
    for p in pairs:
        mine = {k: st.fmean(v) for k, v in score.items() if k[0] == p['prompt_id']}
        assert p['chosen'][0]['content'] == text[max(mine, key=mine.get)]
        assert p['rejected'][0]['content'] == text[min(mine, key=mine.get)]
        assert p['margin'] == pytest.approx(max(mine.values()) - min(mine.values()))
    d = diagnostics(run_dir)
    assert d['n_items'] == N * K and d['ground_truth']['n_verifiable'] == N * K


def test_a_rerun_resumes_without_new_records_and_bad_n_is_refused(run_dir, hf_engine):
    before = {s: (run_dir/f'{s}.jsonl').read_bytes() for s in STAGES}
    review('builtin:arithmetic', pool(), n_critics=1, limit=N, out_dir=run_dir, actor='fixed',
           n_answers=K, max_new_tokens=24, temperature=1.0, seed=5, batch_size=4, progress=False)
    assert {s: (run_dir/f'{s}.jsonl').read_bytes() for s in STAGES} == before
    with pytest.raises(UserError, match='temperature > 0'): review('builtin:arithmetic', [hf_engine], n_answers=2, temperature=0,
                                                                   out_dir=run_dir.parent/'x', limit=1, progress=False)
    with pytest.raises(UserError, match='n_answers must be'): review('builtin:arithmetic', [hf_engine], n_answers=0,
                                                                     out_dir=run_dir.parent/'y', limit=1, progress=False)
    with pytest.raises(ConfigError, match='labelled from scores'):
        RunConfig(review={'n_answers': 2, 'pairwise': True, 'revise': True}, label={'source': 'pairwise'})
    with pytest.raises(ConfigError, match='temperature > 0'): RunConfig(review={'n_answers': 2, 'temperature': 0})


# ---- no revisions (review.revise: false, the default run's review), labelled by the references ----------------------

@pytest.fixture(scope='module')
def plain_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('bon')/'plain'
    review('builtin:arithmetic', pool(), n_critics=1, limit=N, out_dir=out, actor='fixed', n_answers=K, revise=False,
           max_new_tokens=24, temperature=1.0, seed=5, batch_size=4, progress=False)
    return out


def test_without_revisions_the_round_ends_after_the_critiques(plain_dir):
    run = load_run(plain_dir)
    assert len(run['answers']) == N and all(len(a['samples']) == K for a in run['answers'])
    assert run['revisions'] == [] and run['rescores'] == [] and len(run['critiques']) == N * K * 2
    assert run['manifest']['rounds']['0']['config']['revise'] is False
    from pulse_nb.preferences import collect
    items = collect(plain_dir)
    assert len(items) == N * K and all(it['a1'] is None and it['c1'] == {} for it in items)


def test_the_references_label_a_right_sample_against_a_wrong_one(plain_dir):
    from pulse_nb.data import verify_answer
    run = load_run(plain_dir)
    prompts = {p['id']: p for p in run['prompts']}
    right = {a['prompt_id']: [verify_answer(prompts[a['prompt_id']], s['text']) for s in a['samples']] for a in run['answers']}
    decisive = {pid for pid, v in right.items() if 1.0 in v and 0.0 in v}
    pairs = build_pairs(plain_dir, source='verifier').to_list()
    assert {p['prompt_id'] for p in pairs} == decisive, (right, [p['prompt_id'] for p in pairs])
    for p in pairs:
        item = prompts[p['prompt_id']]
        assert verify_answer(item, p['chosen'][0]['content']) == 1.0 and verify_answer(item, p['rejected'][0]['content']) == 0.0
        assert p['label_correct'] is True and p['chosen_is_revision'] is False and p['critics'] == ['reference']
    d = diagnostics(plain_dir, source='verifier')
    assert d['n_pairs'] == len(pairs) and d['revision_win_rate'] is None and d['revised'] is False
    assert d['dropped'].get('not_decisive', 0) == N - len(decisive) and d['ground_truth']['acc_a1'] is None
    assert d['verifier']['n_checked'] >= 0 and d['label_source'] == 'verifier'


def test_a_plain_rerun_resumes_and_revise_false_needs_several_answers(plain_dir, hf_engine):
    before = {s: (plain_dir/f'{s}.jsonl').read_bytes() for s in ('answers', 'critiques')}
    review('builtin:arithmetic', pool(), n_critics=1, limit=N, out_dir=plain_dir, actor='fixed', n_answers=K, revise=False,
           max_new_tokens=24, temperature=1.0, seed=5, batch_size=4, progress=False)
    assert {s: (plain_dir/f'{s}.jsonl').read_bytes() for s in before} == before and not (plain_dir/'revisions.jsonl').exists()
    with pytest.raises(UserError, match='needs n_answers >= 2'):
        review('builtin:arithmetic', [hf_engine], n_answers=1, revise=False, out_dir=plain_dir.parent/'z', limit=1, progress=False)
    from pulse_nb.core import RunError
    with pytest.raises(RunError, match='different config'):  # the same directory with revisions is another run
        review('builtin:arithmetic', pool(), n_critics=1, limit=N, out_dir=plain_dir, actor='fixed', n_answers=K,
               max_new_tokens=24, temperature=1.0, seed=5, batch_size=4, progress=False)
