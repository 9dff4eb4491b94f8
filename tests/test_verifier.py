"""Verifier critics (`verify:auto`) in real reviews: alone they label known pairs by ground truth, beside an LLM critic
they mix with it by weight, and an item without a reference gets no verifier score.

Known pairs: each prompt's first answer and revision are written into the run directory before `review` runs, as a
run killed after its revisions leaves them; `review` resumes there, and the critiques and re-scores are real (the
verifier's, and the embedded SmolLM2's as the LLM critic)."""
import json
from pathlib import Path
import pytest
from pulse_nb.review import review, load_run, assign
from pulse_nb.preferences import build_pairs, diagnostics
from pulse_nb.verifier import VerifierEngine
from pulse_nb.engines import make_engine
from pulse_nb.config import RunConfig, ConfigError, plan
from pulse_nb.loop import LazyEngine
from pulse_nb.core import UserError

PROMPTS = [  # (prompt record, first answer, revision)
    ({'id': 'right-wrong', 'prompt': 'Tom has 3 apples and buys 4 more. How many apples does he have?', 'answer': '7',
      'task': 'arithmetic'}, '3 + 4 = 7. The answer is 7.', '3 + 4 = 8. The answer is 8.'),
    ({'id': 'wrong-right', 'prompt': 'A box holds 6 pens. How many pens are in 2 boxes?', 'answer': '12',
      'task': 'arithmetic'}, '6 + 2 = 8. The answer is 8.', '6 x 2 = 12. The answer is 12.'),
    ({'id': 'both-right', 'prompt': 'What is 5 times 3, plus 1?', 'answer': '16', 'task': 'arithmetic'},
     'The answer is 16.', '5 x 3 = 15, plus 1 is 16. The answer is 16.'),
    ({'id': 'cut-right', 'prompt': 'What is 9 times 9?', 'answer': '81', 'task': 'arithmetic'},
     'The answer is 81.', 'Nine times nine is 81. The answer is 81.'),
    ({'id': 'no-reference', 'prompt': 'Write one sentence about the sea.', 'answer': None, 'task': 'general'},
     'The sea is wide.', 'The sea is wide, grey and restless under the wind.'),
]
CUT = {'cut-right'}  # its first answer ran into the token budget


def known_pairs(out: Path):
    "A run directory holding round 0's prompts, first answers and revisions (the critiques still to do)."
    out.mkdir(parents=True)
    rec = lambda p, text, cut: {'key': f"r0/{p['id']}", 'round': 0, 'prompt_id': p['id'], 'actor': 'hf:smollm2-135m-instruct',
                                'text': text, 'raw': text, 'n_tokens': 12, 'finish_reason': 'length' if cut else 'stop'}
    (out/'answers.jsonl').write_text(''.join(json.dumps(rec(p, a0, p['id'] in CUT)) + '\n' for p, a0, _ in PROMPTS))
    (out/'revisions.jsonl').write_text(''.join(json.dumps(rec(p, a1, False)) + '\n' for p, _, a1 in PROMPTS))
    return [p for p, _, _ in PROMPTS]


def by_id(ds): return {r['prompt_id']: r for r in ds.to_list()}


def test_a_verifier_alone_labels_known_pairs_by_ground_truth(tmp_path, hf_engine):
    prompts = known_pairs(tmp_path/'run')
    review(prompts, [hf_engine, VerifierEngine()], n_critics=2, out_dir=tmp_path/'run', actor='fixed', progress=False)
    run = load_run(tmp_path/'run')
    crit = run['critiques'] + run['rescores']
    assert {c['critic'] for c in crit} == {'verifier/auto'} and all(c['verifier'] and c['critic_model'] == 'verify:auto' for c in crit)
    assert run['manifest']['rounds']['0']['config']['critics'] == {'verifier/auto': {'model': 'verify:auto', 'persona': ''}}
    scores = {(c['prompt_id'], c['target']): c['score'] for c in crit}
    assert scores[('right-wrong', 'a0')] == 9 and scores[('right-wrong', 'a1')] == 1
    assert scores[('cut-right', 'a0')] == 1, 'an answer cut at the budget never finished: it is wrong'
    no_ref = [c for c in crit if c['prompt_id'] == 'no-reference']
    assert [(c['score'], c['parsed']) for c in no_ref] == [(None, False)] * 2, 'no reference: no score, never a guess'
    pairs = by_id(build_pairs(tmp_path/'run'))
    assert set(pairs) == {'right-wrong', 'wrong-right', 'cut-right'}  # both right: a tie; no reference: no critic
    assert pairs['right-wrong']['chosen'][0]['content'] == PROMPTS[0][1]
    assert pairs['wrong-right']['chosen'][0]['content'] == PROMPTS[1][2]
    assert pairs['cut-right']['chosen_is_revision'] is True
    assert all(p['label_correct'] is not False for p in pairs.values())
    d = diagnostics(tmp_path/'run')
    assert d['dropped'] == {'margin': 1, 'too_few_critics': 1}
    assert d['ground_truth']['revision_fixes'] == 1 and d['ground_truth']['revision_breaks'] == 1
    assert d['verifier'] == {'verifiers': ['verifier/auto'], 'n_checked': 0, 'n_agree': 0, 'peer_label_accuracy': None}


def test_a_hybrid_pool_mixes_the_verifier_and_an_llm_critic_by_weight(tmp_path, hf_engine):
    prompts = known_pairs(tmp_path/'run')
    actor = LazyEngine('hf:smollm2-135m-instruct')  # its answers and revisions are already there: never loaded
    pool = [actor, hf_engine, make_engine('verify:auto;weight=3')]
    review(prompts, pool, n_critics=1, out_dir=tmp_path/'run', actor='fixed', progress=False, max_new_tokens=24)
    assert not actor.loaded
    run = load_run(tmp_path/'run')
    crit = run['critiques'] + run['rescores']
    llm = [c for c in crit if not c.get('verifier')]
    assert len(llm) == 2 * len(PROMPTS) and all(c['score_mode'] == 'logprobs' for c in llm)
    assert sum(c.get('verifier', False) for c in crit) == 2 * len(PROMPTS)
    pairs = by_id(build_pairs(tmp_path/'run'))
    for pid, first_right in (('right-wrong', True), ('wrong-right', False)):
        # weight 3: the verifier's 8-point gap outweighs any gap the LLM critic (1 to 9) can give
        assert pairs[pid]['chosen_is_revision'] is (not first_right) and pairs[pid]['n_critics'] == 2
    ref = pairs.get('no-reference')
    if ref is not None:  # the LLM critic alone labels it (unless its two scores tie)
        assert ref['n_critics'] == 1 and ref['critics'] == [llm[0]['critic']]
    d = diagnostics(tmp_path/'run')
    vc = d['verifier']
    assert vc['verifiers'] == ['verifier/auto'] and 0 < vc['n_checked'] <= 3  # the pairs the verifier tells apart
    assert 0 <= vc['n_agree'] <= vc['n_checked']


def test_a_verifier_cannot_act_judge_or_be_the_only_judge():
    v = VerifierEngine()
    with pytest.raises(UserError, match='cannot act'): assign(2, [v, LazyEngine('hf:smollm2-135m-instruct')], 1, actor='fixed')
    with pytest.raises(UserError, match='only verifiers'): assign(2, [v], 1)
    with pytest.raises(ConfigError, match='cannot act'): RunConfig(pool={'actor': 'verify:auto'})
    with pytest.raises(ConfigError, match='cannot judge'): RunConfig(pool={'critics': ['verify:auto'], 'judges': ['verify:auto']})
    with pytest.raises(ConfigError, match='win_rate_prompts: 0'): RunConfig(pool={'critics': ['verify:auto']}, eval={'win_rate_prompts': 2})
    cfg = RunConfig(pool={'critics': ['verify:auto', 'hf:smollm2-135m-instruct']})
    assert cfg.pool.judge_specs() == ['hf:smollm2-135m-instruct']  # the verifier is no judge
    assert plan(cfg)['models']['judges'] == ['hf:smollm2-135m-instruct']
    with pytest.raises(UserError, match='weight must be'): make_engine('verify:auto;weight=-1')
