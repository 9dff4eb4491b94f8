"Aggregation, labels, filters, diagnostics, and TRL's DPOTrainer taking the pairs unchanged."
import json, math
from pathlib import Path
import pytest
from pulse_nb.preferences import (aggregate, critic_stats, label, label_all, build_pairs, save_pairs, diagnostics,
                                  kendall_tau, PAIR_COLUMNS)

def _crit(r, pid, target, critic, score, std=0.4):
    return {'key': f'r{r}/{pid}/{target}/{critic}', 'round': r, 'prompt_id': pid, 'target': target, 'critic': critic,
            'critic_model': 'hf:m', 'persona': critic, 'feedback': 'fb', 'raw': 'fb', 'parsed': score is not None,
            'score': score, 'score_std': std if score is not None else None, 'mass': 0.9, 'probs': None}

def fake_run(d: Path, table):
    "Write a run dir from rows (pid, prompt, answer, a0, a1, {critic: (s0, s1)})."
    d.mkdir(parents=True, exist_ok=True)
    (d/'manifest.json').write_text(json.dumps({'format': 1, 'rounds': {'0': {'config': {}}}}))
    w = lambda name, rows: (d/f'{name}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    w('prompts', [{'id': t[0], 'prompt': t[1], 'answer': t[2], 'task': 'arithmetic' if t[2] else 'general'} for t in table])
    ans = lambda t, text: {'key': f'r0/{t[0]}', 'round': 0, 'prompt_id': t[0], 'actor': 'hf:m', 'text': text,
                           'n_tokens': 3, 'finish_reason': 'stop'}
    w('answers', [ans(t, t[3]) for t in table]); w('revisions', [ans(t, t[4]) for t in table])
    w('critiques', [_crit(0, t[0], 'a0', k, s[0]) for t in table for k, s in t[5].items()])
    w('rescores', [_crit(0, t[0], 'a1', k, s[1]) for t in table for k, s in t[5].items()])
    return d

TABLE = [('p1', 'What is 2+3?', '5', '2+3 = 6', '2+3 = 5', {'x': (3, 8), 'y': (4, 7)}),        # revision wins, correct
         ('p2', 'What is 4*2?', '8', '4*2 = 8', '4*2 = 9', {'x': (7, 7.5), 'y': (8, 2)}),      # a0 wins, correct
         ('p3', 'Write a haiku.', None, 'Snow.', 'Snow falls on pines.', {'x': (5, None), 'y': (None, 6)}),  # no critic on both
         ('p4', 'Name a colour.', None, 'Red.', 'Blue.', {'x': (6, 6), 'y': (5, 5)}),           # tie
         ('p5', 'What is 9-4?', '5', 'It is 5', 'It is 6', {'x': (4, 6), 'y': (5, 4)})]         # split, peers wrong

@pytest.fixture
def run(tmp_path): return fake_run(tmp_path/'run', TABLE)

def test_aggregations():
    assert aggregate([1, 5, 9]) == 5 and aggregate([1, 2, 9], 'median') == 2 and aggregate([0, 5, 5, 5, 100], 'trimmed') == 5
    with pytest.raises(ValueError): aggregate([])

def test_trimmed_mean_acts_from_three_critics():
    "K=3 and K=4: the highest and lowest score are dropped, so one outlier critic cannot move the label; K=2 is the mean."
    assert aggregate([5, 6, 9], 'trimmed') == 6 != aggregate([5, 6, 9])
    assert aggregate([5, 6, 7, 100], 'trimmed') == 6.5 != aggregate([5, 6, 7, 100])
    assert aggregate([5, 9], 'trimmed') == aggregate([5, 9]) == 7

def test_sign_and_load_pairs_exist_once():
    "One sign and one pairs reader in the library: training and the inspector use preferences'."
    from pulse_nb import preferences, inspector, train
    assert inspector._sign is preferences.sign and not hasattr(preferences, '_sign')
    assert train.load_pairs is preferences.load_pairs and inspector.load_pairs is preferences.load_pairs
    assert preferences.sign(-0.3) == -1 and preferences.sign(0) == 0 and preferences.sign(2) == 1

def test_labels_and_drops(run):
    pairs, drops = label_all(run)
    assert drops == {'too_few_critics': 1, 'margin': 1}
    by = {p['prompt_id']: p for p in pairs}
    assert by['p1']['chosen_is_revision'] and by['p1']['margin'] == 4 and by['p1']['agreement'] == 1
    assert not by['p2']['chosen_is_revision'] and by['p2']['chosen'][0]['content'] == '4*2 = 8'  # revision not assumed better
    assert by['p5']['agreement'] == 0.5 and by['p5']['label_correct'] is False
    assert math.isclose(by['p1']['soft_label'], 1 / (1 + math.exp(-4)))
    assert math.isclose(by['p1']['delta_std'], 1.0) and by['p1']['score_uncertainty'] > 0
    assert all(p['score_chosen'] >= p['score_rejected'] and p['margin'] >= 0 for p in pairs)
    assert len(label_all(run, max_disagreement=0.4)[0]) == 1 and len(label_all(run, min_margin=2.5)[0]) == 2
    assert len(label_all(run, min_critics=3)[0]) == 0

def test_label_accuracy_grades_the_stated_answer(tmp_path):
    "label_correct uses the benchmarks' grader: 'The answer is 12. Check: 3 + 4 = 7' answers 12, not 7."
    t = [('p1', 'What is 3*4?', '12', 'The answer is 12. Check: 3 + 4 = 7', 'The answer is 7.', {'x': (8, 2), 'y': (7, 3)})]
    pairs, _ = label_all(fake_run(tmp_path/'r', t))
    assert len(pairs) == 1 and pairs[0]['chosen_is_revision'] is False
    assert pairs[0]['label_correct'] is True
    d = diagnostics(fake_run(tmp_path/'r2', t))['ground_truth']
    assert (d['acc_a0'], d['acc_a1'], d['label_accuracy']) == (1.0, 0.0, 1.0)

def test_zscore(run):
    "Per-critic z-scores, checked against TABLE's scores by hand: each critic's mean and spread over all it scored."
    import statistics
    st = critic_stats([c for f in ('critiques', 'rescores') for c in map(json.loads, (run/f'{f}.jsonl').read_text().splitlines())])
    xs, ys = [3, 8, 7, 7.5, 5, 6, 6, 4, 6], [4, 7, 8, 2, 6, 5, 5, 5, 4]  # TABLE's parsed scores of critics x and y
    assert set(st) == {'x', 'y'}
    for k, v in (('x', xs), ('y', ys)): assert st[k] == pytest.approx((statistics.fmean(v), statistics.pstdev(v)))
    pairs, _ = label_all(run, agg='zmean')
    by = {p['prompt_id']: p for p in pairs}
    assert set(by) == {'p1', 'p2', 'p5'}
    sx, sy = statistics.pstdev(xs), statistics.pstdev(ys)  # the means cancel in a difference
    for pid, (dx, dy) in {'p1': (5, 3), 'p2': (.5, -6), 'p5': (2, -1)}.items():
        want = (dx / sx + dy / sy) / 2
        assert by[pid]['margin'] == pytest.approx(abs(want)) and by[pid]['chosen_is_revision'] == (want > 0), pid

def test_dataset_and_files(run, tmp_path):
    ds = build_pairs(run)
    assert ds.column_names == PAIR_COLUMNS and len(ds) == 3
    assert ds[0]['prompt'] == [{'role': 'user', 'content': 'What is 2+3?'}] and ds[0]['chosen'][0]['role'] == 'assistant'
    paths = save_pairs(ds, tmp_path/'out')
    import pandas as pd
    assert len(pd.read_parquet(paths['parquet'])) == 3 and len(paths['jsonl'].read_text().splitlines()) == 3
    empty = build_pairs(run, min_margin=100)
    assert len(empty) == 0 and set(PAIR_COLUMNS) <= set(empty.column_names)

def test_diagnostics(run):
    d = diagnostics(run)
    assert d['n_unparsed'] == 2 and d['unparsed_per_critic']['x'] == {'n': 10, 'unparsed': 1, 'rate': 0.1}
    assert d['dropped'] == {'too_few_critics': 1, 'margin': 1} and d['n_pairs'] == 3
    assert math.isclose(d['revision_win_rate'], 2 / 3)
    gt = d['ground_truth']
    assert gt['n_verifiable'] == 3 and gt['n_decisive_pairs'] == 3 and math.isclose(gt['label_accuracy'], 2 / 3)
    assert sum(d['margin_hist']['counts']) == 3 and d['kendall_tau']['x vs y']['n'] == 8

def test_kendall():
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)

def _dpo_check(ds, tmp_path):
    "DPOTrainer takes `ds` unchanged (LoRA on the embedded model) and runs one step."
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer
    from pulse_nb.models import load_model, load_tokenizer
    tok = load_tokenizer(); tok.padding_side = 'right'
    args = DPOConfig(output_dir=str(tmp_path/'dpo'), max_steps=1, per_device_train_batch_size=2, max_length=192,
                     report_to=[], save_strategy='no', logging_steps=1, use_cpu=True, bf16=False, dataset_num_proc=None)
    tr = DPOTrainer(model=load_model(dtype='float32', device='cpu'), args=args, train_dataset=ds, processing_class=tok,
                    peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj'], task_type='CAUSAL_LM'))
    t = tr.train_dataset
    assert {'prompt_ids', 'chosen_ids', 'rejected_ids'} <= set(t.column_names) and len(t) == len(ds)
    # every row is read as the pair `ds` holds: its prompt, its chosen and its rejected answer, the two answers distinct
    text = lambda ids: tok.decode(ids, skip_special_tokens=True).strip()
    for i, row in enumerate(ds):
        assert row['prompt'][-1]['content'].strip()[-40:] in text(t[i]['prompt_ids']), i
        for k in ('chosen', 'rejected'): assert text(t[i][f'{k}_ids']).startswith(row[k][-1]['content'].strip()[:40]), (i, k)
    assert any(a != b for a, b in zip(t['chosen_ids'], t['rejected_ids']))
    out = tr.train()
    # one step: the loss is read before the update, when the policy is its reference (LoRA's B = 0): -log σ(0) = log 2
    step = next(h for h in tr.state.log_history if 'loss' in h)
    assert out.training_loss == pytest.approx(math.log(2), abs=1e-4) and step['rewards/margins'] == pytest.approx(0, abs=1e-5), step

@pytest.mark.slow
def test_dpo_accepts_pairs_format(run, tmp_path):
    _dpo_check(build_pairs(run), tmp_path)

@pytest.mark.slow
def test_real_run_16_prompts_to_dpo(tmp_path):
    "A real run (16 prompts, 2 critics, embedded model, through `generate` as the CLI calls it) gives pairs DPOTrainer takes."
    import torch
    from datasets import Dataset
    from pulse_nb.loop import generate
    torch.set_num_threads(1)
    res = generate('builtin:verifiable', tmp_path/'run', actor='hf', critics=2, limit=16, max_new_tokens=24,
                   batch_size=16, progress=False)
    d = res['summary']
    print(json.dumps({k: d[k] for k in ('n_pairs', 'dropped', 'unparsed_rate', 'revision_win_rate', 'ground_truth')}))
    assert d['n_items'] == 16 and res['n_pairs'] > 0 and res['parquet'].exists() and res['diagnostics'].exists()
    ds = Dataset.from_parquet(str(res['parquet']))  # what `pulse train` reads back
    _dpo_check(ds, tmp_path)
