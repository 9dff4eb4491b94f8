"""`pulse run` with the signal switches on, end to end on the embedded models: best-of-n candidates without revisions
(the default run's review), a hybrid pool (the verifier beside an LLM critic of another family), pairs labelled by the
references (the default), and the listwise loss on each prompt's ranked candidates."""
import json, os, subprocess, sys
import pytest
import yaml

PULSE = [sys.executable, '-m', 'pulse_nb.cli']
ENV = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2'), 'TOKENIZERS_PARALLELISM': 'false'}
QWEN, SMOL = 'qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct'
SIGNAL = {'rounds': 1, 'seed': 2,
          'pool': {'actor': f'hf:{QWEN}', 'critics': ['verify:auto', f'hf:{SMOL}'], 'n_critics': 1},
          'review': {'prompts': 'builtin:arithmetic', 'per_round': 3, 'max_new_tokens': 48, 'temperature': 1.0, 'n_answers': 3, 'revise': False},
          'label': {'source': 'verifier'},
          'train': {'loss': 'listwise', 'beta': 0.1, 'max_steps': 2, 'batch_size': 2, 'lr': 0.005, 'weighting': None},
          'eval': {'bench': '', 'win_rate_prompts': 0, 'arithmetic': 2, 'max_new_tokens': 16}}


@pytest.mark.slow
def test_best_of_n_with_a_verifier_trains_the_listwise_loss(tmp_path):
    cfg = tmp_path/'signal.yaml'; cfg.write_text(yaml.safe_dump(SIGNAL))
    out = tmp_path/'run'
    r = subprocess.run(PULSE + ['run', '--config', str(cfg), '--out', str(out)], env=ENV, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    rd = out/'round-1'
    review = {s: [json.loads(l) for l in (rd/'review'/f'{s}.jsonl').read_text().splitlines()] for s in ('answers', 'critiques')}
    assert all(len(a['samples']) == 3 for a in review['answers'])
    critics = {c['critic'] for c in review['critiques']}
    assert len(critics) == 2 and 'verifier/auto' in critics and any(c.startswith(f'{SMOL}/') for c in critics)
    import pandas as pd
    lists = pd.read_parquet(rd/'lists.parquet')
    assert len(lists) >= 1 and all(len(c) >= 2 for c in lists['completions'])
    assert all(list(s) == sorted(s, reverse=True) for s in lists['scores'])
    m = json.loads((rd/'train'/'metrics.json').read_text())['metrics']
    assert m['cut_share'] == 0 and m['max_length'] >= 48  # training saw every candidate whole
    rec = json.loads((rd/'round.json').read_text())
    assert rec['cut_share']['training'] == 0 and rec['train']['max_length'] == m['max_length']
    vc = rec['review']['verifier']
    assert vc['verifiers'] == ['verifier/auto'] and vc['n_checked'] >= 0
    assert rec['review']['n_prompts'] == 3 and rec['review']['n_items'] == 9
    summary = (out/'summary.md').read_text()
    assert '3 prompts (9 candidates: best-of-n)' in summary
    assert not (rd/'review'/'revisions.jsonl').exists() and 'No revisions: each pair is two sampled answers' in summary
    pairs = pd.read_parquet(rd/'pairs.parquet')
    assert pairs['label_correct'].all() and not pairs['chosen_is_revision'].any()   # a right answer against a wrong one
    assert rec['review']['label_source'] == 'verifier' and rec['review']['revision_win_rate'] is None
    dry = subprocess.run(PULSE + ['run', '--config', str(cfg), '--dry-run'], env=ENV, capture_output=True, text=True, timeout=600).stdout
    plan = json.loads(dry[dry.index('{'):])
    assert plan['critic_modes']['verify:auto'].startswith('verifier') and plan['cut_share_warning_above'] == 0.1
    assert plan['per_round']['candidates'] == 9
