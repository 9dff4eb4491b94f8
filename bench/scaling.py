"""Scaling curve of the whole review pipeline: wall time for N prompts x K critics with one engine (started once).

    python bench/scaling.py --engine vllm --ns 32,64,128,256 --ks 1,2,4 --max-new-tokens 32

For each (N, K): `review` (4 stages, stage-batched) then `build_pairs`, in a fresh run directory. Generations per run
are N (answers) + N*K (critiques) + N (revisions) + N*K (rescores) = 2N(K+1), so the cost should grow about linearly
in N and in K+1; the printed `s_per_generation` shows whether batching keeps it flat. Prints a table and a RESULT line.
"""
import argparse, json, os, shutil, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('VLLM_ENABLE_V1_MULTIPROCESSING', '0')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--engine', default='vllm'); ap.add_argument('--prompts', default='builtin:general')
    ap.add_argument('--ns', default='32,64,128,256'); ap.add_argument('--ks', default='1,2,4')
    ap.add_argument('--max-new-tokens', type=int, default=32)
    a = ap.parse_args()
    from pulse_nb.data import load_prompts
    from pulse_nb.engines import make_engine
    from pulse_nb.review import review, load_run, STAGES
    from pulse_nb.preferences import build_pairs
    ns, ks = [int(x) for x in a.ns.split(',')], [int(x) for x in a.ks.split(',')]
    prompts = load_prompts(a.prompts, limit=max(ns))
    if len(prompts) < max(ns):  # the built-in general set has 114: top up with arithmetic problems
        prompts += load_prompts('builtin:arithmetic', limit=max(ns) - len(prompts))
    t = time.perf_counter(); eng = make_engine(a.engine); start = time.perf_counter() - t
    eng.generate([[{'role': 'user', 'content': 'Hi'}]])  # warm-up
    rows, tmp = [], tempfile.mkdtemp(prefix='pulse-scaling-')
    try:
        for k in ks:
            for n in ns:
                if getattr(eng, 'llm', None) is not None: eng.llm.reset_prefix_cache()
                t, t_wall = time.perf_counter(), time.time()
                run = review(prompts[:n], eng, n_critics=k, out_dir=f'{tmp}/n{n}k{k}', max_new_tokens=a.max_new_tokens,
                             batch_size=None, progress=False)
                pairs = build_pairs(run)
                dt = time.perf_counter() - t
                r = load_run(run)
                toks = sum(x.get('n_tokens', 0) for s in ('answers', 'revisions') for x in r[s])
                gens = 2 * n * (k + 1)
                ends = [os.path.getmtime(f'{run}/{s}.jsonl') for s in STAGES]  # each stage's last append
                stage_s = {s: round(e - b, 1) for s, b, e in zip(STAGES, [t_wall, *ends], ends)}
                rows.append({'n': n, 'k': k, 'wall_s': round(dt, 1), 'generations': gens, 's_per_generation': round(dt / gens, 3),
                             'actor_tokens': toks, 'pairs': len(pairs), 'stage_s': stage_s})
                print(rows[-1], flush=True)
    finally:
        eng.close(); shutil.rmtree(tmp, ignore_errors=True)
    print(f'\nengine {a.engine} (start {start:.0f} s), max_new_tokens {a.max_new_tokens}')
    print('wall seconds:  ' + ''.join(f'{"N=" + str(n):>9s}' for n in ns))
    for k in ks: print(f'  K={k:<10d} ' + ''.join(f'{r["wall_s"]:9.1f}' for r in rows if r['k'] == k))
    print('RESULT ' + json.dumps({'bench': 'scaling', 'engine': a.engine, 'engine_start_s': round(start, 1),
                                  'max_new_tokens': a.max_new_tokens, 'rows': rows}))


if __name__ == '__main__':
    main()
