"""Benchmark of the review protocol (manual, not CI).

1. PULSE: `review` on N prompts with one engine (whole stages per call), the engine's calls recorded.
2. Raw: the same calls replayed straight on the backend (vLLM: `LLM.chat` with the same SamplingParams; other
   engines: their own `generate`/`score`), with the prefix cache reset before each phase. Overhead = 1 - raw/PULSE.
3. Naive: a per-prompt loop (`review` on one prompt at a time) on a subset, against the batched run on that subset.
4. `--critique-ratio`: the critique stage (feedback and score: `generate_and_score`) against generating the same
   feedback tokens alone (`generate`, same prompts, sampling and seed), in the order critique, alone, alone, critique, twice;
   also today's two calls (`generate` then `score`) and the persona-first prompt layout, for reference. Target: <= 1.15.
5. `--layouts`: label agreement of the shared-prefix prompt layout against the persona-first one on the same answer
   pairs (a0, a1 of one review run, both re-scored by the critics under each layout), and of the same layout under
   another seed (the noise floor).
6. `--pool`: a review with several models (the two-family pool of `pulse run`) against the sum of each model's raw
   generation time for the same tokens (its own calls replayed on it alone).

    python bench/review.py --engine vllm --n 128 --subset 16 --max-new-tokens 64
    python bench/review.py --engine hf --n 4 --subset 2 --max-new-tokens 8      # smoke test
    python bench/review.py --engine auto --n 32 --critique-ratio --skip-review --skip-naive
    python bench/review.py --engine auto --n 32 --layouts --skip-review --skip-naive
    python bench/review.py --pool 'hf:qwen2.5-coder-0.5b-instruct;dtype=fast,hf:smollm2-135m-instruct;dtype=fast,hf:qwen2.5-coder-0.5b-instruct;dtype=fast' --n 16
Prints one JSON object with wall times, generated tokens and ratios. Engine start-up is timed separately.
"""
import argparse, json, os, shutil, statistics, sys, tempfile, time
from pulse_nb.data import load_prompts
from pulse_nb.engines import Engine, SamplingConfig, make_engine
from pulse_nb.review import review, load_run
from pulse_nb import prompts as P

def cpu_line() -> str:
    "The CPU flags that decide engine speed here (avx2, avx512f, avx512_bf16, amx), and the core count."
    from pulse_nb.engines import cpu_flags
    f = cpu_flags()
    return (f'{os.cpu_count()} CPUs, ' + ', '.join(f'{k}={"yes" if k in f else "no"}'
                                                 for k in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')))


class Recorder(Engine):
    "Delegates to `inner` and records every call (kind, convs, sampling or candidates, seconds, generated tokens)."
    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.model, self.supports_logprobs = inner.name, inner.model, inner.supports_logprobs
    def generate(self, convs, sampling=None, *, progress=False, truncate=False):
        t = time.perf_counter(); out = self.inner.generate(convs, sampling, progress=progress, truncate=truncate)
        self.calls.append(('generate', convs, sampling, time.perf_counter() - t,
                           sum(c.n_tokens for g in out for c in g.completions)))
        return out
    def score(self, convs, candidates, *, truncate=False):
        t = time.perf_counter(); out = self.inner.score(convs, candidates, truncate=truncate)
        self.calls.append(('score', convs, candidates, time.perf_counter() - t, len(convs)))
        return out
    def generate_and_score(self, convs, sampling, candidates, make_prefix, *, progress=False, truncate=False):
        "Recorded as its two parts (generate, then score of the continued conversations), so `replay` can run them raw."
        t = time.perf_counter()
        out = self.inner.generate_and_score(convs, sampling, candidates, make_prefix, progress=progress, truncate=truncate)
        gens = [s.generation for s in out]
        self.calls.append(('generate', convs, sampling, time.perf_counter() - t, sum(c.n_tokens for g in gens for c in g.completions)))
        sconvs = [c + [{'role': 'assistant', 'content': make_prefix(x.text)}] for c, g in zip(convs, gens) for x in g.completions]
        self.calls.append(('score', sconvs, candidates, 0.0, len(sconvs)))
        return out
    @property
    def capabilities(self): return self.inner.capabilities

def reset_cache(e):
    llm = getattr(e, 'llm', None)
    if llm is not None and hasattr(llm, 'reset_prefix_cache'): llm.reset_prefix_cache()

def replay(e, calls) -> tuple[float, int]:
    "Replay recorded calls straight on the backend; returns (seconds, generated tokens)."
    reset_cache(e)
    t, toks = time.perf_counter(), 0
    for kind, convs, arg, _, _ in calls:
        if getattr(e, 'llm', None) is not None:  # vLLM: the bare LLM.chat
            from vllm import SamplingParams
            if kind == 'generate':
                p = SamplingParams(temperature=arg.temperature, top_p=arg.top_p, max_tokens=arg.max_new_tokens, n=arg.n,
                                   seed=arg.seed, stop=arg.stop)
                res = e.llm.chat(convs, p, use_tqdm=False)
                toks += sum(len(o.token_ids) for r in res for o in r.outputs)
            else:
                e.llm.chat(convs, SamplingParams(max_tokens=1, temperature=0, logprobs=20), use_tqdm=False,
                           add_generation_prompt=False, continue_final_message=True)
        elif kind == 'generate': toks += sum(c.n_tokens for g in e.generate(convs, arg) for c in g.completions)
        else: e.score(convs, arg)
    return time.perf_counter() - t, toks

def critic_convs(eng, prompts, critics, max_new_tokens, out, templates=None):
    "The critic conversations of a review's first stage: the actor's answers (one `review` call), then K critics each."
    review(prompts, eng, n_critics=critics, max_new_tokens=max_new_tokens, out_dir=out, stop_after='answers',
           batch_size=None, progress=False, seed=0)
    ans = {a['prompt_id']: a['text'] for a in load_run(out)['answers']}
    T = {'critic': P.CRITIC_TEMPLATE, 'critic_system': P.CRITIC_SYSTEM, **(templates or {})}
    personas = list(P.PERSONAS)[:critics]
    return [P.critic_conv(p['prompt'], ans[p['id']], who, P.SCALE, T['critic'], T['critic_system'])
            for p in prompts for who in personas]


def critique_ratio(eng, prompts, critics, max_new_tokens, tmp, repeats: int=2) -> dict:
    "Critique stage (fused) vs the same feedback generated alone, `repeats` ABBA blocks; plus today's two calls and the old layout."
    convs = critic_convs(eng, prompts, critics, max_new_tokens, f'{tmp}/ratio')
    old = critic_convs(eng, prompts, critics, max_new_tokens, f'{tmp}/ratio', P.PERSONA_FIRST)
    sc = SamplingConfig(temperature=0.7, max_new_tokens=max_new_tokens, seed=0, stop=P.FEEDBACK_STOP)
    digits = P.scale_tokens()
    def timed(fn):
        reset_cache(eng)
        t = time.perf_counter(); out = fn(); return time.perf_counter() - t, out
    def fused(cs): return eng.generate_and_score(cs, sc, digits, P.score_after)
    def alone(cs): return eng.generate(cs, sc)
    def two_calls(cs):
        gens = eng.generate(cs, sc)
        eng.score([c + [{'role': 'assistant', 'content': P.score_after(g.completions[0].text)}] for c, g in zip(cs, gens)], digits)
        return gens
    runs = {'critique': [], 'alone': [], 'two_calls': [], 'alone_old_layout': [], 'two_calls_old_layout': []}
    toks = {}
    for name in ['critique', 'alone', 'alone', 'critique'] * repeats + ['two_calls', 'two_calls_old_layout', 'alone_old_layout',
                 'alone_old_layout', 'two_calls_old_layout', 'two_calls']:
        fn = {'critique': lambda: fused(convs), 'alone': lambda: alone(convs), 'two_calls': lambda: two_calls(convs),
              'alone_old_layout': lambda: alone(old), 'two_calls_old_layout': lambda: two_calls(old)}[name]
        s, out = timed(fn)
        runs[name].append(round(s, 2))
        print(f'[critique-ratio] {name}: {s:.1f} s', file=sys.stderr, flush=True)
        gens = [o.generation if hasattr(o, 'generation') else o for o in out]
        toks[name] = sum(c.n_tokens for g in gens for c in g.completions)
    mean = {k: statistics.fmean(v) for k, v in runs.items()}
    return {'n_convs': len(convs), 'feedback_tokens': toks, 'runs_s': runs, 'mean_s': {k: round(v, 2) for k, v in mean.items()},
            'critique_over_alone': round(mean['critique'] / mean['alone'], 3),
            'two_calls_over_alone': round(mean['two_calls'] / mean['alone'], 3),
            'old_layout_two_calls_over_critique': round(mean['two_calls_old_layout'] / mean['critique'], 3),
            'capabilities': eng.capabilities}


def _scores(eng, convs, seed, max_new_tokens):
    "Each critic conversation's log-prob score (None where the mass is too low), as the review's critique stage reads it."
    sc = SamplingConfig(temperature=0.7, max_new_tokens=max_new_tokens, seed=seed, stop=P.FEEDBACK_STOP)
    return [P.score_from_probs(s.readouts[0].probs, s.readouts[0].mass).score
            for s in eng.generate_and_score(convs, sc, P.scale_tokens(), P.score_after)]


def layout_agreement(eng, prompts, critics, max_new_tokens, tmp) -> dict:
    "Labels (does the revision win?) on one run's answer pairs, re-scored under the new layout (2 seeds) and the old one."
    out = f'{tmp}/layouts'
    review(prompts, eng, n_critics=critics, max_new_tokens=max_new_tokens, out_dir=out, batch_size=None, progress=False, seed=0)
    run = load_run(out)
    ptext = {p['id']: p['prompt'] for p in run['prompts']}
    a0, a1 = ({r['prompt_id']: r['text'] for r in run[s]} for s in ('answers', 'revisions'))
    ids = [p['id'] for p in run['prompts'] if p['id'] in a1]
    personas = list(P.PERSONAS)[:critics]
    def labels(templates, seed):
        T = {'critic': P.CRITIC_TEMPLATE, 'critic_system': P.CRITIC_SYSTEM, **(templates or {})}
        convs = [P.critic_conv(ptext[i], a[i], who, P.SCALE, T['critic'], T['critic_system'])
                 for a in (a0, a1) for i in ids for who in personas]
        sc = _scores(eng, convs, seed, max_new_tokens)
        half = len(ids) * critics
        s0, s1 = sc[:half], sc[half:]
        out = []
        for k in range(len(ids)):
            x0 = [v for v in s0[k*critics:(k+1)*critics] if v is not None]
            x1 = [v for v in s1[k*critics:(k+1)*critics] if v is not None]
            d = statistics.fmean(x1) - statistics.fmean(x0) if x0 and x1 else None
            out.append(None if d is None or d == 0 else d > 0)
        return out
    new, new2, old = labels(None, 0), labels(None, 1), labels(P.PERSONA_FIRST, 0)
    agree = lambda a, b: [x == y for x, y in zip(a, b) if x is not None and y is not None]
    vs_old, vs_seed = agree(new, old), agree(new, new2)
    return {'n_pairs': len(ids), 'labelled': {'new': sum(x is not None for x in new), 'old': sum(x is not None for x in old)},
            'revision_wins': {'new': sum(x is True for x in new), 'old': sum(x is True for x in old)},
            'agreement_new_vs_old_layout': round(sum(vs_old) / max(1, len(vs_old)), 3), 'n_compared_old': len(vs_old),
            'agreement_new_vs_new_other_seed': round(sum(vs_seed) / max(1, len(vs_seed)), 3), 'n_compared_seed': len(vs_seed)}


def pool_vs_raw(specs: list[str], prompts, critics, max_new_tokens, score_mode, tmp) -> dict:
    """The review with a pool (`specs[0]` acts, `specs[1:]` critique; a spec repeated is one model, as in `pulse run`)
    against each model's raw calls: the review's generate calls, replayed on each engine alone (the same convs and
    sampling, so the same tokens), summed over the models; the score read-outs replayed apart."""
    engines, recs = {}, []
    for s in specs:
        if s not in engines: engines[s] = make_engine(s)
        recs.append((s, Recorder(engines[s])))  # one recorder per slot: the actor's own model as a critic is its own slot
    pool = [r for _, r in recs]
    t = time.perf_counter()
    review(prompts, pool, n_critics=critics, out_dir=f'{tmp}/pool', actor='fixed', max_new_tokens=max_new_tokens,
           score_mode=score_mode, batch_size=None, progress=False, seed=0)
    wall = time.perf_counter() - t
    per_model = {}
    for s, e in engines.items():
        calls = [c for spec, r in recs if spec == s for c in r.calls]
        gen_s, toks = replay(e, [c for c in calls if c[0] == 'generate'])
        score_s, _ = replay(e, [c for c in calls if c[0] == 'score'])
        per_model[s] = {'generate_calls': sum(c[0] == 'generate' for c in calls), 'gen_tokens': toks,
                        'raw_generation_s': round(gen_s, 2), 'raw_score_readouts_s': round(score_s, 2),
                        'tok_per_s': round(toks / gen_s, 1) if gen_s else None}
    raw_gen = sum(m['raw_generation_s'] for m in per_model.values())
    raw_all = raw_gen + sum(m['raw_score_readouts_s'] for m in per_model.values())
    for e in engines.values(): e.close()
    return {'pool': specs, 'review_s': round(wall, 2), 'per_model': per_model, 'raw_generation_sum_s': round(raw_gen, 2),
            'raw_with_readouts_sum_s': round(raw_all, 2), 'review_over_raw_generation': round(wall / raw_gen, 3),
            'review_over_raw_with_readouts': round(wall / raw_all, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--engine', default='vllm'); ap.add_argument('--prompts', default='builtin:general')
    ap.add_argument('--n', type=int, default=128); ap.add_argument('--subset', type=int, default=16)
    ap.add_argument('--critics', type=int, default=2); ap.add_argument('--max-new-tokens', type=int, default=64)
    ap.add_argument('--score-mode', default='logprobs'); ap.add_argument('--skip-naive', action='store_true')
    ap.add_argument('--skip-review', action='store_true', help='skip parts 1-3 (the review vs raw and naive runs)')
    ap.add_argument('--critique-ratio', action='store_true'); ap.add_argument('--layouts', action='store_true')
    ap.add_argument('--repeats', type=int, default=2, help='ABBA blocks of the critique ratio (2 paired runs each)')
    ap.add_argument('--pool', default=None, help='comma-separated engine specs, actor first (e.g. the two-family default '
                    'pool): the review against each model\'s raw generation of the same tokens; replaces parts 1-5')
    a = ap.parse_args()
    prompts = load_prompts(a.prompts, limit=a.n)
    if a.pool:
        tmp = tempfile.mkdtemp(prefix='pulse-bench-')
        try: res = {'engine': 'pool', 'n_prompts': len(prompts), 'n_critics': a.critics, 'max_new_tokens': a.max_new_tokens,
                    'cpu': cpu_line(), **pool_vs_raw(a.pool.split(','), prompts, a.critics, a.max_new_tokens, a.score_mode, tmp)}
        finally: shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(res, indent=1)); print('RESULT ' + json.dumps({'bench': 'review', **res})); return
    t = time.perf_counter(); eng = make_engine(a.engine); start = time.perf_counter() - t
    kw = dict(n_critics=a.critics, max_new_tokens=a.max_new_tokens, score_mode=a.score_mode, progress=False, seed=0)
    tmp = tempfile.mkdtemp(prefix='pulse-bench-')
    res = {'engine': a.engine, 'n_prompts': len(prompts), 'n_critics': a.critics, 'max_new_tokens': a.max_new_tokens,
           'engine_start_s': round(start, 1), 'cpu': cpu_line()}
    try:
        if a.critique_ratio: res['critique_ratio'] = critique_ratio(eng, prompts, a.critics, a.max_new_tokens, tmp, a.repeats)
        if a.layouts: res['layouts'] = layout_agreement(eng, prompts, a.critics, a.max_new_tokens, tmp)
        if a.skip_review:
            print(json.dumps(res, indent=1)); print('RESULT ' + json.dumps({'bench': 'review', **res})); return
        rec = Recorder(eng)
        reset_cache(eng)
        t = time.perf_counter(); review(prompts, rec, out_dir=f'{tmp}/pulse', batch_size=None, **kw)
        pulse_s = time.perf_counter() - t
        pulse_tok = sum(c[4] for c in rec.calls if c[0] == 'generate')
        raw_s, raw_tok = replay(eng, rec.calls)
        res.update({'n_engine_calls': len(rec.calls),
               'pulse_s': round(pulse_s, 2), 'pulse_tokens': pulse_tok, 'pulse_tok_per_s': round(pulse_tok / pulse_s, 1),
               'raw_s': round(raw_s, 2), 'raw_tokens': raw_tok, 'raw_tok_per_s': round(raw_tok / raw_s, 1),
               'overhead_frac': round(1 - raw_s / pulse_s, 3),
               'overhead_frac_per_token': round(1 - (raw_s / max(raw_tok, 1)) / (pulse_s / max(pulse_tok, 1)), 3)})
        if not a.skip_naive and a.subset:
            sub = prompts[:a.subset]
            reset_cache(eng)
            t = time.perf_counter(); review(sub, eng, out_dir=f'{tmp}/batched', batch_size=None, **kw)
            batched_s = time.perf_counter() - t
            reset_cache(eng)
            t = time.perf_counter()
            for i, p in enumerate(sub): review([p], eng, out_dir=f'{tmp}/naive{i}', batch_size=1, **kw)
            naive_s = time.perf_counter() - t
            res.update(subset=len(sub), batched_subset_s=round(batched_s, 2), naive_subset_s=round(naive_s, 2),
                       naive_over_batched=round(naive_s / batched_s, 2))
        print(json.dumps(res, indent=1))
        print('RESULT ' + json.dumps({'bench': 'review', **res}))
    finally:
        eng.close(); shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
