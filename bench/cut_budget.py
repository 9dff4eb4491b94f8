"""How often the embedded actor's answers are cut at the token budget, and its accuracy, for two ways of asking.

One greedy generation per prompt at the largest budget: greedy decoding makes the same first B tokens whatever the
budget, so an answer that ended within B tokens is the answer a run with budget B gets, and one that did not is cut
there (and graded wrong). Writes bench/cut_budget.json; `--n`, `--budgets`, `--batch-size` size it.

    python bench/cut_budget.py --n 100 --budgets 128,192,256,384,512
"""
import argparse, json, platform, time
from pathlib import Path

BRIEF_GSM8K = ('Solve the following math problem. Keep the reasoning brief: a few short steps, without restating the '
               'problem. The last line of your response should be of the form "The answer is N." where N is the final '
               'number.\n\n{question}')  # tried as the GSM8K template; not kept (see bench/results.md)


def measure(engine, items, template, budgets, batch_size, temperature=0.0):
    from pulse_nb.engines import SamplingConfig
    from pulse_nb.graders import grade_number
    t0 = time.time()
    gens = engine.generate([[{'role': 'user', 'content': template.format(question=it.get('meta', {}).get('question', it['prompt']))}]
                            for it in items], SamplingConfig(temperature=temperature, max_new_tokens=max(budgets), seed=0))
    secs = time.time() - t0
    comps = [g.completions[0] for g in gens]
    out = {}
    for b in budgets:
        done = [c.finish_reason == 'stop' and c.n_tokens <= b for c in comps]
        right = [d and grade_number(c.text, it['answer']) for d, c, it in zip(done, comps, items)]
        out[b] = {'cut': 1 - sum(done) / len(items), 'accuracy': sum(right) / len(items), 'n_right': sum(right)}
    lens = sorted(c.n_tokens for c in comps if c.finish_reason == 'stop')
    return {'by_budget': out, 'seconds': round(secs, 1), 'median_tokens_finished': lens[len(lens) // 2] if lens else None,
            'replies': [{'id': it['id'], 'n_tokens': c.n_tokens, 'finish_reason': c.finish_reason, 'text': c.text}
                        for it, c in zip(items, comps)]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=100, help='held-out GSM8K items')
    ap.add_argument('--budgets', default='128,192,256,384,512', help='token budgets (the largest is generated)')
    ap.add_argument('--batch-size', type=int, default=50)
    ap.add_argument('--model', default='qwen2.5-coder-0.5b-instruct')
    ap.add_argument('--prompts', default=None, help="another prompt set, e.g. builtin:arithmetic, asked as given")
    ap.add_argument('--temperature', type=float, default=0.0, help='sampling temperature (above 0 a budget cuts the same sample)')
    ap.add_argument('--out', default=str(Path(__file__).with_name('cut_budget.json')))
    a = ap.parse_args()
    from pulse_nb.benchsets import bench_prompts, GSM8K_TEMPLATE
    from pulse_nb.engines import make_engine, fast_dtype
    budgets = sorted(int(b) for b in a.budgets.split(','))
    if a.prompts:
        from pulse_nb.data import load_prompts
        items = load_prompts(a.prompts, limit=a.n)
    else: items = bench_prompts('gsm8k', split='heldout', limit=a.n)
    dtype = fast_dtype()
    engine = make_engine(f'hf:{a.model}', dtype=dtype, batch_size=a.batch_size)
    res = {'model': a.model, 'dtype': dtype, 'n': len(items), 'budgets': budgets, 'machine': platform.processor() or platform.machine(),
           'prompts': a.prompts or 'bench:gsm8k:heldout', 'temperature': a.temperature,
           'templates': {'as given': '{question}'} if a.prompts else {'step by step (GSM8K_TEMPLATE)': GSM8K_TEMPLATE, 'brief (tried)': BRIEF_GSM8K}}
    for name, tpl in res['templates'].items():
        res[name] = measure(engine, items, tpl, budgets, a.batch_size, a.temperature)
        print(name, {b: (f"{v['cut']:.0%} cut", f"{v['accuracy']:.0%} right") for b, v in res[name]['by_budget'].items()},
              f"{res[name]['seconds']} s", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
