"""`pulse_nb.evaluate`: verdict reading, position-swap outcomes, bootstrap and length-controlled win rates (pure
unit tests on synthetic verdicts), then the real embedded model through `HFEngine` (slow)."""
import json
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from fastcore.test import test_eq as teq, test_close as tclose
from pulse_nb.engines import SamplingConfig
from pulse_nb.core import UserError
from pulse_nb.data import check_answer, make_arithmetic
from pulse_nb.evaluate import (probs_verdict, parse_verdict, order_verdict, combine_orders, judge_conv, pair_scores,
    bootstrap_ci, lc_win_rate, length_features, fit_length_logit, summarise_judgements, win_rate, answer_accuracy,
    heldout_prompts, evaluate, summary_table, code_eval, CODE_TASKS, is_adapter, merge_adapter, eval_engine, JUDGE_PREFIX)


def rec(pair, l1, l2, judge=0):
    "A synthetic judgement record: letters given with the candidate first (l1) and second (l2)."
    v1, v2 = order_verdict(l1, False), order_verdict(l2, True)
    return {'pair': pair, 'judge': judge, 'judge_model': f'j{judge}', 'verdict_cand_first': v1, 'verdict_cand_second': v2,
            'outcome': combine_orders(v1, v2)}


# ---------- pure unit tests ----------

def test_outcomes_cancel_position_bias():
    teq(rec(0, 'A', 'B')['outcome'], 'win')
    teq(rec(0, 'B', 'A')['outcome'], 'loss')
    teq(rec(0, 'A', 'A')['outcome'], 'tie')   # always-first judge
    teq(rec(0, 'B', 'B')['outcome'], 'tie')   # always-second judge
    teq(rec(0, 'C', 'B')['outcome'], 'tie')
    teq(rec(0, None, 'B')['outcome'], None)


def test_probs_verdict_and_text_parsing():
    teq(probs_verdict({'A': .1, 'B': .7})[0], 'B')
    tclose(probs_verdict({'A': .2, 'B': .2, 'C': .4})[1], .5)
    teq(probs_verdict({'A': .01, 'B': .02}, mass=.03), (None, None))
    teq(parse_verdict('Answer B is wrong about the date. [[A]]'), 'A')
    teq(parse_verdict('**Better answer:** B'), 'B')
    teq(parse_verdict('I like both.'), None)
    teq(judge_conv('q', 'a', 'b')[-1], {'role': 'assistant', 'content': JUDGE_PREFIX})


def test_win_rate_counts_and_consistency():
    recs = [rec(0, 'A', 'B'), rec(1, 'A', 'B'), rec(2, 'B', 'A'), rec(3, 'A', 'A')]
    s = summarise_judgements(recs, 4, n_boot=200)
    teq((s['wins'], s['ties'], s['losses']), (2, 1, 1))
    tclose(s['win_rate'], (2 + .5*1)/4)
    tclose(s['consistency'], 3/4)
    json.dumps(s)


def test_peer_judges_are_averaged_per_pair():
    recs = [rec(0, 'A', 'B', 0), rec(0, 'B', 'A', 1), rec(1, 'A', 'B', 0), rec(1, 'A', 'B', 1)]
    teq(list(pair_scores(recs, 2)), [.5, 1.])
    s = summarise_judgements(recs, 2, n_boot=100)
    tclose(s['win_rate'], .75)
    teq([j['win_rate'] for j in s['per_judge']], [1., .5])


def test_unreadable_verdicts_are_excluded_not_guessed():
    recs = [rec(0, None, 'B'), rec(1, 'A', 'B')]
    s = summarise_judgements(recs, 2, n_boot=100)
    teq((s['n_judged'], s['n_unreadable'], s['win_rate']), (1, 1, 1.))


def test_bootstrap_ci_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.choice([0, .5, 1], size=20)
        lo, hi = bootstrap_ci(y, seed=1)
        assert lo <= y.mean() <= hi
        teq(bootstrap_ci(y, seed=1), (lo, hi))
    lo, hi = bootstrap_ci(np.full(10, .5))
    teq((lo, hi), (.5, .5))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0., .5, 1.]), min_size=2, max_size=30), st.integers(1, 500))
def test_lc_equals_raw_when_lengths_equal(y, L):
    y = np.array(y)
    tclose(lc_win_rate(y, [L]*len(y), [L]*len(y)), y.mean(), eps=1e-4)


def test_lc_equals_raw_on_synthetic_verdicts():
    recs = [rec(i, *ls) for i, ls in enumerate([('A', 'B'), ('A', 'A'), ('B', 'A'), ('A', 'B'), ('A', 'B'), ('B', 'B')])]
    s = summarise_judgements(recs, 6, len_cand=[40]*6, len_base=[40]*6, n_boot=300)
    tclose(s['lc_win_rate'], s['win_rate'], eps=1e-6)
    assert s['lc_win_rate_ci'][0] <= s['lc_win_rate'] <= s['lc_win_rate_ci'][1]


def test_lc_removes_a_pure_length_effect():
    "The candidate wins exactly when it is longer: length control moves the rate towards 1/2."
    rng = np.random.default_rng(0)
    d = rng.normal(0, 30, 200)
    y = (d > 0).astype(float)
    y[:20] = 1 - y[:20]  # some noise so the fit is finite
    raw, lc = y.mean(), lc_win_rate(y, 100 + d, np.full(200, 100))
    assert abs(lc - .5) < .1, lc
    # a candidate better at equal length keeps its advantage after control
    y2 = np.where(rng.random(200) < .8, 1., 0.)
    assert lc_win_rate(y2, 100 + d, np.full(200, 100)) > .65


def test_lc_extreme_rates_are_finite():
    tclose(lc_win_rate([1.]*8, list(range(8)), [3]*8), 1., eps=1e-6)
    tclose(lc_win_rate([0.]*8, list(range(8)), [3]*8), 0., eps=1e-6)
    b, w = fit_length_logit(np.array([[1., 0, 1, 1]]), np.zeros((1, 4)))
    tclose(1/(1 + np.exp(-b[0])), .75, eps=1e-6); tclose(w[0], 0.)
    teq(list(length_features([5, 5], [5, 5])), [0., 0.])


def test_check_answer_on_known_strings():
    assert check_answer('So the answer is 42.', '42')
    assert check_answer('First 3 apples, then 5 more: 8', '8')
    assert not check_answer('The answer is 41.', '42')
    assert not check_answer('I do not know.', '7')
    assert check_answer('Total: 1,234', '1234')
    items = make_arithmetic(4, seed=1000)
    teq(len(items), 4); assert all(check_answer(f"... = {it['answer']}", it['answer']) for it in items)


def test_is_adapter(tmp_path):
    assert not is_adapter(tmp_path)
    (tmp_path/'adapter_config.json').write_text('{}')
    assert is_adapter(tmp_path)


# ---------- the real embedded models (slow) ----------

S = SamplingConfig(temperature=0, max_new_tokens=16)


@pytest.fixture(scope='module')
def qwen_engine():
    "Qwen2.5-Coder-0.5B-Instruct (qwen2 family), the second embedded model."
    from pulse_nb.engine_hf import HFEngine
    from pulse_nb.models import QWEN_05B
    with HFEngine(QWEN_05B) as e: yield e


QS = ['What is the capital of France?', 'What is 2 + 2?', 'What color is the sky on a clear day?',
      'How many legs does a spider have?']
RIGHT = ['The capital of France is Paris.', '2 + 2 = 4.', 'The sky is blue on a clear day.', 'A spider has eight legs.']
WRONG = ['The capital of France is Berlin.', '2 + 2 = 5.', 'The sky is green on a clear day.', 'A spider has six legs.']


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['logprobs', 'text'])
def test_swapping_candidate_and_baseline_mirrors_every_verdict(hf_engine, mode):
    """Judging (X vs Y) and (Y vs X) shows the judge the same two prompts, so every verdict must mirror exactly:
    win <-> loss, P(candidate better) -> 1 - P. A bookkeeping error in the position swap breaks this."""
    from pulse_nb.evaluate import judge_pairs
    kw = dict(mode=mode, max_new_tokens=16)
    xy, yx = judge_pairs(hf_engine, QS, RIGHT, WRONG, **kw), judge_pairs(hf_engine, QS, WRONG, RIGHT, **kw)
    mirror = {'win': 'loss', 'loss': 'win', 'tie': 'tie', None: None}
    teq([mirror[r['outcome']] for r in xy], [r['outcome'] for r in yx])
    teq([(r['letter_cand_first'], r['letter_cand_second']) for r in xy], [(r['letter_cand_second'], r['letter_cand_first']) for r in yx])
    if mode == 'logprobs':
        for a, b in zip(xy, yx):
            tclose(a['p_cand_first'], 1 - b['p_cand_second'], eps=1e-9)
            tclose(a['p_cand_second'], 1 - b['p_cand_first'], eps=1e-9)
        s1, s2 = summarise_judgements(xy, 4, n_boot=100), summarise_judgements(yx, 4, n_boot=100)
        tclose(s1['soft_win_rate'], 1 - s2['soft_win_rate'], eps=1e-9)
        tclose(s1['win_rate'], 1 - s2['win_rate'], eps=1e-9)


@pytest.mark.slow
def test_qwen_judge_prefers_an_answer_to_a_refusal(qwen_engine):
    """Measured on these 4 pairs: the 0.5B Qwen judge prefers a correct answer to "I do not know." in both orders (4 wins,
    soft win rate 0.62), but cannot tell a right fact from a wrong one (1 win, 3 ties, soft 0.50), and SmolLM2 as a judge
    always prefers position A (soft 0.50 in both cases). The first is asserted; the others are why it is not more."""
    from pulse_nb.evaluate import judge_pairs
    s = summarise_judgements(judge_pairs(qwen_engine, QS, RIGHT, ['I do not know.'] * 4), 4, n_boot=200)
    assert s['wins'] >= 3 and s['losses'] == 0, s
    assert s['soft_win_rate'] > .55, s['soft_win_rate']


@pytest.mark.slow
def test_two_family_win_rate_reports_self_preference(hf_engine, qwen_engine):
    "SmolLM2 (llama) against Qwen (qwen2), judged by both: answers come from the right engines, families and self-preference are reported."
    res = win_rate(hf_engine, qwen_engine, [hf_engine, qwen_engine], heldout_prompts(3), sampling=S, n_boot=200)
    direct = [g.completions[0].text for g in hf_engine.generate([[{'role': 'user', 'content': p['prompt']}] for p in heldout_prompts(3)], S)]
    teq([p['candidate'] for p in res['pairs']], direct)
    assert all(p['candidate'] != p['baseline'] for p in res['pairs'])
    teq(res['judge_families'], ['llama', 'qwen2'])
    sp = res['self_preference']
    teq((sp['family'], sp['same_family_judges'], sp['other_family_judges']), ('llama', [0], [1]))
    if sp['n'] == 3: tclose(sp['gap'], res['per_judge'][0]['win_rate'] - res['per_judge'][1]['win_rate'], eps=1e-9)
    assert sp['gap_ci'][0] <= sp['gap'] <= sp['gap_ci'][1]
    json.dumps(res)


@pytest.mark.slow
def test_answer_accuracy_on_arithmetic(hf_engine):
    acc = answer_accuracy(hf_engine, n=4, sampling=SamplingConfig(temperature=0, max_new_tokens=32))
    teq(acc['n'], 4)
    assert 0 <= acc['accuracy'] <= 1 and acc['correct'] == sum(i['correct'] for i in acc['items'])
    assert acc['accuracy_ci'][0] <= acc['accuracy'] <= acc['accuracy_ci'][1]
    for it in acc['items']: teq(it['correct'], check_answer(it['response'], it['answer']))
    json.dumps(acc)


@pytest.mark.slow
def test_code_eval_runs_model_code_in_sandbox(hf_engine):
    "Each task's status is what the sandbox gives the code extracted from that reply; the 'add' task is solved (measured)."
    from pulse_nb.evaluate import extract_code, run_code
    res = code_eval(hf_engine, CODE_TASKS[:2], sampling=SamplingConfig(temperature=0, max_new_tokens=40))
    teq([t['id'] for t in res['tasks']], ['add', 'is_palindrome'])
    for t, task in zip(res['tasks'], CODE_TASKS):
        teq(t['code'], extract_code(t['response']))
        teq(t['status'], run_code(t['code'], task['tests'])['status'] if t['code'] else 'error')
    teq(res['tasks'][0]['status'], ADD_STATUS)
    tclose(res['pass_rate'], sum(t['status'] == 'pass' for t in res['tasks'])/2)
    json.dumps(res)


ADD_STATUS = 'pass'


@pytest.mark.slow
def test_evaluate_summary_is_json(hf_engine, qwen_engine):
    res = evaluate(hf_engine, qwen_engine, [hf_engine, qwen_engine], heldout_prompts(2), sampling=SamplingConfig(temperature=0, max_new_tokens=8),
                   n_arith=2, n_boot=100)
    teq(set(res['accuracy']), {'candidate', 'baseline'})
    teq((res['accuracy']['candidate']['model'], res['accuracy']['baseline']['model']), (hf_engine.model, qwen_engine.model))
    teq(res['win_rate']['judge_families'], ['llama', 'qwen2'])
    md = summary_table(res)
    assert 'win rate' in md and 'self-preference of llama judges' in md and '(qwen2)' in md
    json.loads(json.dumps(res))


def test_evaluate_needs_peer_judges():
    with pytest.raises(ValueError, match='evaluate needs peer judges'): evaluate(None, None, None)
    with pytest.raises(ValueError, match='evaluate needs peer judges'): evaluate(None, None, [])


@pytest.mark.slow
def test_adapter_folder_is_merged_and_evaluated(tmp_path, model_path, hf_engine):
    "A fresh LoRA adapter (B = 0) merged into the base answers exactly like the base."
    from peft import LoraConfig, get_peft_model
    from pulse_nb.models import load_model, load_tokenizer
    m = get_peft_model(load_model(model_path, dtype='float32', device='cpu'),
                       LoraConfig(r=4, target_modules=['q_proj', 'v_proj'], task_type='CAUSAL_LM'))
    m.save_pretrained(tmp_path/'adapter'); load_tokenizer(model_path).save_pretrained(tmp_path/'adapter')
    del m
    assert is_adapter(tmp_path/'adapter')
    merged = merge_adapter(tmp_path/'adapter')
    teq(merge_adapter(tmp_path/'adapter'), merged)  # reused
    conv = [[{'role': 'user', 'content': 'What is the capital of France?'}]]
    s = SamplingConfig(temperature=0, max_new_tokens=8)
    with eval_engine(str(tmp_path/'adapter')) as e:  # transformers merges in memory: the engine runs the adapter folder
        teq(e.model, str(tmp_path/'adapter'))
        teq(e.generate(conv, s)[0].completions[0].text, hf_engine.generate(conv, s)[0].completions[0].text)
    with eval_engine(f'hf:{merged}') as e: teq(e.generate(conv, s)[0].completions[0].text, hf_engine.generate(conv, s)[0].completions[0].text)


def test_adapter_base_is_read_from_config(tmp_path):
    from pulse_nb.evaluate import adapter_base
    (tmp_path/'adapter_config.json').write_text(json.dumps({'base_model_name_or_path': '/models/base'}))
    teq(adapter_base(tmp_path), '/models/base')
    teq(adapter_base(f'hf:{tmp_path}'), '/models/base')
    teq(adapter_base('smollm2-135m-instruct'), None)


@pytest.mark.slow
def test_run_evaluation_from_specs_writes_report(tmp_path, model_path):
    """The CLI entry point: specs -> engines -> eval.json + eval.md, judged by the two families named as judges (by default
    neither would judge: each shares a model with one side)."""
    from pulse_nb.evaluate import run_evaluation, DEFAULT_JUDGES
    with pytest.raises(UserError, match='shares a model with hf or'): run_evaluation('hf', 'hf:qwen2.5-coder-0.5b-instruct')
    res = run_evaluation('hf', 'hf:qwen2.5-coder-0.5b-instruct', judges=list(DEFAULT_JUDGES), n_prompts=2, max_new_tokens=8,
                         n_arith=1, n_boot=50, out_dir=tmp_path)
    teq(res['config']['judges'], list(DEFAULT_JUDGES))
    teq(res['win_rate']['judge_families'], ['llama', 'qwen2'])
    teq(res['win_rate']['self_preference']['same_family_judges'], [0])
    teq((res['win_rate']['candidate'], res['win_rate']['baseline']), ('smollm2-135m-instruct', 'qwen2.5-coder-0.5b-instruct'))
    teq(res['config']['n_prompts'], 2)
    teq(json.loads((tmp_path/'eval.json').read_text())['win_rate']['n_pairs'], 2)
    assert 'self-preference of llama judges' in (tmp_path/'eval.md').read_text()


# ---------- self-preference (pure) ----------

def test_self_preference_gap_and_notes():
    from pulse_nb.evaluate import self_preference, judge_matrix
    recs = [rec(i, *ls, judge=j) for j, pairs in enumerate([[('A', 'B')]*4, [('A', 'B'), ('B', 'A'), ('A', 'A'), ('B', 'A')]])
            for i, ls in enumerate(pairs)]
    m = judge_matrix(recs, 4, 2)
    teq(m.tolist(), [[1, 1], [1, 0], [1, .5], [1, 0]])
    sp = self_preference(m, ['llama', 'qwen2'], 'llama', n_boot=300)
    tclose(sp['gap'], (0 + 1 + .5 + 1)/4)
    teq((sp['same'], sp['n']), (1., 4))
    assert sp['gap_ci'][0] <= sp['gap'] <= sp['gap_ci'][1]
    tclose(self_preference(m, ['llama', 'qwen2'], 'qwen2', n_boot=50)['gap'], -(2.5/4))  # the other judge's view
    teq(self_preference(m, ['qwen2', 'mistral'], 'llama')['note'], "no judge of the candidate's family")
    teq(self_preference(m, ['llama', None], 'llama')['note'], 'no judge of another family to compare with')
    teq(self_preference(m, ['llama', 'qwen2'], None)['gap'], None)
    m[:, 1] = np.nan
    teq(self_preference(m, ['llama', 'qwen2'], 'llama')['note'], 'no item was read by judges of both groups')


def test_engine_family_of_specs_and_references():
    from pulse_nb.evaluate import engine_family
    teq(engine_family('hf'), 'llama')
    teq(engine_family('auto:qwen2.5-coder-0.5b-instruct'), 'qwen2')
    teq(engine_family('openai:http://127.0.0.1:1/v1'), None)


@pytest.mark.slow
def test_engine_family_of_loaded_engines(hf_engine, qwen_engine):
    from pulse_nb.evaluate import engine_family
    teq((engine_family(hf_engine), engine_family(qwen_engine)), ('llama', 'qwen2'))
