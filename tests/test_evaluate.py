"""`pulse_nb.evaluate`: verdict reading, position-swap outcomes, bootstrap and length-controlled win rates (pure
unit tests on synthetic verdicts), then the real embedded model through `HFEngine` (slow)."""
import json
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from fastcore.test import test_eq as teq, test_close as tclose
from pulse_nb.engines import SamplingConfig
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


# ---------- the real embedded model (slow) ----------

S = SamplingConfig(temperature=0, max_new_tokens=16)


@pytest.mark.slow
def test_model_against_itself_is_a_tie(hf_engine):
    "Greedy answers are identical, so each judge prompt is the same in both orders: every pair is a tie, rate 1/2."
    res = win_rate(hf_engine, hf_engine, hf_engine, heldout_prompts(4), sampling=S, n_boot=500)
    teq(res['identical_answers'], 4)
    teq((res['ties'], res['wins'], res['losses'], res['n_unreadable']), (4, 0, 0, 0))
    teq(res['win_rate'], .5)
    teq(res['consistency'], 0.)
    lo, hi = res['win_rate_ci']
    assert lo <= res['win_rate'] <= hi
    tclose(res['lc_win_rate'], res['win_rate'], eps=1e-6)
    tclose(res['soft_win_rate'], .5, eps=1e-6)  # P(A) then 1-P(A) on the same prompt averages to exactly 1/2
    j = res['pairs'][0]['judgements'][0]
    teq(j['mode'], 'logprobs')
    tclose(j['p_cand_first'] + j['p_cand_second'], 1., eps=1e-6)  # same prompt both orders: P(A) then 1-P(A)
    json.dumps(res)


@pytest.mark.slow
def test_judge_reads_a_clear_difference(hf_engine):
    "A correct answer against 'I do not know.' on easy questions: verdicts are readable and the outcome is a win or tie."
    from pulse_nb.evaluate import judge_pairs
    qs = ['What is the capital of France?', 'What is 2 + 2?']
    recs = judge_pairs(hf_engine, qs, ['The capital of France is Paris.', '2 + 2 = 4.'], ['I do not know.']*2)
    teq(len(recs), 2)
    assert all(r['outcome'] in ('win', 'tie', 'loss') for r in recs)
    assert all(0 <= r['p_cand_first'] <= 1 and 0 <= r['p_cand_second'] <= 1 for r in recs)
    s = summarise_judgements(recs, 2, n_boot=100)
    assert 0 <= s['soft_win_rate'] <= 1 and s['soft_win_rate_ci'][0] <= s['soft_win_rate'] <= s['soft_win_rate_ci'][1]


@pytest.mark.slow
def test_text_mode_judge(hf_engine):
    "Text mode (engines without log-probs): identical answers give the same letter twice -> tie, or unreadable."
    res = win_rate(hf_engine, hf_engine, hf_engine, heldout_prompts(2), sampling=SamplingConfig(temperature=0, max_new_tokens=8),
                   mode='text', max_judge_tokens=12, n_boot=100)
    assert all(j['mode'] == 'text' for p in res['pairs'] for j in p['judgements'])
    teq(res['wins'] + res['losses'], 0)
    assert res['win_rate'] in (None, .5)


@pytest.mark.slow
def test_answer_accuracy_on_arithmetic(hf_engine):
    acc = answer_accuracy(hf_engine, n=4, sampling=SamplingConfig(temperature=0, max_new_tokens=32), n_boot=200)
    teq(acc['n'], 4)
    assert 0 <= acc['accuracy'] <= 1 and acc['correct'] == sum(i['correct'] for i in acc['items'])
    assert acc['accuracy_ci'][0] <= acc['accuracy'] <= acc['accuracy_ci'][1]
    for it in acc['items']: teq(it['correct'], check_answer(it['response'], it['answer']))
    json.dumps(acc)


@pytest.mark.slow
def test_code_eval_runs_model_code_in_sandbox(hf_engine):
    res = code_eval(hf_engine, CODE_TASKS[:2], sampling=SamplingConfig(temperature=0, max_new_tokens=40))
    teq(res['n'], 2)
    teq(res['pass'] + res['fail'] + res['timeout'] + res['error'], 2)
    assert all(t['status'] in ('pass', 'fail', 'timeout', 'error') and 'stderr_tail' in t for t in res['tasks'])
    json.dumps(res)


@pytest.mark.slow
def test_evaluate_summary_is_json(hf_engine):
    res = evaluate(hf_engine, hf_engine, None, heldout_prompts(2), sampling=SamplingConfig(temperature=0, max_new_tokens=8),
                   n_arith=2, n_boot=100)
    teq(res['win_rate']['win_rate'], .5)
    teq(set(res['accuracy']), {'candidate', 'baseline'})
    teq(res['accuracy']['candidate']['accuracy'], res['accuracy']['baseline']['accuracy'])
    assert 'win rate' in summary_table(res)
    json.loads(json.dumps(res))


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
    with eval_engine(str(tmp_path/'adapter')) as e:
        teq(e.model, merged)
        teq(e.generate(conv, s)[0].completions[0].text, hf_engine.generate(conv, s)[0].completions[0].text)


def test_adapter_base_is_read_from_config(tmp_path):
    from pulse_nb.evaluate import adapter_base
    (tmp_path/'adapter_config.json').write_text(json.dumps({'base_model_name_or_path': '/models/base'}))
    teq(adapter_base(tmp_path), '/models/base')
    teq(adapter_base(f'hf:{tmp_path}'), '/models/base')
    teq(adapter_base('smollm2-135m-instruct'), None)


@pytest.mark.slow
def test_run_evaluation_from_specs_writes_report(tmp_path, model_path):
    "The CLI entry point: specs -> engines (one per distinct spec) -> eval.json + eval.md."
    from pulse_nb.evaluate import run_evaluation
    res = run_evaluation('hf', 'hf', n_prompts=2, max_new_tokens=8, n_arith=1, n_boot=50, out_dir=tmp_path)
    teq(res['win_rate']['win_rate'], .5)  # same spec, same engine, greedy: all ties
    teq(res['config']['n_prompts'], 2)
    teq(json.loads((tmp_path/'eval.json').read_text())['win_rate']['n_pairs'], 2)
    assert 'win rate vs baseline' in (tmp_path/'eval.md').read_text()
