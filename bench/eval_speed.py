"""What faster decode steps buy: held-out GSM8K answers at 512 tokens on one loaded engine, side by side, with
finished rows leaving the batch every 64 tokens (`segments`, the engine's default), in one `generate` call per bucket
(`decode`), with PyTorch's flash kernel for the decode step in one call (`flash`, the engine before both), and on
vLLM's engine (`vllm`, where installed, and last: the transformers engine is closed first; its start-up timed
apart, `start_seconds`).

    python bench/eval_speed.py [--n 64] [--arms segments,decode,flash,vllm] [--batch-size 32] [--out FILE]

Greedy, the embedded actor in `fast_dtype()`. Prints and writes (`bench/eval_speed.json`) each arm's wall time, the
share of answers cut at the budget, the accuracy with its exact interval, and how many answers the two arms share."""
import argparse, json, time
from pathlib import Path


def flash_decode(query, key, value, attention_mask=None, scaling=None):
    "The decode step as before `decode_attention`: PyTorch's SDPA kernel with shared key/value heads."
    import torch
    m = None if attention_mask is None else attention_mask[:, :, -1:, :]
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=m, scale=scaling,
                                                            enable_gqa=True).transpose(1, 2).contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=64)
    ap.add_argument('--arms', default='segments,decode')
    ap.add_argument('--batch-size', type=int, default=32)  # the engine's default
    ap.add_argument('--max-new-tokens', type=int, default=512)
    ap.add_argument('--model', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--out', default=str(Path(__file__).with_name('eval_speed.json')))
    a = ap.parse_args()
    import pulse_nb.engine_hf as H
    from pulse_nb.benchsets import bench_prompts
    from pulse_nb.engines import SamplingConfig, fast_dtype, cpu_model
    from pulse_nb.evaluate import exact_ci
    from pulse_nb.graders import grade_number
    items = bench_prompts('gsm8k', split='heldout', limit=a.n)
    engine = H.HFEngine(a.model, dtype=fast_dtype(), batch_size=a.batch_size)
    convs = [[{'role': 'user', 'content': it['prompt']}] for it in items]
    impl = {'segments': (H.decode_attention, 64), 'decode': (H.decode_attention, None), 'flash': (flash_decode, None)}
    res = {'model': a.model, 'dtype': fast_dtype(), 'cpu': cpu_model(), 'n': len(items), 'batch_size': a.batch_size,
           'max_new_tokens': a.max_new_tokens, 'arms': {}}
    texts = {}
    for arm in a.arms.split(','):
        if arm == 'vllm':
            import gc, os
            os.environ.setdefault('VLLM_ENABLE_V1_MULTIPROCESSING', '0')
            from pulse_nb.engine_vllm import VLLMEngine
            engine.close(); gc.collect()
            t = time.time(); engine = VLLMEngine(a.model, dtype=fast_dtype(), max_model_len=1024)
            res['start_seconds'] = round(time.time() - t, 1)
        else: H.decode_attention, engine.segment = impl[arm]
        t = time.time()
        gens = engine.generate(convs, SamplingConfig(temperature=0, max_new_tokens=a.max_new_tokens), progress=True)
        secs = time.time() - t
        comps = [g.completions[0] for g in gens]
        right = sum(c.finish_reason == 'stop' and grade_number(c.text, it['answer']) for c, it in zip(comps, items))
        texts[arm] = [c.text for c in comps]
        res['arms'][arm] = {'seconds': round(secs, 1), 'cut': sum(c.finish_reason == 'length' for c in comps) / len(comps),
                            'accuracy': right / len(items), 'ci': exact_ci(right, len(items)),
                            'tokens': sum(c.n_tokens for c in comps)}
        print(arm, res['arms'][arm], flush=True)
    if len(texts) >= 2:
        x, *others = texts.values()
        res['identical_answers'] = [sum(p == q for p, q in zip(x, y)) for y in others]  # the first arm's against each other
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != 'arms'}))


if __name__ == '__main__':
    main()
