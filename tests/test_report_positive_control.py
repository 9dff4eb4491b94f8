"""The positive control's report (nbs/experiments/positive_control.ipynb) at toy size: its own code, cut down. A file of
its own, so that pytest-xdist's file scheduling runs it beside tests/test_reports.py, not after it."""
import pytest
from test_reports import report_core


# ---- positive_control.ipynb (issue 41, part 1) ---------------------------------------------------------------------
# The full run: 64 + 16 GSM8K training problems per round, 4 samples at 512 tokens, 300 held-out items. Here: the same
# code on 8 + 2 arithmetic problems at 96 tokens and 4 held-out items, the verifier and shuffled arms, one round, no LLM critic.

@pytest.mark.slow
def test_positive_control_arms_share_candidates_and_differ_only_in_labels(tmp_path):
    "Both arms label the very same sampled candidates; the verifier's labels are all right, the shuffled arm flips some; a rerun reads the records back without the weights."
    import shutil
    ns = report_core('positive_control.ipynb')
    p = dict(ns['P'], arms=['verifier', 'shuffled'], rounds=1, prompts='builtin:arithmetic', per_round=8, probe=2, n_answers=4,
             critics=[],  # the verifier alone: the peers arm is not run here, and LLM critiques were most of the time
             max_new_tokens=96, bench={'gsm8k': 4}, bench_max_new_tokens=32, train=dict(loss='dpo', beta=0.1, epochs=1, batch_size=2))
    base, arms = ns['run_all'](p, tmp_path)
    v, s = arms['verifier'][0], arms['shuffled'][0]
    assert [c['text'] for c in s['cands']] == [c['text'] for c in v['cands']]     # round 1's samples are shared
    assert v['pairs'] and all(x['label_correct'] is True for x in v['pairs'])      # a right and a wrong solution, right chosen
    assert [x['prompt_id'] for x in s['pairs']] == [x['prompt_id'] for x in v['pairs']]
    for a, b in zip(v['pairs'], s['pairs']):                                         # the same two texts, perhaps swapped
        assert {a['chosen'][0]['content'], a['rejected'][0]['content']} == {b['chosen'][0]['content'], b['rejected'][0]['content']}
        assert (a['chosen'] == b['chosen']) == b['label_correct']
    assert base['gsm8k']['sets']['gsm8k']['n'] == 4 and v['bench']['gsm8k']['sets']['gsm8k']['n'] == 4
    for arm in p['arms']: shutil.rmtree(tmp_path/arm/'round-1'/'train'/'adapter')  # weights are not committed: a fresh checkout
    files = lambda: {f: f.read_bytes() for f in tmp_path.rglob('*') if f.is_file()}   # what a rerun may rewrite, it rewrites alike
    before = files()
    again, arms2 = ns['run_all'](p, tmp_path)                                        # finished: read back, nothing recomputed
    assert files() == before and again == base and arms2['shuffled'][0]['pairs'] == s['pairs']
    tab = ns['effect_table'](base, arms)
    assert list(tab.arm) == ['no training', 'verifier', 'shuffled'] and tab['label accuracy'].iloc[1] == 1.0
