"""Benchmark of the review protocol (manual, not CI).

1. PULSE: `review` on N prompts with one engine (whole stages per call), the engine's calls recorded.
2. Raw: the same calls replayed straight on the backend (vLLM: `LLM.chat` with the same SamplingParams; other
   engines: their own `generate`/`score`), with the prefix cache reset before each phase. Overhead = 1 - raw/PULSE.
3. Naive: a per-prompt loop (`review` on one prompt at a time) on a subset, against the batched run on that subset.

    python bench/review.py --engine vllm --n 128 --subset 16 --max-new-tokens 64
    python bench/review.py --engine hf --n 4 --subset 2 --max-new-tokens 8      # smoke test
Prints one JSON object with wall times, generated tokens and ratios. Engine start-up is timed separately.
"""
import argparse, json, os, shutil, tempfile, time
from pulse_nb.data import load_prompts
from pulse_nb.engines import Engine, make_engine
from pulse_nb.review import review

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

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--engine', default='vllm'); ap.add_argument('--prompts', default='builtin:general')
    ap.add_argument('--n', type=int, default=128); ap.add_argument('--subset', type=int, default=16)
    ap.add_argument('--critics', type=int, default=2); ap.add_argument('--max-new-tokens', type=int, default=64)
    ap.add_argument('--score-mode', default='logprobs'); ap.add_argument('--skip-naive', action='store_true')
    a = ap.parse_args()
    prompts = load_prompts(a.prompts, limit=a.n)
    t = time.perf_counter(); eng = make_engine(a.engine); start = time.perf_counter() - t
    kw = dict(n_critics=a.critics, max_new_tokens=a.max_new_tokens, score_mode=a.score_mode, progress=False, seed=0)
    tmp = tempfile.mkdtemp(prefix='pulse-bench-')
    try:
        rec = Recorder(eng)
        reset_cache(eng)
        t = time.perf_counter(); review(prompts, rec, out_dir=f'{tmp}/pulse', batch_size=None, **kw)
        pulse_s = time.perf_counter() - t
        pulse_tok = sum(c[4] for c in rec.calls if c[0] == 'generate')
        raw_s, raw_tok = replay(eng, rec.calls)
        res = {'engine': a.engine, 'n_prompts': len(prompts), 'n_critics': a.critics, 'max_new_tokens': a.max_new_tokens,
               'engine_start_s': round(start, 1), 'n_engine_calls': len(rec.calls),
               'pulse_s': round(pulse_s, 2), 'pulse_tokens': pulse_tok, 'pulse_tok_per_s': round(pulse_tok / pulse_s, 1),
               'raw_s': round(raw_s, 2), 'raw_tokens': raw_tok, 'raw_tok_per_s': round(raw_tok / raw_s, 1),
               'overhead_frac': round(1 - raw_s / pulse_s, 3),
               'overhead_frac_per_token': round(1 - (raw_s / max(raw_tok, 1)) / (pulse_s / max(pulse_tok, 1)), 3)}
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
