"""Scaling curve of the whole review pipeline: wall time for N prompts x K critics with one engine or a pool (started once).

    python bench/scaling.py --engine vllm --ns 32,64,128,256 --ks 1,2,4 --max-new-tokens 32
    python bench/scaling.py --pool 'hf:qwen2.5-coder-0.5b-instruct,hf:smollm2-135m-instruct,hf:qwen2.5-coder-0.5b-instruct' \
        --ns 32,64,128,256 --ks 1,2,4 --max-new-tokens 16 --cells bench/cells/scaling-pool.jsonl

`--pool` is the two-family pool of `pulse run` (`configs/cpu-pool.yaml`): the first spec acts, the others critique, a
critic of the actor's own model is its own slot over the same weights, and transformers engines run in `--dtype`
(`fast`: bfloat16 where the CPU computes it natively), exactly as `pulse_nb.loop.stage_review` builds it.
`--cells FILE` appends each finished cell to FILE and skips the cells already there (same arguments), so a long grid
can be stopped and resumed.

For each (N, K): `review` (4 stages, stage-batched) then `build_pairs`, in a fresh run directory. Generations per run
are N (answers) + N*K (critiques) + N (revisions) + N*K (rescores) = 2N(K+1), so the cost should grow about linearly
in N and in K+1; the printed `s_per_generation` shows whether batching keeps it flat. Prints a table and a RESULT line.
"""
import argparse, json, os, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault('VLLM_ENABLE_V1_MULTIPROCESSING', '0')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--engine', default='vllm'); ap.add_argument('--prompts', default='builtin:general')
    ap.add_argument('--ns', default='32,64,128,256'); ap.add_argument('--ks', default='1,2,4')
    ap.add_argument('--max-new-tokens', type=int, default=32)
    ap.add_argument('--pool', default=None, help='comma-separated engine specs, actor first (replaces --engine)')
    ap.add_argument('--dtype', default='fast', help="the pool's transformers dtype unless a spec sets one")
    ap.add_argument('--cells', default=None, help='a JSONL file of finished cells: appended to, and its cells skipped')
    a = ap.parse_args()
    from pulse_nb.data import load_prompts
    from pulse_nb.engines import make_engine
    from pulse_nb.review import review, load_run, STAGES
    from pulse_nb.preferences import build_pairs
    from pulse_nb.loop import Pool
    from review import cpu_line, reset_cache
    ns, ks = [int(x) for x in a.ns.split(',')], [int(x) for x in a.ks.split(',')]
    prompts = load_prompts(a.prompts, limit=max(ns))
    if len(prompts) < max(ns):  # the built-in general set has 114: top up with arithmetic problems
        prompts += load_prompts('builtin:arithmetic', limit=max(ns) - len(prompts))
    key = {'engine': a.pool or a.engine, 'dtype': a.dtype if a.pool else None, 'max_new_tokens': a.max_new_tokens,
           'prompts': a.prompts}
    cells = Path(a.cells) if a.cells else None
    done = [json.loads(l) for l in cells.read_text().splitlines() if l.strip()] if cells and cells.exists() else []
    done = {(r['n'], r['k']): {x: v for x, v in r.items() if x != 'key'} for r in done if r.get('key') == key}
    todo = [(n, k) for k in ks for n in ns if (n, k) not in done]
    t = time.perf_counter()
    if a.pool:
        pool = Pool(dtype=a.dtype)
        specs = [s.strip() for s in a.pool.split(',') if s.strip()]
        actor = pool.get(specs[0])
        critics = [pool.get(c) for c in specs[1:]]
        engines = [actor, *[c.alias() if c is actor else c for c in critics]]  # as `stage_review` builds the pool
        for e in pool.engines.values() if todo else []: e.generate([[{'role': 'user', 'content': 'Hi'}]])  # load, warm up
        close = pool.close
    elif todo:
        eng = make_engine(a.engine); engines, close = eng, eng.close
        eng.generate([[{'role': 'user', 'content': 'Hi'}]])  # warm-up
    else: engines, close = [], lambda: None
    start = time.perf_counter() - t
    rows, tmp = [], tempfile.mkdtemp(prefix='pulse-scaling-')
    try:
        for k in ks:
            for n in ns:
                if (n, k) in done:
                    rows.append(done[n, k]); print('done before:', rows[-1], flush=True); continue
                for e in (engines if isinstance(engines, list) else [engines]): reset_cache(getattr(e, '_engine', e))
                t, t_wall = time.perf_counter(), time.time()
                run = review(prompts[:n], engines, n_critics=k, out_dir=f'{tmp}/n{n}k{k}', max_new_tokens=a.max_new_tokens,
                             batch_size=None, progress=False, actor='fixed')
                pairs = build_pairs(run)
                dt = time.perf_counter() - t
                r = load_run(run)
                toks = sum(x.get('n_tokens', 0) for s in ('answers', 'revisions') for x in r[s])
                gens = 2 * n * (k + 1)
                ends = [os.path.getmtime(f'{run}/{s}.jsonl') for s in STAGES]  # each stage's last append
                stage_s = {s: round(e - b, 1) for s, b, e in zip(STAGES, [t_wall, *ends], ends)}
                rows.append({'n': n, 'k': k, 'wall_s': round(dt, 1), 'generations': gens, 's_per_generation': round(dt / gens, 3),
                             'actor_tokens': toks, 'pairs': len(pairs), 'stage_s': stage_s,
                             'ran_at': time.strftime('%Y-%m-%dT%H:%M')})
                print(rows[-1], flush=True)
                if cells:
                    cells.parent.mkdir(parents=True, exist_ok=True)
                    with open(cells, 'a') as f: f.write(json.dumps({**rows[-1], 'key': key}) + '\n')
    finally:
        close(); shutil.rmtree(tmp, ignore_errors=True)
    print(f'\nengine {a.pool or a.engine} (start {start:.0f} s), max_new_tokens {a.max_new_tokens}')
    print('wall seconds:  ' + ''.join(f'{"N=" + str(n):>9s}' for n in ns))
    for k in ks: print(f'  K={k:<10d} ' + ''.join(f'{r["wall_s"]:9.1f}' for r in rows if r['k'] == k))
    print('RESULT ' + json.dumps({'bench': 'scaling', 'engine': 'pool' if a.pool else a.engine, 'pool': a.pool and specs,
                                  'dtype': a.dtype if a.pool else None, 'cpu': cpu_line(), 'engine_start_s': round(start, 1),
                                  'max_new_tokens': a.max_new_tokens, 'rows': rows}))


if __name__ == '__main__':
    main()
