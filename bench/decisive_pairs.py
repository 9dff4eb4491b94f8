"""Decisive pairs per round of `pulse run`'s review, with one answer per prompt and with best-of-n candidates.

A pair is *decisive* when exactly one of its two answers is verified right: only then can a label be right or
wrong, and only then does training on it teach the actor something about correctness. This runs the review stage of
`pulse run`'s default config (its pool, prompts, budgets and sampling) on the prompts of its first `--rounds` rounds,
once per `--n-answers` value, and counts per round the decisive pairs, the prompts whose candidates hold a right and a
wrong answer, and the labels' accuracy. The actor is the base model in every round (a real run's later rounds act
with the trained policy). Writes bench/decisive_pairs.json; the review records stay in --out, so a rerun reads them.

    python bench/decisive_pairs.py --n-answers 1,4 --rounds 2
"""
import argparse, json, platform, time
from pathlib import Path


def count(run_dir, r):
    from pulse_nb.preferences import build_pairs, collect, verified
    pairs = [p for p in build_pairs(run_dir).to_list() if p['round'] == r]
    items = [it for it in collect(run_dir) if it['round'] == r]
    by = {}
    for it in items:
        by.setdefault(it['prompt_id'], []).extend(v for v in (verified(it, it['a0']), verified(it, it['a1'])) if v is not None)
    dec = [p['label_correct'] for p in pairs if p['label_correct'] is not None]
    return {'prompts': len(by), 'candidates': 2 * len(items), 'pairs': len(pairs), 'decisive_pairs': len(dec),
            'labels_right': sum(dec), 'prompts_with_right_and_wrong': sum(any(v) and not all(v) for v in by.values()),
            'prompts_with_a_right_candidate': sum(any(v) for v in by.values()),
            'candidates_right': sum(sum(v) for v in by.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n-answers', default='1,4', help='answers per prompt to compare')
    ap.add_argument('--rounds', type=int, default=2, help="the first ROUNDS rounds' prompts")
    ap.add_argument('--out', default='runs/decisive-pairs', help='review run directories (resumed)')
    ap.add_argument('--json', default=str(Path(__file__).with_name('decisive_pairs.json')))
    a = ap.parse_args()
    from pulse_nb.config import RunConfig, round_prompts
    from pulse_nb.loop import Pool
    from pulse_nb.review import review
    cfg = RunConfig(rounds=a.rounds)
    prompts = round_prompts(cfg)
    rv = cfg.review
    res = {'config': {'actor': cfg.pool.actor, 'critics': cfg.pool.critics, 'n_critics': cfg.pool.n_critics, 'prompts': rv.prompts,
                      'per_round': rv.per_round, 'max_new_tokens': rv.max_new_tokens, 'temperature': rv.temperature, 'seed': cfg.seed},
           'machine': platform.processor() or platform.machine(), 'runs': {}}
    for n in [int(x) for x in a.n_answers.split(',')]:
        out, t0 = Path(a.out)/f'n{n}', time.time()
        with Pool(dtype='fast') as pool:
            actor = pool.get(cfg.pool.actor)
            critics = [pool.get(c) for c in cfg.pool.critics]
            critics = [c.alias() if c is actor else c for c in critics]
            for r, ps in enumerate(prompts, 1):
                review(ps, [actor, *critics], n_critics=cfg.pool.n_critics, out_dir=out, first_round=r, actor='fixed', seed=cfg.seed,
                       max_new_tokens=rv.max_new_tokens, temperature=rv.temperature, batch_size=rv.batch_size, n_answers=n, progress=True)
        res['runs'][n] = {'seconds': round(time.time() - t0, 1), 'rounds': {r: count(out, r) for r in range(1, len(prompts) + 1)}}
        print(n, json.dumps(res['runs'][n]), flush=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
