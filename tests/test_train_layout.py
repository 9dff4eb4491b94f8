"""Per-pair weights (and Dr. DPO's soft-min) mean the same under any batch layout: batch 8 x accumulation 1, batch 1 x
accumulation 8 and 2 DDP ranks give the same losses and gradients. A micro-batch whose weights are all zero trains on.
Real training runs on a random-init tiny Llama (tests/test_train.py's helpers)."""
import json, math, os, subprocess, sys, tempfile
from pathlib import Path
import pytest, torch
from transformers import TrainerCallback
from test_train import tiny_llama, tiny_tokenizer, word_pairs, tiny_train
from pulse_nb.scaleout import free_port

WEIGHTS = [0.2, 3.0, 1.0, 0.5, 2.0, 0.0, 1.5, 1.0]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FirstGradients(TrainerCallback):
    "The trainable parameters' gradients of the first optimizer step, just before the optimizer uses them."
    def __init__(self): self.grads = None
    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def run(loss, batch_size, accumulation, **kw):
    "Two optimizer steps of 8 pairs each; the logged losses, grad norms and the first step's gradients."
    cb = FirstGradients()
    r = tiny_train(word_pairs(8, WEIGHTS), loss=loss, weighting='weight', batch_size=batch_size,
                   gradient_accumulation_steps=accumulation, max_steps=2, lr=1e-2, callbacks=[cb],
                   trl_args={'max_grad_norm': 0.0}, **kw)   # no clipping: it would hide a gradient's scale
    return r.losses, [h['grad_norm'] for h in r.log_history if 'grad_norm' in h], cb.grads


@pytest.mark.parametrize('loss', ['dpo', 'savage', 'ipo', 'drdpo'])
def test_batch_1_x_accumulation_8_equals_batch_8(loss):
    (la, na, ga), (lb, nb, gb) = run(loss, 8, 1), run(loss, 1, 8)
    print(f'{loss}: losses {la} vs {lb}; grad norms {na} vs {nb}')
    assert len(la) == len(lb) == 2 and sorted(ga) == sorted(gb) and ga
    assert all(abs(a - b) <= 1e-5 for a, b in zip(la, lb)), (la, lb)
    assert all(abs(a - b) <= 1e-5 * max(1, a) for a, b in zip(na, nb)), (na, nb)
    assert max((ga[k] - gb[k]).abs().max().item() for k in ga) <= 1e-5
    assert max(g.abs().max().item() for g in ga.values()) > 1e-3       # the gradients compared are not all zero


def test_weights_change_the_gradient():
    "The check above can fail: the same layout without weights gives other gradients (so weights reach them)."
    _, _, weighted = run('dpo', 8, 1)
    cb = FirstGradients()
    tiny_train(word_pairs(8), loss='dpo', batch_size=8, max_steps=1, lr=1e-2, callbacks=[cb], trl_args={'max_grad_norm': 0.0})
    assert max((weighted[k] - cb.grads[k]).abs().max().item() for k in weighted) > 1e-4


def test_all_zero_micro_batch_trains_on():
    "Pairs of weight 0 in micro-batches of their own: a zero loss and no weighted metric for that step, no crash."
    r = tiny_train(word_pairs(8, [0, 0, 0, 0, 0, 0, 1, 1]), loss='savage', weighting='weight', batch_size=1, max_steps=8, lr=1e-2)
    assert len(r.losses) == 8 and all(math.isfinite(l) for l in r.losses)
    zero = [h for h in r.log_history if 'loss' in h and h['loss'] == 0.0]
    assert len(zero) == 6 and all('rewards/weighted_accuracies' not in h for h in zero)
    assert sum('rewards/weighted_accuracies' in h for h in r.log_history) == 2
    r = tiny_train(word_pairs(8, [0, 0, 0, 0, 0, 0, 1, 1]), loss='drdpo', weighting='weight', batch_size=1,
                   gradient_accumulation_steps=2, max_steps=4)
    assert len(r.losses) == 4 and all(math.isfinite(l) for l in r.losses)
    # h ≈ 0 at lr 1e-4, so every pair's DPO loss is ≈ log 2 and a step's Dr. DPO loss -log(mean_i w_i e^{-log 2}) is
    # log 2 - log(mean w) over its 2 pairs, the weights normalised over the dataset (the two of weight 1 become 4): 0 for a
    # step holding one of them, -log 2 for a step holding both; exactly 0 for a step of zero weights
    steps = [h for h in r.log_history if 'loss' in h]
    weighted = [h for h in steps if 'rewards/weighted_accuracies' in h]
    assert len(weighted) in (1, 2), steps
    want = -math.log(2) if len(weighted) == 1 else 0.0
    assert all(abs(h['loss'] - want) < 1e-3 for h in weighted), (want, r.losses)
    assert all(h['loss'] == 0.0 for h in steps if h not in weighted), r.losses


DDP_SCRIPT = '''
import json, sys, tempfile
sys.path.insert(0, {tests!r})
from accelerate import PartialState
from test_train import tiny_llama, tiny_tokenizer, word_pairs
from pulse_nb.train import train
out = {{}}
for loss in ('savage', 'drdpo'):
    r = train(word_pairs(8, {weights!r}), model=tiny_llama(), tokenizer=tiny_tokenizer(), out_dir=tempfile.mkdtemp(),
              loss=loss, weighting='weight', batch_size=2, gradient_accumulation_steps=2, max_steps=2, lr=1e-2,
              lora_r=4, max_length=48, progress=False, save=False, trl_args={{'max_grad_norm': 0.0}})
    out[loss] = dict(losses=r.losses, adapter={{n: p.detach().flatten().tolist() for n, p in r.model.named_parameters() if p.requires_grad}})
r = train(word_pairs(8), model=tiny_llama(), tokenizer=tiny_tokenizer(), out_dir=tempfile.mkdtemp(), loss='dpo',
          beta_schedule='beta_dpo', beta_schedule_kwargs={{'alpha': 20.0, 'momentum': 0.5}}, batch_size=2,
          gradient_accumulation_steps=2, max_steps=3, lr=5e-2, lora_r=4, max_length=48, progress=False, save=False,
          trl_args={{'max_grad_norm': 0.0}})
out['beta_dpo'] = dict(losses=r.losses, adapter={{n: p.detach().flatten().tolist() for n, p in r.model.named_parameters() if p.requires_grad}})
state = PartialState()
out['world'], out['backend'] = state.num_processes, str(state.backend)
if state.is_main_process: json.dump(out, open(sys.argv[1], 'w'))
'''


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path):
    """2 processes (gloo on CPU) x batch 2 x accumulation 2 give the losses and trained weights of 1 process x batch 8
    (weights normalised per rank or per micro-batch, or Dr. DPO per micro-batch, would not), launched with
    configs/accelerate_ddp_cpu.yaml (the shipped DDP config with mixed precision off)."""
    script = tmp_path/'ddp_train.py'
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT/'tests'), weights=WEIGHTS))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', 'CUDA_VISIBLE_DEVICES': ''}
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--config_file', str(ROOT/'configs'/'accelerate_ddp_cpu.yaml'),
           '--main_process_port', str(free_port()), str(script), str(tmp_path/'ddp.json')]  # not 29500: another run may hold it
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    ddp = json.loads((tmp_path/'ddp.json').read_text())
    assert (ddp['world'], ddp['backend']) == (2, 'gloo')
    for loss in ('savage', 'drdpo'):
        r = tiny_train(word_pairs(8, WEIGHTS), loss=loss, weighting='weight', batch_size=8, gradient_accumulation_steps=1,
                       max_steps=2, lr=1e-2, trl_args={'max_grad_norm': 0.0})
        one = {n: p.detach().flatten() for n, p in r.model.named_parameters() if p.requires_grad}
        print(f'{loss}: 1 process {r.losses}, 2 processes {ddp[loss]["losses"]}')
        assert all(abs(a - b) <= 1e-5 for a, b in zip(r.losses, ddp[loss]['losses'])) and len(r.losses) == 2
        assert sorted(one) == sorted(ddp[loss]['adapter'])
        # float32 sums in another order (2 ranks x 2 micro-batches against one batch of 8) moved the trained adapter by
        # 1.3e-5 on an AVX-512/AMX CPU (0 with the kernels held to AVX2); weights normalised per rank move it by 3e-2
        assert max((one[n] - torch.tensor(v)).abs().max().item() for n, v in ddp[loss]['adapter'].items()) <= 1e-4
    # β-DPO: each micro-step of 2 ranks x 2 pairs is one process's micro-batch of 4, so the β of the mean over both ranks'
    # margins (and its running threshold) is one process's; a β per rank, from its own 2 pairs, moves the adapter
    r = tiny_train(word_pairs(8), loss='dpo', beta_schedule='beta_dpo', beta_schedule_kwargs={'alpha': 20.0, 'momentum': 0.5},
                   batch_size=4, gradient_accumulation_steps=2, max_steps=3, lr=5e-2, trl_args={'max_grad_norm': 0.0})
    one = {n: p.detach().flatten() for n, p in r.model.named_parameters() if p.requires_grad}
    gap = max((one[n] - torch.tensor(v)).abs().max().item() for n, v in ddp['beta_dpo']['adapter'].items())
    print(f'beta_dpo: 1 process {r.losses}, 2 processes {ddp["beta_dpo"]["losses"]}, adapter gap {gap:.2e}')
    assert all(abs(a - b) <= 1e-5 for a, b in zip(r.losses, ddp['beta_dpo']['losses'])) and gap <= 1e-4
