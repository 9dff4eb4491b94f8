"""Engine throughput on this machine: the same chat prompts through HFEngine, VLLMEngine, raw `vllm.LLM.chat`, and a
naive one-prompt-at-a-time transformers loop (on a subset, compared per generated token).

    python bench/engines.py [--n 256] [--max-new-tokens 64] [--naive 16] [--skip-vllm]

Greedy decoding, so every engine does the same work. Prints tokens/s, start-up times, the ratios, and the CPU features
that explain them (the vLLM CPU build is fast only with avx512_bf16 / amx_bf16). Not run in CI."""
import argparse, json, os, platform, time

TOPICS = ['the sea', 'bread', 'volcanoes', 'chess', 'bicycles', 'the moon', 'bees', 'rain', 'libraries', 'trains',
          'coffee', 'glaciers', 'music', 'gardens', 'maps', 'clocks']
ASKS = ['Explain {} in two sentences.', 'Give one surprising fact about {}.', 'Write a short poem about {}.',
        'What should a child know about {}?', 'List three words related to {}.', 'Why do people like {}?',
        'Describe {} to someone who has never seen it.', 'Tell a very short story about {}.',
        'What is the history of {} in one paragraph?', 'Give a tip about {}.', 'Is {} important? Answer briefly.',
        'Compare {} with something else.', 'Write a riddle about {}.', 'What is a common mistake about {}?',
        'Summarise {} in one line.', 'Ask me a question about {}.']


def prompts(n):
    "n distinct single-turn chats."
    return [[{'role': 'user', 'content': ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)])}]
            for i in range(n)]


def cpu_summary():
    from pulse_nb.engines import cpu_flags
    import torch
    f = cpu_flags()
    keys = ['avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile']
    return (f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, '
            + ', '.join(f'{k}={"yes" if k in f else "no"}' for k in keys))


def timed(fn):
    t = time.perf_counter(); r = fn(); return r, time.perf_counter() - t


def naive_loop(model_ref, convs, max_new_tokens):
    "One prompt at a time with plain transformers: what a simple script does."
    import torch
    from pulse_nb.models import load_model, load_tokenizer
    tok, model = load_tokenizer(model_ref), load_model(model_ref)
    toks = 0
    for c in convs:
        enc = tok.apply_chat_template(c, add_generation_prompt=True, return_tensors='pt', return_dict=True)
        with torch.no_grad(): out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        toks += out.shape[1] - enc['input_ids'].shape[1]
    return toks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=256)
    ap.add_argument('--max-new-tokens', type=int, default=64)
    ap.add_argument('--naive', type=int, default=16, help='prompts for the one-at-a-time loop')
    ap.add_argument('--batch-size', type=int, default=64, help='HFEngine batch size')
    ap.add_argument('--model', default=None)
    ap.add_argument('--skip-vllm', action='store_true')
    ap.add_argument('--threads', type=int, default=None, help='torch threads for the transformers runs (default: torch\'s)')
    a = ap.parse_args()
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    os.environ.setdefault('VLLM_ENABLE_V1_MULTIPROCESSING', '0')
    from pulse_nb.engine_hf import HFEngine
    from pulse_nb.engine_vllm import VLLMEngine
    from pulse_nb.engines import SamplingConfig, choose_backend
    convs, sc = prompts(a.n), SamplingConfig(temperature=0, max_new_tokens=a.max_new_tokens)
    ntok = lambda gens: sum(c.n_tokens for g in gens for c in g.completions)
    print('CPU:', cpu_summary())
    print('auto picks:', choose_backend())
    rows = {}

    hf, t_start = timed(lambda: HFEngine(a.model, batch_size=a.batch_size))
    attention = hf.lm.config._attn_implementation
    gens, dt = timed(lambda: hf.generate(convs, sc, progress=True))
    rows['HFEngine'] = (ntok(gens) / dt, ntok(gens), dt, t_start)
    hf.close()
    if attention != 'sdpa':  # the same engine on transformers' stock attention, to show what `cpu_gqa` buys
        hf, t_start = timed(lambda: HFEngine(a.model, batch_size=a.batch_size, cpu_gqa=False))
        stock, dt = timed(lambda: hf.generate(convs, sc, progress=True))
        rows['HFEngine (cpu_gqa=False)'] = (ntok(stock) / dt, ntok(stock), dt, t_start)
        same = sum(x.completions[0].text == y.completions[0].text for x, y in zip(gens, stock))
        print(f'HFEngine attention {attention}: {same}/{len(gens)} completions identical to stock sdpa')
        hf.close()

    toks, dt = timed(lambda: naive_loop(a.model, convs[:a.naive], a.max_new_tokens))
    rows[f'naive loop ({a.naive} prompts)'] = (toks / dt, toks, dt, None)

    if not a.skip_vllm:
        from vllm import SamplingParams
        v, t_start = timed(lambda: VLLMEngine(a.model))
        v.generate(convs[:4], sc)  # warm-up
        raw_params = SamplingParams(temperature=0, max_tokens=a.max_new_tokens, seed=0)
        for name in ['raw vllm.LLM.chat', 'VLLMEngine', 'raw vllm.LLM.chat (again)', 'VLLMEngine (again)']:
            v.llm.reset_prefix_cache()  # no run profits from the previous one's cache
            if name.startswith('VLLMEngine'):
                gens, dt = timed(lambda: v.generate(convs, sc))
                rows[name] = (ntok(gens) / dt, ntok(gens), dt, t_start)
            else:
                outs, dt = timed(lambda: v.llm.chat(convs, raw_params, use_tqdm=False))
                toks = sum(len(o.outputs[0].token_ids) for o in outs)
                rows[name] = (toks / dt, toks, dt, None)
        v.close()

    print(f'\n{a.n} prompts, greedy, max_new_tokens={a.max_new_tokens}')
    print(f'{"engine":32s} {"tok/s":>8s} {"tokens":>8s} {"gen s":>8s} {"start s":>8s}')
    for k, (tps, toks, dt, st) in rows.items():
        print(f'{k:32s} {tps:8.1f} {toks:8d} {dt:8.1f} {"" if st is None else f"{st:8.1f}"}')
    naive = rows[f'naive loop ({a.naive} prompts)'][0]
    print('\nratios (per generated token):')
    print(f'  HFEngine / naive loop        {rows["HFEngine"][0] / naive:6.2f}x  (attention: {attention})')
    if 'HFEngine (cpu_gqa=False)' in rows:
        print(f'  HFEngine / its stock-attention run {rows["HFEngine"][0] / rows["HFEngine (cpu_gqa=False)"][0]:6.2f}x')
    if not a.skip_vllm:
        raw = (rows['raw vllm.LLM.chat'][0] + rows['raw vllm.LLM.chat (again)'][0]) / 2
        eng = (rows['VLLMEngine'][0] + rows['VLLMEngine (again)'][0]) / 2
        print(f'  VLLMEngine / naive loop      {eng / naive:6.2f}x')
        print(f'  VLLMEngine / raw vLLM        {eng / raw:6.3f}  (means of two alternating runs each)')
        print(f'  VLLMEngine / HFEngine        {eng / rows["HFEngine"][0]:6.2f}x')
    res = {'bench': 'engines', 'cpu': cpu_summary(), 'n_prompts': a.n, 'max_new_tokens': a.max_new_tokens,
           'rows': {k: {'tok_per_s': round(v[0], 1), 'tokens': v[1], 'gen_s': round(v[2], 1),
                        'start_s': None if v[3] is None else round(v[3], 1)} for k, v in rows.items()},
           'hf_over_naive': round(rows['HFEngine'][0] / naive, 2), 'hf_attention': attention,
           'torch_threads': __import__('torch').get_num_threads()}
    if 'HFEngine (cpu_gqa=False)' in rows:
        res.update(hf_over_stock_attention=round(rows['HFEngine'][0] / rows['HFEngine (cpu_gqa=False)'][0], 2),
                   identical_to_stock=same)
    if not a.skip_vllm:
        res.update(vllm_over_naive=round(eng / naive, 2), vllmengine_over_raw=round(eng / raw, 3))
    print('RESULT ' + json.dumps(res))


if __name__ == '__main__':
    main()
