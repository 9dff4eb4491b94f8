"pulse_nb.train: real TRL training on the embedded model with LoRA, a few steps on tiny pairs."
import json, math, tempfile
from pathlib import Path
import pytest, torch
from datasets import Dataset
from pulse_nb.train import train, load_trained, dpo_config, PulseDPOTrainer, load_pairs, PAIR_COLUMNS

FACTS = [('capital of France', 'Paris', 'Rome'), ('largest planet', 'Jupiter', 'Mars'),
         ('boiling point of water in C', '100', '50'), ('author of Hamlet', 'Shakespeare', 'Dickens'),
         ('square root of 81', '9', '7'), ('chemical symbol of gold', 'Au', 'Ag'),
         ('first month of the year', 'January', 'March'), ('number of legs of a spider', '8', '6')]


def conv_pairs(**meta):
    "8 conversational pairs in the review helper's format (plus metadata columns)."
    rows = [{'prompt': [{'role': 'user', 'content': f'What is the {q}?'}],
             'chosen': [{'role': 'assistant', 'content': f'The {q} is {a}.'}],
             'rejected': [{'role': 'assistant', 'content': f'The {q} is {b}.'}],
             'pair_id': f'p{i}', 'margin': float(1 + i % 3), 'agreement': [1.0, 0.75][i % 2]} for i, (q, a, b) in enumerate(FACTS)]
    for k, vals in meta.items():
        for r, v in zip(rows, vals): r[k] = v
    return Dataset.from_list(rows)


def str_pairs():
    "The same pairs as a plain TRL string dataset, no metadata."
    return Dataset.from_list([{'prompt': f'Q: What is the {q}?\nA:', 'chosen': f' {a}.', 'rejected': f' {b}.'} for q, a, b in FACTS])


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "The CI box has 2 shared cores; more than one torch thread on a busy CPU is ~10x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAST = dict(lora_r=4, batch_size=4, max_length=64, progress=False)


# ---------------------------------------------------------------- bad input: fails before any model is loaded
@pytest.mark.parametrize('kw,msg', [
    (dict(loss='pulse2'), "unknown loss 'pulse2'"),
    (dict(loss='rdpo', epsilon=0.5), r'\[0, 0.5\), got 0.5'),
    (dict(loss='cdpo', epsilon=-0.1), 'got -0.1'),
    (dict(beta_schedule='cosine'), "unknown beta_schedule 'cosine'"),
    (dict(weighting='size'), "unknown weighting 'size'"),
])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        train(conv_pairs(), out_dir=tempfile.mkdtemp(), **kw)


def test_bad_data():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rejected'\]"):
        train(conv_pairs().remove_columns('rejected'), out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match=r"missing column\(s\) \['prompt'\]"):
        train(str_pairs().remove_columns('prompt'), out_dir=tempfile.mkdtemp())
    empty = conv_pairs(chosen=[[{'role': 'assistant', 'content': 'x'}]] * 2 + [[{'role': 'assistant', 'content': '  '}]])
    with pytest.raises(ValueError, match="row 2: column 'chosen' is empty"):
        train(empty, out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match="row 0: column 'rejected' is empty"):
        train(Dataset.from_list([{'prompt': 'a', 'chosen': 'b', 'rejected': ''}]), out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match="row 1: column 'weight' has value -1.0"):
        train(conv_pairs(weight=[1.0, -1.0]), weighting='weight', out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match="row 3: column 'weight' has value nan"):
        train(conv_pairs(weight=[1.0, 1.0, 1.0, float('nan')]), weighting='weight', out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match=r"row 0: column 'margin' has value -2.0"):
        train(conv_pairs(margin=[-2.0]), weighting='margin', out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match=r"needs column\(s\) \['weight'\]"):
        train(conv_pairs(), weighting='weight', out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match='soft labels need'):
        train(conv_pairs(), loss='soft', out_dir=tempfile.mkdtemp())
    with pytest.raises(FileNotFoundError, match='without pairs.parquet'):
        train(tempfile.mkdtemp(), out_dir=tempfile.mkdtemp())
    with pytest.raises(ValueError, match='empty'):
        train(Dataset.from_list([]), out_dir=tempfile.mkdtemp())


# ---------------------------------------------------------------- same numbers as stock TRL
@pytest.mark.slow
def test_dpo_matches_stock_trl_sigmoid():
    from trl import DPOTrainer
    from peft import LoraConfig
    from pulse_nb.models import load_model, load_tokenizer
    ds = conv_pairs()
    ours = train(ds, loss='dpo', max_steps=3, seed=0, out_dir=tempfile.mkdtemp(), save=False, **FAST)
    args = dpo_config(tempfile.mkdtemp(), max_steps=3, seed=0, batch_size=4, max_length=64, progress=False,
                      loss_type=['sigmoid'])
    stock = DPOTrainer(load_model(), args=args, train_dataset=ds, processing_class=load_tokenizer(),
                       peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules='all-linear', task_type='CAUSAL_LM'))
    stock.train()
    theirs = [h for h in stock.state.log_history if 'loss' in h]
    assert len(ours.losses) == len(theirs) == 3
    for a, b in zip(ours.log_history, theirs):
        for k in ('loss', 'rewards/margins', 'rewards/chosen', 'logps/rejected', 'grad_norm'):
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(b[k])), (k, a[k], b[k])
    assert ours.losses[0] == pytest.approx(math.log(2), abs=1e-6)    # LoRA B starts at 0: policy = reference


# ---------------------------------------------------------------- weights reach the loss
@pytest.mark.slow
def test_weights_change_the_loss_as_expected():
    w = [0.0, 1.0, 3.0, 1.0, 2.0, 0.5, 1.0, 4.0]
    r = train(conv_pairs(weight=w), loss='savage', weighting='weight', max_steps=2, out_dir=tempfile.mkdtemp(), save=False, **FAST)
    tr = r.trainer
    assert all(math.isfinite(l) for l in r.losses)
    assert 'rewards/weighted_accuracies' in r.log_history[0]
    tr.model.eval()
    examples = [tr.train_dataset[i] for i in range(4)]
    assert all(c in examples[0] for c in ('weight', 'margin', 'agreement'))   # the columns survived TRL's column filter
    with torch.no_grad():
        tr.use_weights = False   # one pair per batch: its weight would be normalised to 1 (or be all zero) anyway
        per_pair = torch.stack([tr.compute_loss(tr.model, tr._prepare_inputs(tr.data_collator([e]))) for e in examples])
        batch = tr._prepare_inputs(tr.data_collator(examples))
        tr.use_weights = True
        weighted = tr.compute_loss(tr.model, batch)
        tr.use_weights = False
        plain = tr.compute_loss(tr.model, batch)
    wn = torch.tensor([e['weight'] for e in examples]); wn = wn * len(wn) / wn.sum()
    assert torch.allclose(weighted, (wn * per_pair).mean(), atol=1e-6)
    assert torch.allclose(plain, per_pair.mean(), atol=1e-6)
    assert not torch.allclose(weighted, plain)


# ---------------------------------------------------------------- inputs, schedules, saving, loading
@pytest.mark.slow
def test_string_dataset_from_run_dir_with_schedule_and_reload():
    run = Path(tempfile.mkdtemp())
    str_pairs().to_parquet(str(run/'pairs.parquet'))
    assert len(load_pairs(run)) == 8
    out = Path(tempfile.mkdtemp())
    r = train(run, loss='rdpo', epsilon=0.2, beta_schedule='linear_warmup', max_steps=2, out_dir=out, **FAST)
    betas = [h['beta'] for h in r.log_history if 'beta' in h]
    assert betas[0] < betas[1] <= 0.1
    assert (r.adapter_dir/'adapter_model.safetensors').exists()
    cfg, met = json.loads((out/'config.json').read_text()), json.loads((out/'metrics.json').read_text())
    assert cfg['loss'] == 'rdpo' and cfg['epsilon'] == 0.2 and len(met['log_history']) >= 2
    # the saved adapter loads and computes the same log-probs as the trained model in memory
    loaded = load_trained(out)
    enc = r.tokenizer('Q: What is the largest planet?\nA: Jupiter.', return_tensors='pt')
    r.model.eval()
    with torch.no_grad():
        a, b = r.model(**enc).logits, loaded(**enc).logits
    assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad(), loaded.disable_adapter():
        base = loaded(**enc).logits
    assert not torch.allclose(a, base, atol=1e-7)  # the adapter moved the model


@pytest.mark.slow
def test_soft_labels_drdpo_and_eval():
    ds = conv_pairs(score_chosen=[7.0] * 8, score_rejected=[5.0, 6.5] * 4)
    r = train(ds, loss='soft', max_steps=1, out_dir=tempfile.mkdtemp(), save=False, eval_dataset=str_pairs().select(range(4)), **FAST)
    assert 'soft_label' in r.trainer.train_dataset.column_names
    assert 'eval_rewards/accuracies' in r.metrics['eval']
    r = train(conv_pairs(), loss='drdpo', beta_schedule='beta_dpo', weighting='margin*agreement', max_steps=1,
              out_dir=tempfile.mkdtemp(), save=False, eval_dataset=str_pairs().select(range(4)), **FAST)  # eval set: no metadata
    assert math.isfinite(r.losses[0])


@pytest.mark.slow
def test_full_finetuning():
    out = Path(tempfile.mkdtemp())
    r = train(str_pairs(), loss='hinge', lora=False, max_steps=1, out_dir=out, **FAST)
    assert r.adapter_dir is None and (r.model_dir/'config.json').exists()
    assert math.isfinite(r.losses[0])
    assert load_trained(out) is not None
