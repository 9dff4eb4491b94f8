"""GPU training benchmark: stock TRL `DPOTrainer` against the pulse trainer, on the same synthetic pairs and models, in
one process (issue 21.4; `shared/gpu-notes.md` has stock TRL's H100 figures and the FLOP formulas).

Shapes: random-init Llama-style models built from a config (`small`: 0.374B, hidden 1024, 24 layers, MLP 2816;
`large`: 0.886B, hidden 2048, 18 layers, MLP 4096; vocabulary 32000), a WordLevel tokenizer built in memory, pairs of
exactly 512 tokens (128 prompt + 383 completion + EOS), batch 8 pairs (8192 tokens per step), bf16 weights and
autocast, fused AdamW, no gradient checkpointing. Step time: the mean over the steps after `--warmup`, timed with one
GPU sync at each end of the window (a per-step sync would add the very stalls being measured).

The pulse trainer runs with its speed work (`pulse_nb.train.make_trainer`'s defaults): metrics kept on the device and
read once per logging step (stock TRL reads about 13 values per micro-batch), LoRA adapters in bf16 like the base
(PEFT keeps them in fp32), liger-kernel's fused RMSNorm and SwiGLU when liger-kernel is installed, and, as its own
row, reference log-probs precomputed before training. Stock TRL runs as shipped (TRL's DPOConfig defaults), with the
same shapes, batch, optimizer, precision and logging interval. Both compute the DPO sigmoid loss.

MFU = tokens/s x FLOPs per token / peak. FLOPs per non-pad token: 8N full fine-tuning (policy forward and backward
6N, reference forward 2N), 6N LoRA (4N + 2N), 6N full with precomputed reference log-probs, 4N LoRA with them; N is
the parameter count without the input embedding. Peak: 989 TFLOP/s (H100/H200 dense bf16) and 800 (the measured 8192^3
bf16 matmul). Targets on an H100/H200: pulse >= 1.5x stock tokens/s at 0.89B full fine-tuning, >= 2x at 0.37B, and
pulse LoRA at least as fast as pulse full fine-tuning.

    python bench/gpu_train.py                  # on a GPU: both sizes, full and LoRA (10 runs, a few minutes)
    python bench/gpu_train.py --sizes small --modes full --steps 30
    python bench/gpu_train.py --toy            # anywhere, CPU included: a toy model, a few steps, and the GPU plan

`--toy` runs the same code at toy size (CI runs it, so it cannot rot) and prints what the full run would measure.
The last line is `RESULT {json}`.
"""
import argparse, copy, importlib.util, json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

VOCAB = 32000
SIZES = {  # name: LlamaConfig fields (params: total, and N without the input embedding)
    'small': dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16),
    'large': dict(hidden_size=2048, intermediate_size=4096, num_hidden_layers=18, num_attention_heads=16, num_key_value_heads=16),
    'toy': dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
}
GPU_SHAPES = dict(prompt=128, completion=383, batch=8, vocab=VOCAB)
TOY_SHAPES = dict(prompt=8, completion=7, batch=2, vocab=256)
PEAKS = {'989': 989e12, '800': 800e12}


def tokenizer(vocab):
    "A WordLevel tokenizer over `vocab` words w0, w1, ... built in memory (one word, one token; 0 pads, 1 ends)."
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ['<pad>', '</s>', *(f'w{i}' for i in range(vocab - 2))]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<pad>'))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>', eos_token='</s>')


def synthetic_pairs(n, prompt, completion, vocab, seed=0):
    "`n` pairs of random words: every prompt `prompt` tokens, every answer `completion` tokens (+ EOS, added by TRL)."
    g = torch.Generator().manual_seed(seed)
    rnd = lambda k: ' '.join(f'w{j}' for j in torch.randint(0, vocab - 2, (k,), generator=g).tolist())
    return Dataset.from_list([{'prompt': rnd(prompt), 'chosen': ' ' + rnd(completion), 'rejected': ' ' + rnd(completion)}
                              for _ in range(n)])


def model_config(size, vocab):
    return LlamaConfig(vocab_size=vocab, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                       **SIZES[size])


def build_model(size, vocab, device, dtype):
    "A random-init Llama of `size` (seed 0: the same weights for every run)."
    torch.manual_seed(0)
    with torch.device(device): m = LlamaForCausalLM(model_config(size, vocab))
    return m.to(dtype)


def n_params(size, vocab):
    "Total parameters, and N: without the input embedding (what the FLOP formulas count)."
    with torch.device('meta'): m = LlamaForCausalLM(model_config(size, vocab))
    total = sum(p.numel() for p in m.parameters())
    return total, total - m.get_input_embeddings().weight.numel()


def flops_per_token(n, mode, precompute):
    "8N full, 6N LoRA; 2N less with precomputed reference log-probs."
    return (6 if mode == 'full' else 4) * n + (0 if precompute else 2) * n


class WindowTimer(TrainerCallback):
    "Wall time of the steps after `warmup`, with one device sync at each end of the window."
    def __init__(self, warmup): self.warmup, self.t0, self.t1, self.steps = warmup, None, None, 0
    def _sync(self):
        if torch.cuda.is_available(): torch.cuda.synchronize()
    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.warmup: self._sync(); self.t0 = time.perf_counter()
    def on_train_end(self, args, state, control, **kw):
        self._sync(); self.t1 = time.perf_counter(); self.steps = state.global_step - self.warmup
    @property
    def step_s(self): return (self.t1 - self.t0) / self.steps if self.t0 is not None and self.steps > 0 else float('nan')


def run(kind, mode, size, precompute, a, shapes, device, dtype, out):
    "One training run; its step time, losses and peak memory."
    from peft import LoraConfig
    from trl import DPOTrainer
    from pulse_nb.train import TrainConfig, dpo_config, make_trainer, prepare_pairs
    tok = tokenizer(shapes['vocab'])
    ds = synthetic_pairs(shapes['batch'] * a.steps, shapes['prompt'], shapes['completion'], shapes['vocab'])
    cfg = TrainConfig(loss='dpo', lora=mode == 'lora', lora_r=16, batch_size=shapes['batch'], max_steps=a.steps,
                      max_length=shapes['prompt'] + shapes['completion'] + 1, lr=1e-5 if mode == 'full' else 1e-4,
                      bf16=dtype == torch.bfloat16, precompute_ref_logps=precompute, logging_steps=a.logging_steps)
    timer, model = WindowTimer(a.warmup), build_model(size, shapes['vocab'], device, dtype)
    if torch.cuda.is_available(): torch.cuda.reset_peak_memory_stats()
    if kind == 'pulse':
        pairs, _ = prepare_pairs(ds, cfg)
        tr = make_trainer(pairs, model, tok, cfg, out, progress=False, callbacks=[timer])
    else:  # stock TRL as shipped; a config-built model needs its reference passed in (TRL would reload it by name)
        args = dpo_config(out, cfg, bf16=cfg.bf16, progress=False, loss_type=['sigmoid'], logging_nan_inf_filter=True)
        ref = None if mode == 'lora' or precompute else copy.deepcopy(model).eval().requires_grad_(False)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules='all-linear', task_type='CAUSAL_LM')
        tr = DPOTrainer(model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer],
                        peft_config=lora if mode == 'lora' else None)
    tr.train()
    losses = [h['loss'] for h in tr.state.log_history if 'loss' in h]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float('nan')
    del tr, model
    if torch.cuda.is_available(): torch.cuda.empty_cache()
    return dict(step_s=timer.step_s, losses=losses, peak_gib=peak)


def plan(a, shapes):
    "The runs: per size and mode, stock and pulse (and pulse with precomputed reference log-probs for full fine-tuning)."
    runs = []
    for size in a.sizes:
        for mode in a.modes:
            runs += [('stock', mode, size, False), ('pulse', mode, size, False)]
            if mode == 'full': runs.append(('pulse', mode, size, True))
    return runs


def describe_gpu_run(a):
    "What the full GPU run measures (printed by --toy, which cannot measure it)."
    lines = ['On a GPU this benchmark measures (per row: step s, tokens/s, MFU vs 989 and 800 TFLOP/s, peak GiB):']
    for size in ('small', 'large'):
        total, n = n_params(size, VOCAB)
        for mode in ('full', 'lora'):
            for pre in ((False, True) if mode == 'full' else (False,)):
                f = flops_per_token(n, mode, pre)
                lines.append(f'  {size:5s} {total / 1e9:.3f}B (N {n / 1e9:.3f}B)  {mode:4s}{" +precomputed ref" if pre else "":17s}'
                             f'  {f / 1e9:.2f} GFLOP/token; 8192 tokens/step at 50% MFU = {8192 * f / (0.5 * 989e12):.3f} s/step')
    lines.append('  stock TRL rows for each size and mode, then the ratios pulse/stock tokens/s '
                 '(targets: >= 2x small full, >= 1.5x large full; pulse LoRA >= pulse full)')
    return '\n'.join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--toy', action='store_true', help='toy model and shapes, a few steps; runs on CPU (CI)')
    ap.add_argument('--sizes', default='small,large', help='comma-separated: small, large')
    ap.add_argument('--modes', default='full,lora', help='comma-separated: full, lora')
    ap.add_argument('--steps', type=int, default=40, help='optimizer steps per run')
    ap.add_argument('--warmup', type=int, default=5, help='steps left out of the timing')
    ap.add_argument('--logging-steps', type=int, default=10, help='logging interval (both trainers)')
    a = ap.parse_args(argv)
    a.sizes, a.modes = a.sizes.split(','), a.modes.split(',')
    gpu = torch.cuda.is_available()
    if a.toy:
        a.sizes, a.steps, a.warmup, a.logging_steps = ['toy'], min(a.steps, 4), 1, 1
        shapes = TOY_SHAPES
        torch.set_num_threads(1)
    else:
        if not gpu: sys.exit('bench/gpu_train.py: no GPU here; run with --toy (it prints what the GPU run would measure)')
        shapes = GPU_SHAPES
    device, dtype = ('cuda' if gpu else 'cpu'), torch.bfloat16
    tokens_step = shapes['batch'] * 2 * (shapes['prompt'] + shapes['completion'] + 1)
    print(f'device: {torch.cuda.get_device_name() if gpu else "cpu"}; torch {torch.__version__}; '
          f'liger-kernel: {"yes" if importlib.util.find_spec("liger_kernel") else "no"}; '
          f'{tokens_step} tokens/step; {a.steps} steps, timed after {a.warmup}', flush=True)
    rows = []
    for kind, mode, size, pre in plan(a, shapes):
        r = run(kind, mode, size, pre, a, shapes, device, dtype, tempfile.mkdtemp(prefix='gpu-train-'))
        total, n = n_params(size, shapes['vocab'])
        tps = tokens_step / r['step_s']
        mfu = {k: tps * flops_per_token(n, mode, pre) / p for k, p in PEAKS.items()} if gpu else {k: None for k in PEAKS}
        row = dict(trainer=kind + (' +precomputed ref' if pre else ''), size=size, params_b=round(total / 1e9, 3), mode=mode,
                   step_s=round(r['step_s'], 4), tokens_per_s=round(tps, 1), mfu_989=mfu['989'], mfu_800=mfu['800'],
                   peak_gib=round(r['peak_gib'], 1) if gpu else None, losses=[round(x, 5) for x in r['losses']])
        rows.append(row)
        fm = lambda x: f'{100 * x:5.1f}%' if x is not None else '   n/a'
        print(f"{size:5s} {mode:4s} {row['trainer']:24s} step {row['step_s']:.4f} s  {tps:10.1f} tok/s  "
              f"MFU {fm(mfu['989'])} (989) {fm(mfu['800'])} (800)  peak {row['peak_gib'] if gpu else 'n/a'} GiB", flush=True)
    ratios = {}
    for size in a.sizes:
        for mode in a.modes:
            get = lambda t: next(r for r in rows if r['size'] == size and r['mode'] == mode and r['trainer'] == t)
            s, p = get('stock'), get('pulse')
            ratios[f'{size}/{mode}'] = round(p['tokens_per_s'] / s['tokens_per_s'], 3)
            diff = max(abs(x - y) for x, y in zip(s['losses'], p['losses'])) if s['losses'] else float('nan')
            print(f'{size} {mode}: pulse/stock tokens/s {ratios[f"{size}/{mode}"]:.3f}; max |loss difference| {diff:.2e} over {len(s["losses"])} logged steps')
    if not gpu: print(describe_gpu_run(a))
    print('RESULT ' + json.dumps({'bench': 'gpu_train', 'device': 'gpu' if gpu else 'cpu', 'toy': a.toy, 'steps': a.steps,
                                  'warmup': a.warmup, 'tokens_per_step': tokens_step, 'rows': rows, 'ratios': ratios}))


if __name__ == '__main__':
    main()
