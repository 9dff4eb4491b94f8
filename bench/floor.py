"""Decode against the memory floor: each engine's time per decode step, as a ratio to what reading the weights and the
KV cache once costs on this machine.

    python bench/floor.py [--models qwen2.5-coder-0.5b-instruct] [--batches 1,8,32,64,128] [--dtypes bfloat16,float32]
                          [--engines hf,vllm] [--answer 512] [--steps 16] [--vllm-memory 0.5]

On a CPU a decode step reads every weight once (and each row's KV cache), so its floor is
`(weight bytes + KV bytes) / read bandwidth`. Measured here, in one run:

- **read bandwidth**: the best of 5 sums over a 1 GiB float32 tensor (torch, all threads);
- **context**: the mean GSM8K held-out prompt (chat template, in tokens) plus half the answer budget, the mean context
  of a step while `--answer` tokens are decoded;
- **linears**: every `nn.Linear` of the model (and the tied output head) run alone as one matrix product at the batch,
  summed: what the products cost with torch's kernels, the compute side of the floor;
- **hf**: the engine's own `generate` (the loaded model, its attention and weight-major choice) from a KV cache that
  already holds the context, `min_new_tokens` forcing every row on: `(t(4 + steps) - t(4)) / steps`;
- **vllm**: `vllm.LLM.generate` on distinct prompts of the context's length, `ignore_eos`, prefixes cached by a first
  call, `(t(4 + steps) - t(4)) / steps`.

Prints a markdown table and writes `bench/floor.json`. Not run in CI (minutes per model)."""
import argparse, gc, json, os, platform, time
from pathlib import Path


def read_bandwidth(gib: float=1.0, reps: int=5) -> float:
    "Bytes per second a plain read (a sum) of a large float32 tensor reaches: the best of `reps`."
    import torch
    x = torch.ones(int(gib * 2**30) // 4)
    best = min(_timed(lambda: x.sum()) for _ in range(reps))
    return x.numel() * 4 / best


def _timed(f) -> float:
    t = time.perf_counter(); f(); return time.perf_counter() - t


def mean_prompt_tokens(tok, n: int=100) -> float:
    "Mean length, in tokens, of the first `n` held-out GSM8K prompts as the engines render them."
    from pulse_nb.benchsets import bench_prompts
    from pulse_nb.engines import render_ids
    items = bench_prompts('gsm8k', split='heldout', limit=n)
    ids = render_ids(tok, [[{'role': 'user', 'content': it['prompt']}] for it in items])
    return sum(map(len, ids)) / len(ids)


def model_bytes(lm) -> int:
    """Bytes a decode step reads of the weights: every parameter once, except an input embedding that is not also the
    output head (a step looks up only its rows' tokens there)."""
    n = sum(p.numel() * p.element_size() for p in lm.parameters())
    emb = lm.get_input_embeddings().weight
    return n - (0 if lm.config.tie_word_embeddings else emb.numel() * emb.element_size())


def kv_bytes(cfg, context: int, batch: int, element: int) -> int:
    "Bytes of keys and values a step reads at `context` tokens for `batch` rows."
    head = getattr(cfg, 'head_dim', None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head * context * batch * element


def linears_seconds(lm, batch: int, reps: int=3) -> float:
    "Every linear layer (and the output head) as one product at `batch` rows, summed: best of `reps`."
    import torch
    mods = [m for m in lm.modules() if isinstance(m, torch.nn.Linear)]
    if lm.config.tie_word_embeddings and not any(m is lm.get_output_embeddings() for m in mods): mods.append(lm.get_output_embeddings())
    xs = {m.in_features: torch.randn(batch, m.in_features, dtype=lm.dtype) for m in mods}
    with torch.no_grad():
        run = lambda: [torch.nn.functional.linear(xs[m.in_features], m.weight) for m in mods]
        run()
        return min(_timed(run) for _ in range(reps))


def hf_step(engine, context: int, batch: int, steps: int) -> float:
    "Seconds per decode step of `engine.lm.generate` at `batch` rows whose cache already holds `context - 1` tokens."
    import torch
    from pulse_nb.engine_hf import prefill_prefixes
    ids = (list(range(1000, 1000 + context)))
    def run(n):
        _, _, cache = prefill_prefixes(engine.lm, [ids[:-1]], engine.tok.pad_token_id)
        cache.batch_repeat_interleave(batch)
        x = torch.tensor([ids] * batch)
        t = time.perf_counter()
        with torch.no_grad():
            engine.lm.generate(input_ids=x, attention_mask=torch.ones_like(x), past_key_values=cache, max_new_tokens=n,
                               min_new_tokens=n, do_sample=False, pad_token_id=engine.tok.pad_token_id, top_k=None)
        return time.perf_counter() - t
    run(2)
    return (run(4 + steps) - run(4)) / steps


def vllm_step(llm, context: int, batch: int, steps: int) -> float:
    "Seconds per decode step of `vllm.LLM.generate` on `batch` distinct prompts of `context` tokens."
    from vllm import SamplingParams
    prompts = [{'prompt_token_ids': [1000 + b] + list(range(2000, 2000 + context - 1))} for b in range(batch)]
    def run(n):
        p = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0)
        t = time.perf_counter(); llm.generate(prompts, p, use_tqdm=False); return time.perf_counter() - t
    run(1)  # reads every prompt into the prefix cache: the timed calls prefill alike
    return (run(4 + steps) - run(4)) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--batches', default='1,8,32,64,128')
    ap.add_argument('--dtypes', default='bfloat16,float32')
    ap.add_argument('--engines', default='hf,vllm')
    ap.add_argument('--answer', type=int, default=512, help='answer budget: steps are timed at the prompt + half of it')
    ap.add_argument('--steps', type=int, default=16, help='decode steps timed per configuration')
    ap.add_argument('--out', default=str(Path(__file__).with_name('floor.json')))
    ap.add_argument('--vllm-memory', type=float, default=None, help="vLLM's gpu_memory_utilization (default: the engine's, 0.3 on CPU)")
    a = ap.parse_args()
    os.environ.setdefault('VLLM_ENABLE_V1_MULTIPROCESSING', '0')
    import torch
    from pulse_nb.engines import cpu_flags, cpu_model
    flags = sorted(f for f in cpu_flags() if f in {'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'})
    bw = read_bandwidth()
    res = {'cpu': cpu_model(), 'flags': flags, 'cores': os.cpu_count(), 'threads': torch.get_num_threads(),
           'torch': torch.__version__, 'read_gb_s': round(bw / 1e9, 1), 'answer': a.answer, 'steps': a.steps, 'rows': []}
    print(f"{res['cpu']}, {res['cores']} cores, flags {' '.join(flags)}, read {res['read_gb_s']} GB/s", flush=True)
    batches = [int(b) for b in a.batches.split(',')]
    for model in a.models.split(','):
        for dtype in a.dtypes.split(','):
            from pulse_nb.engine_hf import HFEngine
            hf = HFEngine(model, dtype=dtype, batch_size=max(batches))
            context = round(mean_prompt_tokens(hf.tok) + a.answer / 2)
            wbytes, el = model_bytes(hf.lm), torch.tensor([], dtype=hf.lm.dtype).element_size()
            rows = {b: {'model': model, 'dtype': dtype, 'batch': b, 'context': context, 'weight_gb': round(wbytes / 1e9, 3),
                        'kv_gb': round(kv_bytes(hf.lm.config, context, b, el) / 1e9, 3)} for b in batches}
            for b, r in rows.items():
                r['floor_ms'] = round((wbytes + kv_bytes(hf.lm.config, context, b, el)) / bw * 1e3, 1)
                r['linears_ms'] = round(linears_seconds(hf.lm, b) * 1e3, 1)
                if 'hf' in a.engines:
                    r['hf_ms'] = round(hf_step(hf, context, b, a.steps) * 1e3, 1)
                    r['hf_ratio'] = round(r['hf_ms'] / r['floor_ms'], 2)
                print(json.dumps(r), flush=True)
            Path(a.out).write_text(json.dumps(dict(res, rows=res['rows'] + list(rows.values())), indent=1))  # kept if vLLM fails
            hf.close(); del hf; gc.collect()
            if 'vllm' in a.engines:
                from pulse_nb.engine_vllm import VLLMEngine
                v = VLLMEngine(model, dtype=dtype, max_model_len=context + a.answer + 8, gpu_memory_utilization=a.vllm_memory)
                for b, r in rows.items():
                    r['vllm_ms'] = round(vllm_step(v.llm, context, b, a.steps) * 1e3, 1)
                    r['vllm_ratio'] = round(r['vllm_ms'] / r['floor_ms'], 2)
                    print(json.dumps(r), flush=True)
                v.close(); del v; gc.collect()
            res['rows'] += rows.values()
            Path(a.out).write_text(json.dumps(res, indent=1))
    cols = ['model', 'dtype', 'batch', 'context', 'weight_gb', 'kv_gb', 'floor_ms', 'linears_ms', 'hf_ms', 'hf_ratio',
            'vllm_ms', 'vllm_ratio']
    print('\n| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))
    for r in res['rows']: print('| ' + ' | '.join(str(r.get(c, '')) for c in cols) + ' |')


if __name__ == '__main__':
    main()
