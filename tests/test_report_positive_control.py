"""The positive control's report (nbs/experiments/positive_control.ipynb) at toy size: its own code, cut down. A file of
its own, so that pytest-xdist's file scheduling runs it beside tests/test_reports.py, not after it."""
import pytest
from test_reports import report_core


# ---- positive_control.ipynb (issue 41, part 1) ---------------------------------------------------------------------
# The full run: 64 + 16 GSM8K training problems per round, 4 samples at 512 tokens, 300 held-out items. Here: the same
# code on 5 + 1 arithmetic problems at 96 tokens and 4 held-out items, every arm, one round, SmolLM2-135M as the peers' one critic.

@pytest.mark.slow
def test_positive_control_arms_share_candidates_and_differ_only_in_labels(tmp_path):
    """Every arm labels the very same sampled candidates: the verifier's labels are all right, the shuffled arm flips some,
    the peers point the verifier's pairs by their scores; a rerun reads the records back without the weights."""
    import shutil
    ns = report_core('positive_control.ipynb')
    p = dict(ns['P'], arms=['verifier', 'shuffled', 'peers'], rounds=1, prompts='builtin:arithmetic', per_round=5, probe=1, n_answers=4,
             critics=[f"hf:{ns['DEFAULT_MODEL']}"], peer_feedback=False,  # the peers arm's pool: one small critic, scores without feedback
             max_new_tokens=96, bench={'gsm8k': 4}, bench_max_new_tokens=32, train=dict(loss='dpo', beta=0.1, epochs=1, batch_size=4),
             dtype='fast', arm_dtype={'peers': 'float32'})  # the others in this CPU's fast precision (float32 without bfloat16 instructions)
    bases, arms = ns['run_all'](p, tmp_path)
    dtypes = {a: ns['arm_dtype'](p, a) for a in p['arms']}
    assert set(bases) == set(dtypes.values()) and {a: r[0]['dtype'] for a, r in arms.items()} == dtypes  # the base model in each arm's precision
    assert all((ns['base_dir'](tmp_path, dt)/'gsm8k'/'eval.json').exists() for dt in bases)
    v, s = arms['verifier'][0], arms['shuffled'][0]
    assert [c['text'] for c in s['cands']] == [c['text'] for c in v['cands']]     # round 1's samples are shared
    assert v['pairs'] and all(x['label_correct'] is True for x in v['pairs'])      # a right and a wrong solution, right chosen
    assert [x['prompt_id'] for x in s['pairs']] == [x['prompt_id'] for x in v['pairs']]
    for a, b in zip(v['pairs'], s['pairs']):                                         # the same two texts, perhaps swapped
        assert {a['chosen'][0]['content'], a['rejected'][0]['content']} == {b['chosen'][0]['content'], b['rejected'][0]['content']}
        assert (a['chosen'] == b['chosen']) == b['label_correct']
    assert bases[dtypes['verifier']]['gsm8k']['sets']['gsm8k']['n'] == 4 and v['bench']['gsm8k']['sets']['gsm8k']['n'] == 4
    pe, split = arms['peers'][0], ns['split_problems'](v['cands'])
    llm = [c for c in ns['load_run'](tmp_path/'peers'/'round-1'/'review')['critiques'] if not c.get('verifier')]
    assert llm and all(c['feedback'] == '' and c['n_tokens'] == 0 and c['parsed'] for c in llm)  # scores read without feedback
    assert {c['prompt_id'] for c in llm} == split == {x['prompt_id'] for x in v['pairs'] + v['probe']}  # only the problems the verifier splits
    vp = {x['prompt_id']: x for x in v['pairs']}
    assert pe['pairs'] and {x['prompt_id'] for x in pe['pairs']} <= set(vp)
    for x in pe['pairs']:                                                            # the verifier's pair, pointed by the peers
        y = vp[x['prompt_id']]
        assert {x['chosen'][0]['content'], x['rejected'][0]['content']} == {y['chosen'][0]['content'], y['rejected'][0]['content']}
        assert x['label_correct'] == (x['chosen'] == y['chosen'])
    for arm in p['arms']: shutil.rmtree(tmp_path/arm/'round-1'/'train'/'adapter')  # weights are not committed: a fresh checkout
    files = lambda: {f: f.read_bytes() for f in tmp_path.rglob('*') if f.is_file()}   # what a rerun may rewrite, it rewrites alike
    before = files()
    again, arms2 = ns['run_all'](p, tmp_path)                                        # finished: read back, nothing recomputed
    assert files() == before and again == bases and arms2['shuffled'][0]['pairs'] == s['pairs']
    tab = ns['effect_table'](bases, arms)
    assert list(tab.arm) == ['no training'] * len(bases) + ['verifier', 'shuffled', 'peers'] and tab['label accuracy'][tab.arm == 'verifier'].item() == 1.0
    assert list(tab.dtype) == list(bases) + list(dtypes.values())
    lt = ns['length_table'](bases, arms, p)   # every policy's answers paired with the base model's in its own precision
    assert list(lt.arm) == ['verifier', 'shuffled', 'peers'] and (lt.n == 4).all() and list(lt.dtype) == list(dtypes.values())
    assert (lt['tokens (base)'] > 0).all() and (lt['at budget (policy)'] <= 1).all()
