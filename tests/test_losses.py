"Losses: numerical match with TRL 1.16's own DPOTrainer code, and hand-derived properties of the others."
import math, tempfile
import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from pulse_nb.losses import (LOSSES, get_loss, loss_keywords, dpo_loss, cdpo_loss, rdpo_loss, ipo_loss, hinge_loss,
                             savage_loss, drdpo_loss, drdpo_log_terms, soft_loss, normalize_weights, check_weights,
                             pair_weights, check_epsilon, implicit_margin)


def call(name, *logps, **offer):
    "Call loss `name` with the keywords of `offer` that it takes (as the trainer does)."
    return get_loss(name)(*logps, **{k: v for k, v in offer.items() if k in loss_keywords(name)})


# ---------------------------------------------------------------- TRL reference: the real DPOTrainer._compute_loss
@pytest.fixture(scope='module')
def trl_trainer():
    "A real TRL DPOTrainer on a tiny random-init Llama with the embedded tokenizer (fast to build, real code path)."
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer
    from pulse_nb.models import load_tokenizer
    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    words = 'alpha beta gamma delta one two three four five six seven eight'.split()
    rows = [dict(prompt=f'Say {w}.', chosen=f' {w} {words[(i+1)%12]}', rejected=f' {words[(i+5)%12]}' * (1 + i % 3))
            for i, w in enumerate(words)]
    args = DPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, report_to='none', gradient_checkpointing=False,
                     max_length=48, per_device_train_batch_size=12, use_cpu=True,
                     precompute_ref_log_probs=True)  # a config-built model cannot be reloaded as a reference
    tr = DPOTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    tr.model.eval()
    batch = tr.data_collator([tr.train_dataset[i] for i in range(len(rows))])
    return tr, batch


def _policy_logps(tr, batch):
    "Summed completion log-probs with TRL's fused LM head (the numbers TRL's loss sees)."
    labels = batch['input_ids'].masked_fill(batch['completion_mask'] == 0, -100)
    with torch.no_grad():
        out = tr.model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'], labels=labels,
                       fused_lm_head=True, use_cache=False)
    seq_len = batch['completion_mask'].size(1) - 1
    return out.log_probs[:, -seq_len:].sum(1).chunk(2)


@pytest.mark.parametrize('ours,theirs', [('dpo', 'sigmoid'), ('rdpo', 'robust'), ('ipo', 'ipo'), ('hinge', 'hinge')])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_trl(trl_trainer, ours, theirs, seed):
    tr, batch = trl_trainer
    g = torch.Generator().manual_seed(seed)
    pc, pr = _policy_logps(tr, batch)
    n = len(pc)
    # random reference log-probs around the policy's, so that v = βh spans both signs and large magnitudes
    rc = pc + torch.randn(n, generator=g) * 15
    rr = pr + torch.randn(n, generator=g) * 15
    beta = float(torch.empty(1).uniform_(0.05, 0.5, generator=g))
    eps = float(torch.empty(1).uniform_(0.0, 0.45, generator=g))
    tr.loss_types, tr.loss_weights, tr.beta, tr.label_smoothing = [theirs], [1.0], beta, eps
    tr.precompute_ref_logps = True  # TRL then reads the reference log-probs from the batch
    with torch.no_grad():
        ref = tr._compute_loss(tr.model, {**batch, 'ref_chosen_logps': rc, 'ref_rejected_logps': rr}, False)
    cl, rl = batch['completion_mask'].sum(1).chunk(2)
    got = call(ours, pc, pr, rc, rr, beta=beta, epsilon=eps, chosen_lengths=cl, rejected_lengths=rl)
    print(f'{ours} vs TRL {theirs} (seed {seed}): loss {ref.item():.6f}, |diff| = {abs(got.item() - ref.item()):.2e}')
    assert abs(got.item() - ref.item()) <= 1e-6, (ours, got.item(), ref.item())


# ---------------------------------------------------------------- properties
logp = st.floats(-300, 0, allow_nan=False, width=64)
pairs = st.lists(st.tuples(logp, logp, logp, logp), min_size=1, max_size=16)

def _t(rows):
    return [torch.tensor(c, dtype=torch.float64) for c in zip(*rows)]


@settings(max_examples=60, deadline=None)
@given(pairs, st.floats(0.0, 0.49), st.floats(0.01, 2.0))
def test_rdpo_unbiased(rows, eps, beta):
    pc, pr, rc, rr = _t(rows)
    expected = (1 - eps) * rdpo_loss(pc, pr, rc, rr, beta=beta, epsilon=eps) + eps * rdpo_loss(pr, pc, rr, rc, beta=beta, epsilon=eps)
    assert torch.allclose(expected, dpo_loss(pc, pr, rc, rr, beta=beta), atol=1e-8, rtol=1e-8)


@settings(max_examples=60, deadline=None)
@given(pairs, st.floats(0.01, 5.0))
def test_savage_bounded(rows, beta):
    pc, pr, rc, rr = _t(rows)
    v = beta * implicit_margin(pc, pr, rc, rr)
    unscaled = savage_loss(pc, pr, rc, rr, beta=beta, scale=False, weights=None)
    assert 0.0 <= unscaled.item() <= 1.0
    assert 0.0 <= savage_loss(pc, pr, rc, rr, beta=beta).item() <= 2.0


@pytest.mark.parametrize('name', sorted(LOSSES))
@pytest.mark.parametrize('scale', [1.0, 1e3, 1e6])
def test_gradients_finite_at_extreme_margins(name, scale):
    g = torch.Generator().manual_seed(0)
    ins = [(torch.randn(8, generator=g) * scale).requires_grad_() for _ in range(4)]
    kw = dict(beta=0.5, epsilon=0.2, weights=torch.rand(8, generator=g) + .1, soft_labels=torch.rand(8, generator=g))
    loss = call(name, *ins, **kw)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(x.grad).all() for x in ins), name


def test_savage_gradient_vanishes_on_confident_disagreement():
    v = torch.tensor([-20.0, 0.0], requires_grad=True)
    z = torch.zeros(2)
    savage_loss(v, z, z, z, beta=1.0).backward()
    gs = v.grad.clone(); v.grad = None
    dpo_loss(v, z, z, z, beta=1.0).backward()
    assert gs[0].abs() < 1e-7 and v.grad[0].abs() > 0.4   # DPO still pulls at v=-20 (weight ~1, mean over 2)
    assert torch.allclose(gs[1], v.grad[1])                # scaled Savage: same gradient as DPO at v = 0


def test_hand_values():
    z = torch.zeros(1, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    # h = 1, β = 1: v = 1
    s = torch.sigmoid(one)
    assert math.isclose(dpo_loss(one, z, z, z, beta=1.).item(), -math.log(s.item()), rel_tol=1e-12)
    assert math.isclose(cdpo_loss(one, z, z, z, beta=1., epsilon=.1).item(),
                        -(.9 * math.log(s.item()) + .1 * math.log(1 - s.item())), rel_tol=1e-12)
    assert math.isclose(savage_loss(one, z, z, z, beta=1., scale=False).item(), (1 - s.item()) ** 2, rel_tol=1e-12)
    assert math.isclose(hinge_loss(one * .5, z, z, z, beta=1.).item(), .5, rel_tol=1e-12)
    assert math.isclose(ipo_loss(one, z, z, z, beta=.25).item(), (1 - 2) ** 2, rel_tol=1e-12)
    # Dr. DPO over two pairs with losses l1, l2: -β' log((e^{-l1/β'} + e^{-l2/β'}) / 2)
    two = torch.tensor([1., -1.], dtype=torch.float64); zz = torch.zeros(2, dtype=torch.float64)
    l = -F.logsigmoid(two)
    ref = -0.5 * math.log((math.exp(-l[0] / .5) + math.exp(-l[1] / .5)) / 2)
    assert math.isclose(drdpo_loss(two, zz, zz, zz, beta=1., drdpo_beta=.5).item(), ref, rel_tol=1e-12)
    assert drdpo_loss(two, zz, zz, zz, beta=1., drdpo_beta=.5) < dpo_loss(two, zz, zz, zz, beta=1.)  # soft-min <= mean
    # soft labels η: η φ(v) + (1 − η) φ(−v), η the probability that the label is right
    eta = torch.tensor([.8], dtype=torch.float64)
    assert math.isclose(soft_loss(one, z, z, z, beta=1., soft_labels=eta).item(),
                        -(.8 * math.log(s.item()) + .2 * math.log(1 - s.item())), rel_tol=1e-12)
    assert math.isclose(savage_loss(one, z, z, z, beta=1., scale=False, soft_labels=eta).item(),
                        .8 * (1 - s.item()) ** 2 + .2 * s.item() ** 2, rel_tol=1e-12)
    assert math.isclose(hinge_loss(one * .5, z, z, z, beta=1., soft_labels=eta).item(), .8 * .5 + .2 * 1.5, rel_tol=1e-12)


def test_weights_move_the_loss():
    z = torch.zeros(2, dtype=torch.float64)
    pc = torch.tensor([2., -2.], dtype=torch.float64)
    per = -F.logsigmoid(0.5 * pc)
    w = torch.tensor([1., 3.], dtype=torch.float64)
    got = dpo_loss(pc, z, z, z, beta=.5, weights=w)
    assert math.isclose(got.item(), (1 * per[0] + 3 * per[1]).item() / 2, rel_tol=1e-12)   # used as given, not rescaled
    wn = normalize_weights(w)                                                             # mean 1, as over a dataset
    assert math.isclose(dpo_loss(pc, z, z, z, beta=.5, weights=wn).item(), (0.5 * per[0] + 1.5 * per[1]).item() / 2, rel_tol=1e-12)
    assert dpo_loss(pc, z, z, z, beta=.5, weights=wn) > dpo_loss(pc, z, z, z, beta=.5)  # more weight on the badly-ranked pair


@pytest.mark.parametrize('bad', [-0.1, 0.5, 0.7, float('nan')])
def test_bad_epsilon(bad):
    z = torch.zeros(2)
    for name in ('cdpo', 'rdpo'):
        with pytest.raises(ValueError, match=r'\[0, 0.5\)'):
            get_loss(name)(z, z, z, z, epsilon=bad)
    with pytest.raises(ValueError, match=repr(bad) if bad == bad else 'nan'):
        check_epsilon(bad)


@pytest.mark.parametrize('w,msg', [([1., -2.], 'pair 1 has weight -2.0'), ([float('nan'), 1.], 'pair 0 has weight nan')])
def test_bad_weights(w, msg):
    z = torch.zeros(2)
    for name in LOSSES:
        with pytest.raises(ValueError, match=msg):
            call(name, z, z, z, z, epsilon=.1, weights=torch.tensor(w), soft_labels=torch.ones(2))


@pytest.mark.parametrize('name', sorted(LOSSES))
def test_all_zero_weights_give_zero_loss(name):
    x = [torch.randn(3, requires_grad=True) for _ in range(4)]
    loss = call(name, *x, epsilon=.1, weights=torch.zeros(3), soft_labels=torch.ones(3))
    loss.backward()
    assert loss.item() == 0 and all((t.grad == 0).all() for t in x)
    with pytest.raises(ValueError, match='all zero'):
        normalize_weights(torch.zeros(3))


def test_unknown_loss_and_soft():
    with pytest.raises(ValueError, match="unknown loss 'nope'.*savage"):
        get_loss('nope')
    z = torch.zeros(2)
    with pytest.raises(ValueError, match='soft labels'):
        soft_loss(z, z, z, z)
    with pytest.raises(ValueError, match=r'soft labels must lie in \[0, 1\]'):
        dpo_loss(z, z, z, z, soft_labels=torch.tensor([0.5, 1.5]))


def test_pair_weights():
    w = pair_weights(margin=[0., 2.], agreement=[1., 1.], kind='margin')
    assert torch.allclose(w, torch.tensor([0.05, 1 - math.exp(-2)], dtype=torch.float64))
    assert torch.allclose(pair_weights(agreement=[.5, .75, 1.], kind='agreement'), torch.tensor([.05, .5, 1.], dtype=torch.float64))
    with pytest.raises(ValueError, match='needs the pair margins'):
        pair_weights(agreement=[1.], kind='margin*agreement')
    with pytest.raises(ValueError, match='margin must be >= 0'):
        pair_weights(margin=[-1.], kind='margin')
    assert torch.allclose(normalize_weights(torch.tensor([2., 2., 2.])), torch.ones(3))


# ---------------------------------------------------------------- keywords: a misspelling is an error, not a default
@pytest.mark.parametrize('name', sorted(LOSSES))
def test_unknown_keyword_is_refused(name):
    z = torch.zeros(2)
    with pytest.raises(TypeError, match=rf"unknown keyword 'eps'.*it takes: beta, weights, soft_labels"):
        get_loss(name)(z, z, z, z, eps=0.2, soft_labels=torch.ones(2))
    if 'epsilon' in loss_keywords(name):  # the near miss is named
        with pytest.raises(TypeError, match=r"did you mean 'epsilon'\?"):
            get_loss(name)(z, z, z, z, eps=0.2)
    else:                                 # a loss without ε refuses it instead of ignoring it
        with pytest.raises(TypeError, match="unknown keyword 'epsilon'"):
            get_loss(name)(z, z, z, z, epsilon=0.2, soft_labels=torch.ones(2))


def test_cdpo_epsilon_reaches_the_loss():
    "The keyword that is accepted is used: ε changes cDPO's value (a swallowed keyword would leave it at the default)."
    one, z = torch.ones(3), torch.zeros(3)
    assert cdpo_loss(one, z, z, z, epsilon=0.3) != cdpo_loss(one, z, z, z, epsilon=0.1)


# ---------------------------------------------------------------- weights mean the same under any batch layout
@pytest.mark.parametrize('name', sorted(set(LOSSES) - {'drdpo'}))
def test_per_pair_losses_add_up_over_micro_batches(name):
    "Batch 8 equals the mean of 8 micro-batches of 1 (what accumulation computes), with weights: they are not rescaled per batch."
    g = torch.Generator().manual_seed(3)
    x = [(torch.randn(8, generator=g, dtype=torch.float64) * 10).requires_grad_() for _ in range(4)]
    w, s = torch.rand(8, generator=g, dtype=torch.float64) * 2, torch.rand(8, generator=g, dtype=torch.float64)
    kw = dict(beta=0.3, epsilon=0.2, soft_labels=s)
    whole = call(name, *x, weights=w, **kw)
    parts = sum(call(name, *[t[i:i+1] for t in x], weights=w[i:i+1], **{**kw, 'soft_labels': s[i:i+1]}) for i in range(8)) / 8
    assert torch.allclose(whole, parts, atol=1e-12)
    ga, gb = torch.autograd.grad(whole, x), torch.autograd.grad(parts, x)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(ga, gb))
    # at batch size 1 a weight matters: a pair of weight 3 counts 3 times a pair of weight 1
    one = [t[:1].detach() for t in x]
    assert torch.allclose(call(name, *one, weights=torch.tensor([3.], dtype=torch.float64), **{**kw, 'soft_labels': s[:1]}),
                          3 * call(name, *one, **{**kw, 'soft_labels': s[:1]}), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.floats(0.05, 5.0), st.integers(0, 1000))
def test_drdpo_step_split_equals_whole(cut, drdpo_beta, seed):
    "Dr. DPO over a step split in two micro-batches (with the step's log Z, n) equals the whole step: value and gradient."
    g = torch.Generator().manual_seed(seed)
    x = [(torch.randn(9, generator=g, dtype=torch.float64) * 8).requires_grad_() for _ in range(4)]
    w = torch.rand(9, generator=g, dtype=torch.float64) * (torch.rand(9, generator=g) > 0.3)
    whole = drdpo_loss(*x, weights=w, drdpo_beta=drdpo_beta)
    a, _ = drdpo_log_terms(*[t.detach() for t in x], weights=w, drdpo_beta=drdpo_beta)
    stats = (torch.logsumexp(a, 0), torch.tensor(9., dtype=torch.float64))
    parts = [drdpo_loss(*[t[sl] for t in x], weights=w[sl], drdpo_beta=drdpo_beta, step_stats=stats)
             for sl in (slice(0, cut), slice(cut, 9))]
    assert all(torch.allclose(p, whole, atol=1e-10) for p in parts)
    ga, gb = torch.autograd.grad(whole, x), torch.autograd.grad(parts[0] + parts[1], x)
    assert all(torch.allclose(u, v, atol=1e-10) for u, v in zip(ga, gb))


def test_drdpo_split_without_step_stats_differs():
    "The reason for `step_stats`: a soft-min per micro-batch is not the step's soft-min."
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(8, generator=g, dtype=torch.float64) * 8 for _ in range(4)]
    whole = drdpo_loss(*x, drdpo_beta=0.5)
    per_half = (drdpo_loss(*[t[:4] for t in x], drdpo_beta=0.5) + drdpo_loss(*[t[4:] for t in x], drdpo_beta=0.5)) / 2
    assert abs(whole - per_half) > 1e-3


def test_check_weights_does_not_rescale():
    assert torch.equal(check_weights(torch.tensor([2., 0.])), torch.tensor([2., 0.]))
    with pytest.raises(ValueError, match='pair 1 has weight inf'):
        check_weights(torch.tensor([1., float('inf')]))
