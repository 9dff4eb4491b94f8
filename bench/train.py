"""Manual benchmark: `pulse_nb.train` (PulseDPOTrainer, loss='dpo') against stock TRL DPOTrainer (loss_type=['sigmoid']).

Same data, same seed, same DPOConfig, one process. Prints the step-time ratio (pulse / stock; target <= 1.0), the
largest absolute difference between the two loss curves (target <= 1e-5), and the peak RSS of a LoRA run of
`train(...)` on the embedded model, measured in a fresh child process (target <= 4 GiB).

    python bench/train.py                 # CPU: embedded SmolLM2-135M + LoRA, short conversational pairs
    python bench/train.py --steps 12      # more steps

The GPU benchmark (0.37B / 0.89B models, 512-token pairs, tokens/s and MFU) is bench/gpu_train.py.

Not part of CI. Step times on a shared CPU are noisy; the two trainers are run alternately (stock, pulse, stock,
pulse) and the median step time of each is compared. A second, finer measure alternates single forward+backward
passes of the two trainers on the same batch (A B B A ...), so that load from other processes hits both alike.
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time

from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from datasets import Dataset
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    "Wall time of each optimizer step (synchronising the GPU when there is one)."
    def __init__(self): self.times = []
    def _sync(self):
        if torch.cuda.is_available(): torch.cuda.synchronize()
    def on_step_begin(self, *a, **k): self._sync(); self.t = time.perf_counter()
    def on_step_end(self, *a, **k): self._sync(); self.times.append(time.perf_counter() - self.t)


def cpu_pairs(n=32):
    qs = ['capital of France', 'largest planet', 'author of Hamlet', 'square root of 81', 'chemical symbol of gold',
          'first month of the year', 'number of legs of a spider', 'boiling point of water in C']
    good = ['Paris', 'Jupiter', 'Shakespeare', '9', 'Au', 'January', '8', '100']
    bad = ['Rome', 'Mars', 'Dickens', '7', 'Ag', 'March', '6', '50']
    return Dataset.from_list([{'prompt': [{'role': 'user', 'content': f'What is the {qs[i % 8]}? (#{i})'}],
                               'chosen': [{'role': 'assistant', 'content': f'The {qs[i % 8]} is {good[i % 8]}.'}],
                               'rejected': [{'role': 'assistant', 'content': f'I think the {qs[i % 8]} is {bad[i % 8]}.'}]}
                              for i in range(n)])


def run(kind, ds, tok, make_model, steps, out):
    from peft import LoraConfig
    from trl import DPOTrainer
    from pulse_nb.train import PulseDPOTrainer, TrainConfig, dpo_config
    args = dpo_config(out, TrainConfig(max_steps=steps, seed=0, batch_size=4, max_length=128), progress=False,
                      loss_type=['sigmoid'])
    timer = StepTimer()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules='all-linear', task_type='CAUSAL_LM')
    kw = dict(args=args, train_dataset=ds, processing_class=tok, peft_config=lora, callbacks=[timer])
    tr = DPOTrainer(make_model(), **kw) if kind == 'stock' else PulseDPOTrainer(make_model(), loss='dpo', **kw)
    tr.train()
    losses = [h['loss'] for h in tr.state.log_history if 'loss' in h]
    del tr
    return timer.times, losses


def interleaved(ds, tok, make_model, reps):
    """Forward + backward of one batch (`Trainer.training_step`) by stock and by pulse, alternating A B B A ..., `reps`
    times each: a shared, busy CPU slows both alike, so the ratio of the medians isolates the trainers' own cost."""
    from peft import LoraConfig
    from trl import DPOTrainer
    from pulse_nb.train import PulseDPOTrainer, TrainConfig, dpo_config
    trainers = {}
    for kind in ('stock', 'pulse'):
        args = dpo_config(tempfile.mkdtemp(), TrainConfig(seed=0, batch_size=4, max_length=128), progress=False, loss_type=['sigmoid'])
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules='all-linear', task_type='CAUSAL_LM')
        kw = dict(args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
        tr = DPOTrainer(make_model(), **kw) if kind == 'stock' else PulseDPOTrainer(make_model(), loss='dpo', **kw)
        tr.current_gradient_accumulation_steps = 1
        trainers[kind] = tr, tr._prepare_inputs(tr.data_collator([tr.train_dataset[i] for i in range(4)]))
    times, losses = {'stock': [], 'pulse': []}, {'stock': [], 'pulse': []}
    for r in range(reps + 1):
        for kind in (('stock', 'pulse') if r % 2 == 0 else ('pulse', 'stock')):
            tr, batch = trainers[kind]
            t0 = time.perf_counter(); loss = tr.training_step(tr.model, batch); dt = time.perf_counter() - t0
            tr.model.zero_grad()
            if r: times[kind].append(dt); losses[kind].append(loss.item())   # round 0 warms up
    return times, losses


def rss_child(steps, kind):
    "Child process: one LoRA run on the embedded model (`train(...)`, or `run('stock'|'pulse', ...)`); prints its peak RSS."
    torch.set_num_threads(1)
    if kind == 'train':
        from pulse_nb.train import train
        train(cpu_pairs(16), loss='savage', lora=True, max_steps=steps, batch_size=4, max_length=128,
              out_dir=tempfile.mkdtemp(), progress=False)
    else:
        from pulse_nb.models import load_model, load_tokenizer
        run(kind, cpu_pairs(4 * steps), load_tokenizer(), load_model, steps, tempfile.mkdtemp())
    print(json.dumps({'peak_rss_gib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def child_rss(steps, kind):
    out = subprocess.run([sys.executable, __file__, '--rss-child', kind, '--steps', str(steps)], capture_output=True, text=True)
    line = [l for l in out.stdout.splitlines() if l.startswith('{')]
    return json.loads(line[-1])['peak_rss_gib'] if line else float('nan')


def tokens_per_pass(ds, tok, max_length):
    "Tokens the model sees in one pass over `ds` (prompt+chosen and prompt+rejected, chat-templated, truncated)."
    n = 0
    for r in ds:
        for side in ('chosen', 'rejected'):
            if isinstance(r['prompt'], list):
                ids = tok.apply_chat_template(r['prompt'] + r[side], tokenize=True)
                ids = ids if isinstance(ids, list) else ids['input_ids']  # transformers 5 returns a BatchEncoding (not a dict)
            else: ids = tok(r['prompt'] + r[side])['input_ids']
            n += min(len(ids), max_length)
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=8, help='optimizer steps per run')
    ap.add_argument('--rounds', type=int, default=2, help='alternating stock/pulse rounds')
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    ap.add_argument('--interleaved', type=int, default=10, help='alternating forward+backward timings per trainer')
    ap.add_argument('--no-rss', action='store_true', help='skip the peak-RSS child runs')
    ap.add_argument('--rss-child', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--gpu', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.gpu: sys.exit('bench/train.py: the GPU benchmark is bench/gpu_train.py (stock TRL vs pulse, tokens/s and MFU)')
    if a.rss_child: return rss_child(a.steps, a.rss_child)
    torch.set_num_threads(a.threads)
    from pulse_nb.models import load_model, load_tokenizer
    ds, tok, make_model = cpu_pairs(4 * a.steps), load_tokenizer(), load_model
    times, curves = {'stock': [], 'pulse': []}, {}
    for r in range(a.rounds):
        for kind in ('stock', 'pulse'):
            t, losses = run(kind, ds, tok, make_model, a.steps, tempfile.mkdtemp())
            times[kind] += t[1:]                      # drop each run's first (warm-up) step
            if kind in curves: assert curves[kind] == losses, f'{kind} is not deterministic across rounds'
            curves[kind] = losses
            print(f'round {r} {kind:5s}: median step {statistics.median(t[1:]):.3f} s, losses {[round(x, 6) for x in losses]}', flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = max(abs(x - y) for x, y in zip(curves['stock'], curves['pulse']))
    print(f"\nstep time  stock {med['stock']:.3f} s   pulse {med['pulse']:.3f} s   ratio pulse/stock {med['pulse'] / med['stock']:.3f} (target <= 1.0)")
    print(f'loss curve max |pulse - stock| = {diff:.2e} over {len(curves["stock"])} steps (target <= 1e-5)')
    it, il = interleaved(ds, tok, make_model, a.interleaved)
    imed = {k: statistics.median(v) for k, v in it.items()}
    idiff = max(abs(x - y) for x, y in zip(il['stock'], il['pulse']))
    print(f"interleaved forward+backward ({a.interleaved} each, A B B A ...): stock {imed['stock']:.3f} s   pulse {imed['pulse']:.3f} s   "
          f"ratio pulse/stock {imed['pulse'] / imed['stock']:.3f}; max |loss difference| {idiff:.1e}")
    tok_step = tokens_per_pass(ds, tok, 128) / a.steps  # every run makes one pass over ds
    res = {'bench': 'train', 'device': 'cpu', 'steps': a.steps, 'rounds': a.rounds, 'threads': a.threads,
           'step_s': {k: round(v, 4) for k, v in med.items()}, 'ratio_pulse_over_stock': round(med['pulse'] / med['stock'], 3),
           'tok_per_s': {k: round(tok_step / v, 1) for k, v in med.items()}, 'loss_curve_max_abs_diff': diff,
           'interleaved_step_s': {k: round(v, 4) for k, v in imed.items()}, 'interleaved_n': a.interleaved,
           'interleaved_ratio': round(imed['pulse'] / imed['stock'], 3), 'interleaved_loss_max_abs_diff': idiff}
    if not a.no_rss:
        rss = {k: child_rss(3, k) for k in ('stock', 'pulse', 'train')}
        print(f"peak RSS (LoRA, embedded model, 3 steps): stock {rss['stock']:.2f} GiB, pulse {rss['pulse']:.2f} GiB, "
              f"train() {rss['train']:.2f} GiB (target <= 4 GiB)")
        res['peak_rss_gib'] = {k: round(v, 2) for k, v in rss.items()}
    print('RESULT ' + json.dumps(res))


if __name__ == '__main__':
    main()
