"""The TRL 1.16 internals that `PulseDPOTrainer` relies on, pinned: a TRL upgrade that changes them fails here, with a
message saying what changed, instead of training wrongly. Then the numbers: on the same batch and model, pulse's
`dpo`/`rdpo`/`ipo`/`hinge` give stock TRL's `sigmoid`/`robust`/`ipo`/`hinge` loss, gradients and metrics, and the pulse
loss path makes no host sync beyond the model's own forward passes (stock TRL's makes a dozen)."""
import inspect, tempfile
import pytest, torch
from torch.overrides import TorchFunctionMode
from transformers import Trainer
from trl import DPOTrainer
from pulse_nb.train import TrainConfig, make_trainer, prepare_pairs
from pulse_nb.trainer import policy_logps, split_batch
from test_train import word_pairs, tiny_llama, tiny_tokenizer, plain_logps

N = 8


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def trained():
    "A PulseDPOTrainer on a tiny Llama whose LoRA B matrices are random (so the policy differs from the reference), and one batch."
    cfg = TrainConfig(loss='dpo', lora_r=4, max_length=48, epsilon=0.2)
    pairs, _ = prepare_pairs(word_pairs(N), cfg)
    tr = make_trainer(pairs, tiny_llama(), tiny_tokenizer(), cfg, tempfile.mkdtemp(), progress=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            if 'lora_B' in n: p.copy_(torch.randn(p.shape, generator=g) * 3)
    batch = tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(N)]))
    return tr, batch


# ---------------------------------------------------------------- the internals, pinned
def test_batch_layout(trained):
    "TRL's collator: input_ids, attention_mask, completion_mask; the N chosen answers first, then the N rejected ones."
    tr, batch = trained
    assert {'input_ids', 'attention_mask', 'completion_mask'} <= set(batch), f'TRL batch keys changed: {sorted(batch)}'
    assert batch['input_ids'].shape[0] == 2 * N
    for i in range(N):
        ex = tr.train_dataset[i]
        for row, side in ((i, 'chosen_ids'), (N + i, 'rejected_ids')):
            got = batch['input_ids'][row][batch['completion_mask'][row] == 1].tolist()
            assert got == ex[side], f'row {row} is not the {side} of pair {i}: the batch layout changed'


def test_fused_head_and_reference_hook(trained):
    "`model(..., fused_lm_head=True)` gives per-token log-probs (and the metric fields); `compute_ref_log_probs` gives the base's."
    tr, batch = trained
    pc, pr, out = policy_logps(tr.model, batch)
    for f in ('log_probs', 'entropy', 'mean_logits', 'is_top1'):
        assert getattr(out, f, None) is not None and getattr(out, f).shape == batch['input_ids'][:, 1:].shape, f
    with tr.model.disable_adapter():
        policy_plain = plain_logps(tr.model, batch)   # adapters off: the base
    ref = tr.compute_ref_log_probs(tr.model, batch)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ref, policy_plain)), 'compute_ref_log_probs changed meaning'
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip((pc, pr), plain_logps(tr.model, batch))), 'fused head changed meaning'


def test_trainer_hooks_exist():
    "The TRL and transformers hooks the subclass overrides or reads."
    assert list(inspect.signature(DPOTrainer._compute_loss).parameters) == ['self', 'model', 'inputs', 'return_outputs']
    assert list(inspect.signature(DPOTrainer.compute_ref_log_probs).parameters) == ['self', 'model', 'inputs']
    assert list(inspect.signature(DPOTrainer.log).parameters)[:3] == ['self', 'logs', 'start_time']
    assert list(inspect.signature(Trainer.get_batch_samples).parameters) == ['self', 'epoch_iterator', 'num_batches', 'device']
    assert 'self.current_gradient_accumulation_steps = len(batch_samples)' in inspect.getsource(Trainer), \
        'transformers no longer records the micro-batches per step (Dr. DPO split steps rely on it)'
    assert 'loss = loss / self.current_gradient_accumulation_steps' in inspect.getsource(Trainer.training_step)
    src = inspect.getsource(DPOTrainer.log)
    assert 'sum(val) / len(val)' in src and 'self._metrics[mode].clear()' in src, 'DPOTrainer.log changed'
    src = inspect.getsource(DPOTrainer._set_signature_columns_if_needed)
    assert '"prompt_ids"' in src and '"ref_chosen_logps"' in src


def test_trainer_attributes(trained):
    tr, _ = trained
    for a in ('ld_alpha', 'f_divergence_type', 'use_weighting', 'aux_loss_enabled', 'loss_types', 'precompute_ref_logps',
              '_tp_size', '_total_train_tokens', '_metrics', 'ref_model', 'beta', 'label_smoothing'):
        assert hasattr(tr, a), f'DPOTrainer has no attribute {a!r} any more'


# ---------------------------------------------------------------- the same numbers as stock TRL
def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize('ours,theirs', [('dpo', 'sigmoid'), ('rdpo', 'robust'), ('ipo', 'ipo'), ('hinge', 'hinge')])
def test_loss_gradients_and_metrics_match_stock_trl(trained, ours, theirs):
    tr, batch = trained
    tr.model.train()
    tr.loss_name, tr.loss_kwargs, tr.epsilon = ours, {}, 0.2
    tr.loss_types, tr.label_smoothing = [theirs], 0.2
    runs = {}
    for name, fn in (('stock', lambda: DPOTrainer._compute_loss(tr, tr.model, batch, False)),
                     ('pulse', lambda: tr._compute_loss(tr.model, batch, False))):
        tr.model.zero_grad(); tr._metrics['train'].clear(); tr._total_train_tokens = 0
        loss = fn(); loss.backward()
        metrics = {k: v[-1] for k, v in tr._metrics['train'].items()} if name == 'stock' else tr.device_metrics['train'].read()
        runs[name] = loss.item(), grads(tr.model), metrics
    (ls, gs, ms), (lp, gp, mp) = runs['stock'], runs['pulse']
    print(f'{ours} vs TRL {theirs}: loss {ls:.6f} vs {lp:.6f}; max |grad diff| {(gs - gp).abs().max():.2e}')
    assert abs(ls - lp) <= 1e-6 * max(1, abs(ls)) and abs(ms['rewards/margins']) > 1e-3   # policy and reference differ
    assert (gs - gp).abs().max() <= 1e-5 * gs.abs().max() and gs.abs().max() > 1e-4
    assert set(ms) <= set(mp), sorted(set(ms) - set(mp))
    for k in ms: assert abs(ms[k] - mp[k]) <= 1e-5 * max(1, abs(ms[k])), (k, ms[k], mp[k])


# ---------------------------------------------------------------- no host syncs in the loss path
class SyncCounter(TorchFunctionMode):
    "Counts the calls that copy a device value to the host: item, tolist, bool/float/int of a tensor, nonzero, bool-mask indexing."
    SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.nonzero, torch.nonzero}
    def __init__(self): super().__init__(); self.n = 0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SYNCS: self.n += 1
        if func is torch.Tensor.__getitem__ and len(args) > 1 and torch.is_tensor(args[1]) and args[1].dtype == torch.bool: self.n += 1
        return func(*args, **kwargs)


def count_syncs(fn):
    with SyncCounter() as c: fn()
    return c.n


@pytest.mark.parametrize('loss,schedule', [('dpo', 'constant'), ('savage', 'beta_dpo'), ('drdpo', 'constant'),
                                           ('ipo', 'linear_warmup'), ('soft', 'constant')])
def test_no_host_sync_beyond_the_model(trained, loss, schedule):
    "Weights, soft labels, β schedules and metrics stay on the device: the loss path syncs exactly as often as its two forwards."
    from pulse_nb.train import BetaSchedule, loss_options
    tr, batch = trained
    tr.model.train()
    tr.loss_name, tr.loss_kwargs, tr.loss_types = loss, loss_options(TrainConfig(loss=loss)), ['sigmoid']
    tr.beta_schedule, tr.use_weights, tr.use_soft_labels = BetaSchedule(schedule, 0.1), True, True
    g = torch.Generator().manual_seed(1)
    full = {**batch, 'weight': torch.rand(N, generator=g), 'soft_label': torch.rand(N, generator=g)}
    model_batch, _ = split_batch(full)
    baseline = count_syncs(lambda: (policy_logps(tr.model, model_batch), tr.compute_ref_log_probs(tr.model, model_batch)))
    ours = count_syncs(lambda: tr._compute_loss(tr.model, full, False))
    tr.device_metrics['train'].read()
    tr.loss_types = ['sigmoid']
    stock = count_syncs(lambda: DPOTrainer._compute_loss(tr, tr.model, batch, False))
    tr._metrics['train'].clear()
    print(f'{loss}/{schedule}: host syncs: model forwards {baseline}, pulse loss path {ours}, stock TRL {stock}')
    assert ours == baseline and stock >= baseline + 10
