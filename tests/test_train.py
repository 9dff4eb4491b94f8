"""pulse_nb.train: real TRL training, a few steps on tiny pairs: the embedded model with LoRA, or a random-init tiny Llama
(built here in milliseconds) where only the training mechanics are under test. The tiny-model helpers are shared
with the other tests/test_train_*.py files."""
import dataclasses, importlib.util, json, math, tempfile
from pathlib import Path
import pytest, torch
from datasets import Dataset
from pulse_nb.train import (train, load_trained, dpo_config, PulseDPOTrainer, load_pairs, TrainConfig,
                            ConfigError, make_trainer, prepare_pairs)
from pulse_nb.trainer import LOSS_COLUMNS, policy_logps

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

WORDS = 'alpha beta gamma delta one two three four five six seven eight'.split()


def word_pairs(n=8, weights=None):
    "`n` short string pairs of different lengths (and an optional `weight` column)."
    rows = [dict(prompt=f'Say {WORDS[i % 12]}.', chosen=f' {WORDS[i % 12]} {WORDS[(i + 1) % 12]}',
                 rejected=f' {WORDS[(i + 5) % 12]}' * (1 + i % 3)) for i in range(n)]
    for r, w in zip(rows, weights or []): r['weight'] = float(w)
    return Dataset.from_list(rows)


_TOK = {}
def tiny_tokenizer():
    "The embedded model's tokenizer (loaded once)."
    from pulse_nb.models import load_tokenizer
    if 'tok' not in _TOK: _TOK['tok'] = load_tokenizer()
    return _TOK['tok']


def tiny_llama(seed=0):
    "A random-init Llama (2 layers, hidden 32) over the embedded tokenizer's vocabulary; the same `seed` gives the same weights."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=256))


TINY = dict(tokenizer=None, progress=False, save=False, lora_r=4, max_length=48)  # tokenizer is filled in by tiny_train


def tiny_train(ds, **kw):
    "`train` on a fresh tiny Llama (seed 0) with the embedded tokenizer."
    return train(ds, model=tiny_llama(), **{**TINY, 'tokenizer': tiny_tokenizer(), 'out_dir': tempfile.mkdtemp(), **kw})


# ---------------------------------------------------------------- bad input: fails before any model is loaded
@pytest.mark.parametrize('kw,msg', [
    (dict(loss='pulse2'), "unknown loss 'pulse2'"),
    (dict(loss='rdpo', epsilon=0.5), r'\[0, 0.5\), got 0.5'),
    (dict(loss='cdpo', epsilon=-0.1), 'got -0.1'),
    (dict(beta_schedule='cosine'), "unknown beta_schedule 'cosine'"),
    (dict(weighting='size'), "unknown weighting 'size'"),
    (dict(lossx='dpo'), "unknown training option 'lossx' \\(did you mean 'loss'\\?\\)"),
    (dict(warmup_steps=2), "'warmup_steps' \\(a trl.DPOConfig field: put it in trl_args\\)"),
    (dict(batch_size='4'), "TrainConfig.batch_size must be int, got '4'"),
    (dict(lr=float('nan')), 'TrainConfig.lr must be > 0, got nan'),
    (dict(max_steps=0), 'TrainConfig.max_steps must be -1 or >= 1, got 0'),
    (dict(report_to='mlflow'), 'TrainConfig.report_to must be one or a list of'),
    (dict(beta_schedule_kwargs={'warmup': 0.2}), "beta_schedule_kwargs: unknown option 'warmup'"),
    (dict(trl_args={'beta': 0.2}), 'set TrainConfig.beta instead'),
    (dict(init_adapter='/nonexistent/adapter'), "init_adapter '/nonexistent/adapter' is not a LoRA adapter folder"),
])
def test_bad_arguments(kw, msg):
    "Every bad option fails before a model is loaded, with one line naming it (an error the CLI prints as one line)."
    with pytest.raises((ValueError, FileNotFoundError), match=msg) as e:
        train(conv_pairs(), out_dir=tempfile.mkdtemp(), **kw)
    assert '\n' not in str(e.value)


def test_two_critic_split_weighs_half_not_the_floor():
    "With K=2 a 1-1 split weighs half a unanimous pair (agreement share), not the 0.05 floor; K>=3 keeps the excess over ½."
    from pulse_nb.train import add_pair_columns
    ds = conv_pairs().select(range(3)).remove_columns('agreement')
    ds = ds.add_column('agreement', [1.0, 0.5, 0.5]).add_column('n_critics', [2, 2, 4])
    w = add_pair_columns(ds, 'agreement')['weight']
    assert w[1] / w[0] == pytest.approx(0.5) and w[2] / w[0] == pytest.approx(0.05)

def test_config_round_trip_and_overrides():
    "The YAML `train:` section maps onto TrainConfig and back; overrides replace fields and are checked the same way."
    section = {'loss': 'drdpo', 'beta': 0.2, 'weighting': 'margin*agreement', 'lora_r': 8, 'report_to': ['tensorboard'],
               'beta_schedule_kwargs': {'warmup_frac': 0.3}, 'trl_args': {'warmup_steps': 2}}
    cfg = TrainConfig.from_dict(section)
    back = dataclasses.asdict(cfg)
    assert {k: back[k] for k in section} == section and TrainConfig(**back) == cfg
    assert dataclasses.replace(cfg, lr=1e-3).lr == 1e-3
    with pytest.raises(ConfigError, match='TrainConfig.epsilon must be in'):
        dataclasses.replace(cfg, epsilon=0.7)
    with pytest.raises(TypeError, match="unknown training option 'betta'"):  # also a TypeError, like any unknown keyword
        TrainConfig.from_dict({'betta': 0.1})
    assert dpo_config(tempfile.mkdtemp(), cfg).warmup_steps == 2                 # trl_args reach TRL


def test_missing_reporter_package_is_named():
    if importlib.util.find_spec('wandb') is not None: pytest.skip('wandb is installed here')
    with pytest.raises(ValueError, match="report_to='wandb' needs the wandb package: pip install wandb"):
        train(conv_pairs(), out_dir=tempfile.mkdtemp(), report_to=['none', 'wandb'])


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
    args = dpo_config(tempfile.mkdtemp(), TrainConfig(max_steps=3, seed=0, batch_size=4, max_length=64), progress=False,
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
    assert 'weight' in examples[0]            # the column survived TRL's column filter
    # normalised once over the dataset (mean 1), not per batch
    col = torch.tensor(tr.train_dataset['weight'], dtype=torch.float64)
    assert torch.allclose(col, torch.tensor(w, dtype=torch.float64) / (sum(w) / len(w)), atol=1e-12)
    with torch.no_grad():
        tr.use_weights = False
        per_pair = torch.stack([tr.compute_loss(tr.model, tr._prepare_inputs(tr.data_collator([e]))) for e in examples])
        batch = tr._prepare_inputs(tr.data_collator(examples))
        tr.use_weights = True
        weighted = tr.compute_loss(tr.model, batch)
        one = tr.compute_loss(tr.model, tr._prepare_inputs(tr.data_collator(examples[2:3])))  # a batch of one pair
        tr.use_weights = False
        plain = tr.compute_loss(tr.model, batch)
    wn = torch.tensor([e['weight'] for e in examples])
    assert torch.allclose(weighted, (wn * per_pair).mean(), atol=1e-6)
    assert torch.allclose(one, wn[2] * per_pair[2], atol=1e-6) and wn[2] != 1   # a weight counts at batch size 1 too
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
    # linear warm-up from β/10 over warmup_frac=0.5 of the 2 steps: step 0 at β/10, step 1 (frac 0.5) at the full β
    assert betas == pytest.approx([0.01, 0.1], abs=1e-9), betas
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
    r = train(ds, loss='soft', soft_label_tau=2.0, max_steps=1, out_dir=tempfile.mkdtemp(), save=False,
              eval_dataset=str_pairs().select(range(4)), **FAST)
    eta = [1 / (1 + math.exp(-(7.0 - s) / 2.0)) for s in [5.0, 6.5] * 4]        # η = σ(Δscore / τ), τ = 2
    assert r.trainer.train_dataset['soft_label'] == pytest.approx(eta, abs=1e-12)
    assert r.losses[0] == pytest.approx(math.log(2), abs=1e-6)   # h = 0 at step 0: -η log σ(0) - (1-η) log σ(0) = log 2
    assert 'eval_rewards/accuracies' in r.metrics['eval']
    r = train(conv_pairs(), loss='drdpo', beta_schedule='beta_dpo', weighting='margin*agreement', max_steps=1,
              out_dir=tempfile.mkdtemp(), save=False, eval_dataset=str_pairs().select(range(4)), **FAST)  # eval set: no metadata
    # margins 1, 2, 3, 1, ... and agreement 1, .75, ...: w = (1 - e^-m) * clamp((a - .5) / .5, 0, 1), floor .05, mean 1
    raw = [max(0.05, (1 - math.exp(-(1 + i % 3))) * [1.0, 0.5][i % 2]) for i in range(8)]
    assert r.trainer.train_dataset['weight'] == pytest.approx([x * 8 / sum(raw) for x in raw], abs=1e-12)
    assert r.log_history[0]['beta'] == pytest.approx(0.1, abs=1e-7)   # β-DPO: the first batch sets the threshold, β = β0


def test_beta_dpo_schedule_values():
    "β-DPO by hand: β = β0 (1 + α (M - M0)) with M the batch's mean βh, clamped at min_beta; M0 an EMA (momentum .9)."
    from pulse_nb.train import BetaSchedule
    s = BetaSchedule('beta_dpo', beta=0.1, alpha=1.0)
    assert float(s(0, 10, torch.tensor([0.1, 0.3]))) == pytest.approx(0.1, abs=1e-7)   # M0 = 0.2 from the first batch
    assert float(s(1, 10, torch.tensor([0.5, 1.5]))) == pytest.approx(0.1 * (1 + (1.0 - 0.2)), abs=1e-7)   # 0.18
    m0 = 0.9 * 0.2 + 0.1 * 1.0                                                        # 0.28 after that batch
    assert float(s(2, 10, torch.tensor([0.0]), update=False)) == pytest.approx(0.1 * (1 - m0), abs=1e-7)
    assert float(s(3, 10, torch.tensor([0.0]))) == pytest.approx(0.1 * (1 - m0), abs=1e-7)  # update=False left M0 alone
    assert float(s(4, 10, torch.tensor([-50.0]))) == pytest.approx(1e-3, abs=1e-9)          # clamped at min_beta


def test_beta_dpo_in_training_follows_the_logged_margins():
    "In a real run, each step's β is β0 (1 + α (M_t - M0)) with M_t = β0 mean(h) of its batch, read back from the logs."
    r = tiny_train(word_pairs(8), loss='dpo', beta_schedule='beta_dpo', beta_schedule_kwargs={'alpha': 2.0, 'momentum': 0.5},
                   batch_size=4, max_steps=4, lr=5e-2)
    logs = [h for h in r.log_history if 'beta' in h]
    betas, margins = [h['beta'] for h in logs], [h['rewards/margins'] for h in logs]   # rewards/margins = β_t mean(h)
    assert len(betas) == 4 and betas[0] == pytest.approx(0.1, abs=1e-7) and margins[0] == pytest.approx(0, abs=1e-6)
    m0 = None
    for b, rm in zip(betas, margins):
        m = 0.1 * rm / b                                  # M_t = β0 mean(h)
        m0 = m if m0 is None else m0
        assert b == pytest.approx(max(1e-3, 0.1 * (1 + 2.0 * (m - m0))), rel=1e-4, abs=1e-7), (betas, margins)
        m0 = 0.5 * m0 + 0.5 * m
    assert max(abs(b - 0.1) for b in betas) > 1e-3, betas  # the margins moved β: the check above is not β = β0 throughout


def test_soft_label_loss_matches_the_formula():
    "After training on soft labels, the trainer's loss on a batch is mean(-η log σ(βh) - (1-η) log σ(-βh)), h from plain log-probs."
    eta = [0.9, 0.1, 0.75, 0.3, 1.0, 0.0, 0.6, 0.5]
    ds = word_pairs(8).add_column('soft_label', eta)
    r = tiny_train(ds, loss='soft', batch_size=4, max_steps=2, lr=5e-2)
    tr = r.trainer
    tr.model.eval()
    examples = [tr.train_dataset[i] for i in range(8)]
    batch = tr._prepare_inputs(tr.data_collator(examples))
    with torch.no_grad():
        got = tr.compute_loss(tr.model, batch)
        pc, pr = plain_logps(tr.model, batch)
        with tr.model.disable_adapter(): rc, rr = plain_logps(tr.model, batch)
    v = 0.1 * ((pc - rc) - (pr - rr)).double()
    e = torch.tensor(eta, dtype=torch.float64)
    assert v.abs().max() > 0.05, v                         # training moved the policy: η matters at this h
    want = (-e * torch.nn.functional.logsigmoid(v) - (1 - e) * torch.nn.functional.logsigmoid(-v)).mean()
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    hard = torch.nn.functional.logsigmoid(v).neg().mean()  # plain DPO on the same batch: a different number
    assert abs(want.item() - hard.item()) > 1e-3


@pytest.mark.slow
def test_full_finetuning():
    out = Path(tempfile.mkdtemp())
    r = train(str_pairs(), loss='hinge', lora=False, max_steps=1, out_dir=out, **FAST)
    assert r.adapter_dir is None and (r.model_dir/'config.json').exists()
    assert r.losses[0] == pytest.approx(1.0, abs=1e-6)  # policy = reference at step 0: h = 0, hinge max(0, 1 - βh) = 1
    # the reference is a frozen copy of the model as given: still the base after a step that moved the policy
    from pulse_nb.models import load_model
    enc = r.tokenizer('Q: What is the largest planet?\nA: Jupiter.', return_tensors='pt')
    with torch.no_grad():
        base, ref, trained, loaded = (m.eval()(**enc).logits for m in (load_model(), r.trainer.ref_model, r.model, load_trained(out)))
    assert torch.equal(base, ref) and not torch.allclose(trained, base, atol=1e-6)
    assert torch.allclose(loaded, trained, atol=1e-5)


# ---------------------------------------------------------------- iterative rounds: which model is the reference
def plain_logps(model, batch):
    "Summed completion log-probs from the full logits (no fused head): an independent computation."
    with torch.no_grad():
        logits = model.eval()(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, batch['input_ids'][:, 1:, None])[..., 0]
    return (lp * batch['completion_mask'][:, 1:]).sum(1).chunk(2)


def close(a, b, atol=1e-4):
    return all(torch.allclose(x.float(), y.float(), atol=atol) for x, y in zip(a, b))


def test_reference_for_iterative_rounds(tmp_path):
    """Round 2 can use as reference the previous policy (a merged folder as `model`, fresh LoRA) or the base (`model` = base,
    `init_adapter` = round 1's adapter). The reference's log-probs must be those of the intended model, with and
    without precomputed reference log-probs."""
    from pulse_nb.models import load_model, load_adapter
    tok = tiny_tokenizer()
    base_dir, merged_dir = tmp_path/'base', tmp_path/'merged'
    tiny_llama().save_pretrained(base_dir); tok.save_pretrained(base_dir)
    r1 = train(word_pairs(), model=str(base_dir), out_dir=tmp_path/'r1', progress=False, lora_r=4, max_length=48,
               max_steps=3, lr=5e-2, loss='dpo')
    load_adapter(load_model(str(base_dir)), r1.adapter_dir).merge_and_unload().save_pretrained(merged_dir)
    tok.save_pretrained(merged_dir)
    cfg = TrainConfig(lora_r=4, max_length=48)
    pairs, _ = prepare_pairs(word_pairs(), cfg)

    def built(model_dir, c):
        tr = make_trainer(pairs, load_model(str(model_dir)), tok, c, tmp_path/'t', progress=False)
        return tr, tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(8)]))

    base, merged = load_model(str(base_dir)), load_model(str(merged_dir))
    # (a) reference = the previous policy: a merged folder and a fresh adapter
    tr, batch = built(merged_dir, cfg)
    want, other = plain_logps(merged, batch), plain_logps(base, batch)
    assert not close(want, other, atol=1e-2)                                 # round 1 moved the model
    assert close(tr.reference_logps(batch), want) and close(policy_logps(tr.model, batch)[:2], want)
    # (a') the same with round 1's adapter folder as `model` (merged into its base by resolve_model)
    from pulse_nb.train import load_policy
    policy, _, name = load_policy(str(r1.adapter_dir), cfg)
    assert name == str(r1.adapter_dir.resolve())
    tr2 = make_trainer(pairs, policy, tok, cfg, tmp_path/'t2', progress=False)
    assert close(tr2.reference_logps(batch), want)
    # (b) reference = the base: the base and round 1's adapter, which the policy starts from
    tr, batch = built(base_dir, dataclasses.replace(cfg, init_adapter=str(r1.adapter_dir)))
    assert list(tr.model.peft_config) == ['default']                         # no frozen copy of the adapter
    assert close(tr.reference_logps(batch), plain_logps(base, batch))
    assert close(policy_logps(tr.model, batch)[:2], plain_logps(merged, batch))
    assert any(p.requires_grad for n, p in tr.model.named_parameters() if 'lora_' in n)
    # (b) with the reference log-probs precomputed before training
    tr, batch = built(base_dir, dataclasses.replace(cfg, init_adapter=str(r1.adapter_dir), precompute_ref_logps=True))
    assert close((batch['ref_chosen_logps'], batch['ref_rejected_logps']), plain_logps(base, batch))
    # and it trains from there: the first step's loss is DPO's with policy = round 1's model and reference = the base
    from pulse_nb.losses import dpo_loss
    r2 = train(word_pairs(), model=str(base_dir), init_adapter=str(r1.adapter_dir), out_dir=tmp_path/'r2', progress=False,
               max_length=48, max_steps=1, batch_size=8, loss='dpo')
    expected = dpo_loss(*plain_logps(merged, batch), *plain_logps(base, batch), beta=0.1).item()
    assert abs(r2.losses[0] - expected) < 1e-4 and abs(expected - math.log(2)) > 1e-3


def test_init_adapter_of_another_shape_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    wide = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer()), hidden_size=64, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2))
    get_peft_model(wide, LoraConfig(r=4, target_modules='all-linear')).save_pretrained(tmp_path/'wide')
    with pytest.raises((ValueError, RuntimeError), match='size mismatch|does not fit'):
        tiny_train(word_pairs(), init_adapter=str(tmp_path/'wide'), max_steps=1)


# ---------------------------------------------------------------- report_to
def test_report_to_tensorboard_writes_events(tmp_path):
    pytest.importorskip('tensorboard', reason='report_to=tensorboard needs the tensorboard package (pip install tensorboard)')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    r = tiny_train(word_pairs(), report_to='tensorboard', max_steps=2, out_dir=tmp_path, lr=5e-2)
    events = sorted((tmp_path/'trainer').rglob('events.out.tfevents.*'))
    assert events, sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*'))
    acc = EventAccumulator(str(events[0].parent)); acc.Reload()
    logged = [e.value for e in acc.Scalars('train/loss')]
    assert len(logged) == 2 and all(abs(a - b) < 1e-6 for a, b in zip(logged, r.losses))
    assert 'train/rewards/margins' in acc.Tags()['scalars']


def test_adapter_records_a_portable_base_and_loads_after_a_move(tmp_path, monkeypatch):
    "An adapter on an embedded base names it (not this machine's cache folder) with its checksum, and loads after a move."
    import shutil
    from pulse_nb import models
    monkeypatch.setenv('PULSE_CACHE', str(tmp_path/'cache'))
    m = models.EmbeddedModel('tiny-test-llama', 'no-such-dist', '0.0', 'x.gguf', 'ab' * 32)
    monkeypatch.setitem(models.EMBEDDED, m.name, m)
    folder = tmp_path/'cache'/'models'/f'{m.name}-{m.version}'
    tok = tiny_tokenizer(); tiny_llama().save_pretrained(folder); tok.save_pretrained(folder)
    (folder/models.MANIFEST).write_text(json.dumps({'format': 1, 'files': models._file_table(folder)}))
    r = train(word_pairs(), model=m.name, out_dir=tmp_path/'run'/'train', progress=False, lora_r=4, max_length=48,
              max_steps=1, loss='dpo')
    moved = tmp_path/'elsewhere'; shutil.move(str(tmp_path/'run'), moved)
    a, t = moved/'train'/'adapter', moved/'train'
    for f in [*a.iterdir(), t/'config.json', t/'metrics.json']:
        if f.suffix in ('.json', '.md'): assert str(tmp_path) not in f.read_text(), f
    assert json.loads((a/'adapter_config.json').read_text())['base_model_name_or_path'] == m.name
    assert json.loads((a/'pulse_base.json').read_text()) == {'base': m.name, 'sha256': m.sha256}
    assert (json.loads((t/'config.json').read_text())['model'], r.config['model_sha256']) == (m.name, m.sha256)
    enc = tok('Say alpha. alpha beta', return_tensors='pt')
    with torch.no_grad():
        want = r.model.eval()(**enc).logits
        assert torch.allclose(want, load_trained(t, device='cpu')(**enc).logits, atol=1e-5)
        assert torch.allclose(want, models.load_model(str(a), device='cpu')(**enc).logits, atol=1e-5)


def test_rounds_chain_through_adapter_folders(tmp_path):
    "Round 2 trained on round 1's adapter folder records it as its base: `load_trained` rebuilds base + a1 + a2."
    tok = tiny_tokenizer()
    base_dir = tmp_path/'base'; tiny_llama().save_pretrained(base_dir); tok.save_pretrained(base_dir)
    kw = dict(progress=False, lora_r=4, max_length=48, max_steps=2, lr=5e-2, loss='dpo')
    r1 = train(word_pairs(), model=str(base_dir), out_dir=tmp_path/'r1', **kw)
    r2 = train(word_pairs(), model=str(r1.adapter_dir), out_dir=tmp_path/'r2', **kw)
    recorded = json.loads((r2.adapter_dir/'adapter_config.json').read_text())['base_model_name_or_path']
    assert recorded == str(r1.adapter_dir.resolve()) == r2.config['model']
    enc = tok('Say alpha. alpha beta', return_tensors='pt')
    with torch.no_grad():
        a, b = r2.model.eval()(**enc).logits, load_trained(tmp_path/'r2', device='cpu')(**enc).logits
        one = load_trained(tmp_path/'r1', device='cpu')(**enc).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, one, atol=1e-4)


def test_progress_bar_shows_the_loss_instead_of_printing_metric_dicts(capfd):
    "With progress on, the bar carries the loss; the trainer's dict of metrics is not printed at every step."
    r = tiny_train(word_pairs(), progress=True, max_steps=2, lr=5e-2)
    out, err = capfd.readouterr()
    assert f'loss={r.losses[-1]:.4f}' in err, err[-500:]
    assert "{'loss'" not in out + err and "'rewards/margins'" not in out + err, (out + err)[-800:]


@pytest.mark.slow
def test_the_compact_lm_head_leaves_training_bit_for_bit(tmp_path, monkeypatch):
    "Runs recorded before `compact_lm_head` (e.g. pulse_rounds' policies, restored by sha256) retrain to the same bytes."
    import contextlib
    import pulse_nb.train as T, pulse_nb.trainer as TR
    from pulse_nb.loop import weights_digest
    pairs = Dataset.from_list([{'prompt': f'What is {a}+{a}?', 'chosen': f'The answer is {2*a}.', 'rejected': f'The answer is {2*a+1}.'}
                               for a in range(8)])
    def digest(name):
        T.train(pairs, out_dir=tmp_path/name, max_steps=2, bf16=True, progress=False)
        return weights_digest(tmp_path/name/'adapter')
    compact = digest('compact')
    monkeypatch.setattr(TR, 'compact_lm_head', contextlib.nullcontext)   # every position through the LM head, as before
    assert digest('full') == compact
