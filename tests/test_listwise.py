"""Listwise (Plackett–Luce) DPO, `loss='listwise'`: the loss against the ranking's probability written out by hand, k = 2
against DPO, real training on ranked lists (a tiny Llama for the mechanics, the embedded model for learning), the
one-line errors on bad lists; and `max_length` following the data, so that training cuts nothing by default."""
import itertools, json, math, tempfile
import pytest, torch
from datasets import Dataset
from pulse_nb.losses import listwise_loss, dpo_loss, plackett_luce_nll
from pulse_nb.train import train, TrainConfig, dpo_config, ConfigError
from pulse_nb.trainer import to_lists, split_batch, sequence_logps
from test_train import word_pairs, tiny_train, tiny_tokenizer, WORDS, one_thread  # noqa: F401 -- one_thread: test_train's autouse fixture, one torch thread


# ---------------------------------------------------------------- the loss, against the ranking's probability by hand
def ranking_probability(r, order):
    "Plackett–Luce: the probability of drawing the answers in `order` (indices), each draw a softmax over those left."
    p, left = 1.0, list(order)
    for i in order:
        p *= math.exp(r[i]) / sum(math.exp(r[j]) for j in left)
        left.remove(i)
    return p


def nll_by_hand(policy, ref, beta, present):
    "Per list, −log P(the given order) over its present answers, from Python floats; the probabilities of all orders sum to 1."
    out = []
    for pol, rf, m in zip(policy.tolist(), ref.tolist(), present.tolist()):
        r = [beta * (a - b) for a, b in zip(pol, rf)]
        order = [i for i, here in enumerate(m) if here]
        assert sum(ranking_probability(r, o) for o in itertools.permutations(order)) == pytest.approx(1.0, abs=1e-12)
        out.append(-math.log(ranking_probability(r, order)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize('k', [2, 3, 4])
@pytest.mark.parametrize('seed', [0, 1])
def test_loss_is_the_plackett_luce_nll(k, seed):
    g = torch.Generator().manual_seed(seed)
    policy, ref = (torch.randn(6, k, generator=g, dtype=torch.float64) * 4 - 30 for _ in range(2))
    full = torch.ones(6, k, dtype=torch.bool)
    want = nll_by_hand(policy, ref, 0.7, full)
    assert torch.allclose(plackett_luce_nll(0.7 * (policy - ref)), want, atol=1e-10)
    assert listwise_loss(policy, ref, beta=0.7).item() == pytest.approx(want.mean().item(), abs=1e-10)
    w = torch.rand(6, generator=g, dtype=torch.float64) * 2
    assert listwise_loss(policy, ref, beta=0.7, weights=w).item() == pytest.approx((w * want).mean().item(), abs=1e-10)


def test_masked_answers_drop_out():
    "Lists of 4, 3 and 2 answers in one batch (and a hole in a list): each list's loss is that of its present answers alone."
    g = torch.Generator().manual_seed(5)
    policy, ref = (torch.randn(4, 4, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    want = nll_by_hand(policy, ref, 0.5, mask)
    assert torch.allclose(plackett_luce_nll(0.5 * (policy - ref), mask), want, atol=1e-10)
    assert listwise_loss(policy, ref, beta=0.5, mask=mask).item() == pytest.approx(want.mean().item(), abs=1e-10)
    # what a masked slot holds changes nothing, and it gets no gradient, even at extreme values
    x = policy.clone().masked_fill(~mask, 1e30).requires_grad_()
    loss = listwise_loss(x, ref, beta=0.5, mask=mask)
    loss.backward()
    assert loss.item() == pytest.approx(want.mean().item(), abs=1e-10)
    assert torch.isfinite(x.grad).all() and (x.grad[~mask] == 0).all() and (x.grad[mask] != 0).all()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_two_answers_are_dpo(dtype):
    g = torch.Generator().manual_seed(3)
    policy, ref = (torch.randn(16, 2, generator=g, dtype=dtype) * 20 - 60 for _ in range(2))
    w = torch.rand(16, generator=g, dtype=dtype)
    for kw in ({}, {'weights': w}):
        a = listwise_loss(policy, ref, beta=0.3, **kw)
        b = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=0.3, **kw)
        assert abs(a.item() - b.item()) <= 1e-6 * max(1.0, abs(b.item())), (a, b)


# ---------------------------------------------------------------- bad lists: one line each, before any model is loaded
def lists(n=4, k=3, **extra):
    "`n` ranked lists of `k` short string answers, best first."
    rows = [dict(prompt=f'Say {WORDS[i % 12]}.', completions=[f' {WORDS[i % 12]}'] + [f' {WORDS[(i + j + 4) % 12]}' * j for j in range(1, k)])
            for i in range(n)]
    for key, vals in extra.items():
        for r, v in zip(rows, vals): r[key] = v
    return Dataset.from_list(rows)


@pytest.mark.parametrize('ds,kw,msg', [
    (lists(completions=[[' one']] * 4), {}, r'row 0: `completions` holds 1 answer\(s\); a ranked list needs at least 2'),
    (lists(scores=[[1.0, 2.0, 0.0]] * 4), {}, r'row 0: `scores` must be finite and sorted high to low'),
    (lists(scores=[[2.0, 1.0]] * 4), {}, r'row 0: `scores` has 2 values for 3 completions'),
    (lists(completions=[[' a', ' b'], [' a', '  ']] * 2), {}, r'row 1: answer 1 of `completions` is empty'),
    (lists().remove_columns('prompt'), {}, r'ranked lists need a `prompt` column'),
    (lists(), {'loss': 'dpo'}, r"the rows are ranked lists \(`completions`\): train them with loss='listwise'"),
    (lists(), {'soft_labels': True}, r"TrainConfig.soft_labels: loss 'listwise' ranks whole lists"),
])
def test_bad_lists(ds, kw, msg):
    kw = {'loss': 'listwise', **kw}
    with pytest.raises(ValueError, match=msg) as e:
        train(ds, out_dir=tempfile.mkdtemp(), progress=False, **kw)
    assert '\n' not in str(e.value)


def test_lists_as_held_out_set_of_a_pair_loss_are_refused():
    with pytest.raises(ValueError, match="train them with loss='listwise'"):
        train(word_pairs(4), eval_dataset=lists(), loss='dpo', out_dir=tempfile.mkdtemp(), progress=False)


# ---------------------------------------------------------------- training on lists: the mechanics (a tiny Llama)
def test_pairs_trained_as_lists_of_two_train_as_dpo():
    "The same pairs under loss='listwise' and loss='dpo': the same tokens, losses, metrics and gradient norms, step by step."
    kw = dict(batch_size=4, max_steps=3, lr=5e-2)
    dpo, lw = tiny_train(word_pairs(8), loss='dpo', **kw), tiny_train(word_pairs(8), loss='listwise', **kw)
    assert len(lw.losses) == 3 and lw.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    steps = [(a, b) for a, b in zip(dpo.log_history, lw.log_history) if 'loss' in a]
    assert len(steps) == 3 and all(set(b) == set(a) | {'rewards/pair_accuracy'} for a, b in steps)
    for a, b in steps:
        for key in ('loss', 'grad_norm', 'rewards/margins', 'rewards/chosen', 'logps/rejected', 'entropy', 'num_tokens'):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a[key], b[key])
    last = lw.log_history[-2]
    assert last['rewards/pair_accuracy'] == pytest.approx(last['rewards/accuracies'])   # one answer pair per list


def test_lists_of_different_lengths_share_a_batch():
    "A batch of a 3-answer and a 2-answer list: the trainer's loss is the mean of each list's own loss, computed alone."
    ds = lists(2, 3).map(lambda r, i: {'completions': r['completions'][:3 - i]}, with_indices=True)
    r = tiny_train(ds, loss='listwise', batch_size=2, max_steps=2, lr=5e-2)
    tr = r.trainer
    tr.model.eval()
    rows = [tr.train_dataset[i] for i in range(2)]
    batch = tr._prepare_inputs(tr.data_collator(rows))
    assert batch['list_mask'].tolist() == [[True, True, True], [True, True, False]] and batch['input_ids'].shape[0] == 5
    with torch.no_grad():
        both = tr.compute_loss(tr.model, batch)
        alone = [tr.compute_loss(tr.model, tr._prepare_inputs(tr.data_collator([e]))) for e in rows]
        flat, _ = sequence_logps(tr.model, split_batch(batch)[0])
    assert both.item() == pytest.approx((alone[0].item() + alone[1].item()) / 2, abs=1e-5)
    assert alone[0].item() != pytest.approx(alone[1].item(), abs=1e-3)
    assert to_lists(flat, batch['list_mask'])[1, 2] == 0


def test_precomputed_reference_weights_and_held_out_lists():
    "precompute_ref_logps gives the same run as a reference pass per step; `weight` reaches the loss; held-out lists get eval metrics."
    kw = dict(loss='listwise', batch_size=2, max_steps=2, lr=5e-2, eval_dataset=lists(2))
    itself = tiny_train(lists(4), **kw)
    pre = tiny_train(lists(4), precompute_ref_logps=True, **kw)
    assert 'ref_logps' in pre.trainer.train_dataset.column_names
    assert pre.losses == pytest.approx(itself.losses, abs=1e-5)
    assert pre.metrics['eval']['eval_rewards/pair_accuracy'] == pytest.approx(itself.metrics['eval']['eval_rewards/pair_accuracy'])
    weighted = tiny_train(lists(4, weight=[4.0, 0.0, 4.0, 0.0]), weighting='weight', **kw)
    assert weighted.trainer.train_dataset['weight'] == [2.0, 0.0, 2.0, 0.0]   # mean 1 over the dataset
    assert weighted.losses[1] != pytest.approx(itself.losses[1], abs=1e-4)   # step 0 is log 6 either way (policy = reference)


def test_pairs_with_their_reference_logps_train_as_lists():
    "Pairs carrying `ref_chosen_logps`/`ref_rejected_logps` (from `with_reference_logps`) train under loss='listwise' as without them."
    from pulse_nb.train import with_reference_logps
    from test_train import tiny_llama
    given = with_reference_logps(word_pairs(8), tiny_llama(), tokenizer=tiny_tokenizer(), progress=False, max_length=48)
    kw = dict(loss='listwise', batch_size=4, max_steps=2, lr=5e-2)
    reused, itself = tiny_train(given, **kw), tiny_train(word_pairs(8), **kw)
    assert 'ref_logps' in reused.trainer.train_dataset.column_names
    assert reused.losses == pytest.approx(itself.losses, abs=1e-5) and reused.losses[1] != pytest.approx(itself.losses[0])


def test_list_loss_path_makes_no_host_sync_beyond_the_model():
    from test_train_trl import count_syncs
    r = tiny_train(lists(4), loss='listwise', beta_schedule='beta_dpo', batch_size=4, max_steps=1)
    tr = r.trainer
    tr.model.train()
    batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(4)]))
    model_batch = {k: v for k, v in batch.items() if k != 'list_mask'}
    baseline = count_syncs(lambda: (sequence_logps(tr.model, model_batch), tr.compute_ref_log_probs(tr.model, model_batch)))
    assert count_syncs(lambda: tr._compute_loss(tr.model, batch, False)) == baseline


# ---------------------------------------------------------------- training on lists: it learns the ranking (the embedded model)
FACTS = [('capital of France', 'Paris', 'Lyon', 'Rome'), ('largest planet', 'Jupiter', 'Saturn', 'Mars'),
         ('author of Hamlet', 'Shakespeare', 'Marlowe', 'Dickens'), ('chemical symbol of gold', 'Au', 'Ag', 'Fe')]


def plain_list_logps(model, batch):
    "Summed answer log-probs from the full logits (no fused head), as [B, k]: an independent computation."
    with torch.no_grad():
        logits = model.eval()(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, batch['input_ids'][:, 1:, None])[..., 0]
    return to_lists((lp * batch['completion_mask'][:, 1:]).sum(1), batch['list_mask'])


@pytest.mark.slow
def test_training_on_ranked_lists_raises_the_first_answer_over_the_last():
    rows = [{'prompt': [{'role': 'user', 'content': f'What is the {q}?'}],
             'completions': [[{'role': 'assistant', 'content': f'The {q} is {a}.'}] for a in answers],
             'scores': [9.0, 5.0, 1.0]} for q, *answers in FACTS]
    r = train(Dataset.from_list(rows), loss='listwise', lora_r=4, batch_size=4, max_steps=3, lr=5e-3, progress=False,
              save=False, out_dir=tempfile.mkdtemp())
    assert len(r.losses) == 3 and all(math.isfinite(x) for x in r.losses)
    assert r.losses[0] == pytest.approx(math.log(6), abs=1e-4)     # policy = reference at step 0: every order of 3 as likely
    tr = r.trainer
    batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(len(rows))]))
    after = plain_list_logps(tr.model, batch)
    with tr.model.disable_adapter(): before = plain_list_logps(tr.model, batch)   # the model before training
    gain = 0.1 * (after - before)                                                  # the implicit reward of each answer
    first_over_last = gain[:, 0] - gain[:, 2]
    assert (first_over_last > 0).all() and first_over_last.mean() > 0.5, first_over_last
    assert (gain[:, 0] > gain[:, 1]).float().mean() >= 0.75 and (gain[:, 1] > gain[:, 2]).float().mean() >= 0.75, gain


# ---------------------------------------------------------------- max_length follows the data: nothing cut by default
def long_pairs(n=4):
    "Pairs whose chosen answers run to ~300 tokens (every other one), the rejected ones short."
    return Dataset.from_list([dict(prompt=f'Count {WORDS[i]}s.', chosen=f' {WORDS[i]}' * (300 if i % 2 == 0 else 20),
                                   rejected=f' {WORDS[i + 1]}' * 5) for i in range(n)])


def longest_by_hand(ds, tok):
    "Each pair's longest prompt + answer in tokens, as TRL tokenises plain text (prompt + answer + EOS)."
    return [max(len(tok(r['prompt'] + a + tok.eos_token)['input_ids']) for a in (r['chosen'], r['rejected'])) for r in ds]


def test_default_max_length_trains_long_answers_uncut():
    tok, ds = tiny_tokenizer(), long_pairs()
    longest = longest_by_hand(ds, tok)
    assert max(longest) > 300
    r = tiny_train(ds, loss='dpo', max_length=None, batch_size=4, max_steps=1)
    assert r.max_length == r.trainer.args.max_length == max(longest) and r.cut_share == 0.0
    assert r.metrics['max_length'] == max(longest) and r.metrics['cut_share'] == 0.0
    saved = json.loads((r.out_dir/'metrics.json').read_text())['metrics']
    assert saved['max_length'] == max(longest) and saved['cut_share'] == 0.0
    batch = r.trainer.data_collator([r.trainer.train_dataset[i] for i in range(4)])
    n = len(ds)
    kept = batch['attention_mask'].sum(1)[:n].tolist()            # the chosen sequences as trained: whole
    assert kept == [len(tok(x['prompt'] + x['chosen'] + tok.eos_token)['input_ids']) for x in ds]


@pytest.mark.parametrize('kw,cut', [(dict(max_length=64), 64), (dict(max_length=None, max_length_cap=128), 128)])
def test_explicit_or_capped_max_length_reports_the_share_cut(kw, cut):
    tok, ds = tiny_tokenizer(), long_pairs()
    want = sum(n > cut for n in longest_by_hand(ds, tok)) / len(ds)
    assert want == 0.5                                             # the two ~300-token answers
    r = tiny_train(ds, loss='dpo', batch_size=4, max_steps=1, **kw)
    assert r.max_length == r.trainer.args.max_length == cut and r.cut_share == want
    batch = r.trainer.data_collator([r.trainer.train_dataset[i] for i in range(4)])
    assert batch['input_ids'].shape[1] == cut                      # the long ones are cut there


def test_lists_measure_their_longest_answer():
    tok = tiny_tokenizer()
    ds = lists(2, 3).map(lambda r: {'completions': r['completions'][:2] + [' seven' * 100]})
    r = tiny_train(ds, loss='listwise', max_length=None, batch_size=2, max_steps=1)
    longest = max(len(tok(row['prompt'] + ' seven' * 100 + tok.eos_token)['input_ids']) for row in ds)
    assert longest > 100 and r.max_length == longest and r.cut_share == 0.0
    r = tiny_train(ds, loss='listwise', max_length=32, batch_size=2, max_steps=1)
    assert r.max_length == 32 and r.cut_share == 1.0


def test_config_defaults_and_checks():
    assert TrainConfig().max_length is None and TrainConfig().max_length_cap == 1024
    assert dpo_config(tempfile.mkdtemp(), TrainConfig(), progress=False).max_length == 1024   # no data: the cap
    assert dpo_config(tempfile.mkdtemp(), TrainConfig(max_length=96), progress=False).max_length == 96
    with pytest.raises(ConfigError, match='TrainConfig.max_length_cap must be >= 8, got 2'):
        TrainConfig(max_length_cap=2)
