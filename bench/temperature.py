"""Accuracy of the embedded actor against sampling temperature, and how often k samples of one prompt disagree.

Review samples its answers; best-of-n pairs need, per prompt, at least one verified-right and one verified-wrong
candidate. For each temperature this draws `k` answers per GSM8K *training* prompt (the prompts review uses, never the
held-out ones) in one call (`SamplingConfig(n=k)`) and reports the accuracy per answer, the share of prompts where
the k answers are mixed (a decisive best-of-k pair exists), and the share cut at the budget. Greedy (temperature 0)
draws one answer. Writes bench/temperature.json.

    python bench/temperature.py --n 48 --k 4 --temperatures 0,0.3,0.7,1.0 --max-new-tokens 512
"""
import argparse, json, platform, time
from pathlib import Path


def measure(engine, items, t, k, budget, seed):
    from pulse_nb.engines import SamplingConfig
    from pulse_nb.graders import grade_number
    from pulse_nb.evaluate import exact_ci
    n = 1 if t == 0 else k
    t0 = time.time()
    gens = engine.generate([[{'role': 'user', 'content': it['prompt']}] for it in items],
                           SamplingConfig(temperature=t, max_new_tokens=budget, n=n, seed=seed))
    secs = time.time() - t0
    right = [[c.finish_reason == 'stop' and grade_number(c.text, it['answer']) for c in g.completions] for it, g in zip(items, gens)]
    cut = [c.finish_reason == 'length' for g in gens for c in g.completions]
    n_right, n_all = sum(map(sum, right)), sum(map(len, right))
    mixed = sum(0 < sum(r) < len(r) for r in right)
    return {'temperature': t, 'samples_per_prompt': n, 'accuracy': n_right / n_all, 'accuracy_ci': exact_ci(n_right, n_all),
            'n_answers': n_all, 'mixed_prompts': mixed / len(items) if n > 1 else None,
            'any_right': sum(any(r) for r in right) / len(items), 'cut': sum(cut) / len(cut), 'seconds': round(secs, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=48, help='GSM8K training prompts')
    ap.add_argument('--k', type=int, default=4, help='samples per prompt at each temperature above 0')
    ap.add_argument('--temperatures', default='0,0.3,0.7,1.0')
    ap.add_argument('--max-new-tokens', type=int, default=512)
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--model', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--out', default=str(Path(__file__).with_name('temperature.json')))
    a = ap.parse_args()
    from pulse_nb.benchsets import bench_prompts
    from pulse_nb.engines import make_engine, fast_dtype
    items = bench_prompts('gsm8k', split='train', limit=a.n)
    engine = make_engine(f'hf:{a.model}', dtype=fast_dtype(), batch_size=a.batch_size)
    res = {'model': a.model, 'dtype': fast_dtype(), 'n_prompts': len(items), 'k': a.k, 'max_new_tokens': a.max_new_tokens,
           'seed': a.seed, 'machine': platform.processor() or platform.machine(), 'rows': []}
    for t in [float(x) for x in a.temperatures.split(',')]:
        r = measure(engine, items, t, a.k, a.max_new_tokens, a.seed)
        res['rows'].append(r)
        print(json.dumps(r), flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
