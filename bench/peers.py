"""Generation vs peers: one UltraFeedback-style workload (N prompts -> an answer each -> K critiques with a score) on
the embedded model and the vLLM engine, through

1. pulse-nb: `review(..., stop_after='critiques')` (stage-batched, checkpointed JSONL), score read from the text
   (`--score-mode text`, the same work as the others) or from log-probs;
2. raw vLLM: the very calls pulse-nb made, replayed straight on `vllm.LLM.chat` (what it costs without pulse-nb),
   in the order pulse, raw, raw, pulse so that neither side profits from its place; means are reported;
3. distilabel (if importable): `TextGeneration` then `UltraFeedback(aspect='overall-rating', num_generations=K)` on
   distilabel's own `vLLM` LLM, each step's `process` called directly (no `Pipeline` process overhead counted).

    python bench/peers.py --system pulse --n 64 --critics 2 --max-new-tokens 64   # pulse-nb and raw vLLM, one engine
    python bench/peers.py --system distilabel --n 64 --critics 2 --max-new-tokens 64
    python bench/peers.py --system both --n 32 --critics 2 --max-new-tokens 32 --pulse-engine vllm

`--system both` measures pulse-nb against distilabel side by side in one process and on one vLLM engine, in the order
pulse, distilabel, distilabel, pulse (the prefix cache emptied before each): distilabel's `vLLM` LLM wraps the engine
pulse-nb runs on (its `load` would build a second `vllm.LLM`; the bench hands it the running one). `--distilabel-path`
is a folder with distilabel and the few packages it needs that the project lacks, appended to `sys.path` so the
project's own packages win:

    pip install --no-deps --target DIR distilabel==1.5.3 nest_asyncio orjson portalocker scipy tblib universal-pathlib pathlib_abc

The ratio is distilabel's mean wall time over pulse-nb's (target >= 1.3). `--pulse-engine` picks pulse-nb's engine:
`vllm` (distilabel's engine too) or `auto`/`hf` (then distilabel starts its own vLLM once, start excluded, and both
of its runs use it). `--dtype` sets both systems' weights dtype (the embedded models are stored in float32).

Each run prints one JSON object (engine start timed apart from the workload). `bench/run_all.py` runs both and
puts them side by side. distilabel 1.5.3 installs beside this stack with `pip install distilabel` (it changes no pinned
package); if its import or its vLLM call fails, the JSON says exactly why.
"""
import argparse, inspect, json, os, sys, shutil, tempfile, time, traceback
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault('VLLM_ENABLE_V1_MULTIPROCESSING', '0')


def workload(n):
    from pulse_nb.data import load_prompts
    return load_prompts('builtin:general', limit=n)


def run_pulse(a):
    from pulse_nb.engines import make_engine
    recs = workload(a.n)
    t = time.perf_counter(); eng = make_engine(f'vllm:{a.model}' if a.model else 'vllm'); start = time.perf_counter() - t
    return _pulse_vs_raw(a, eng, start, recs)


def _pulse_vs_raw(a, eng, start, recs):
    "pulse-nb's review (stopped after the critiques) against the same calls on raw vLLM, ABBA; engine closed at the end."
    from review import Recorder, replay, reset_cache
    from pulse_nb.review import review, load_run
    tmp = tempfile.mkdtemp(prefix='pulse-peers-')
    try:
        eng.generate([[{'role': 'user', 'content': 'Hi'}]])  # warm-up, as distilabel's first batch also pays it
        pulse_runs, raw_runs = [], []

        def pulse_run(rep):
            rec = Recorder(eng); reset_cache(eng)
            t = time.perf_counter()
            review(recs, rec, n_critics=a.critics, out_dir=f'{tmp}/run{rep}', max_new_tokens=a.max_new_tokens,
                   temperature=0.7, score_mode=a.score_mode, batch_size=None, stop_after='critiques', progress=False)
            pulse_runs.append((time.perf_counter() - t, sum(c[4] for c in rec.calls if c[0] == 'generate')))
            return rec.calls
        # pulse, raw, raw, pulse (ABBA): neither side gains from running first or last; raw replays the first run's calls
        calls = pulse_run(0)
        raw_runs += [replay(eng, calls), replay(eng, calls)]
        pulse_run(1)
        pulse_s, toks = (sum(x[k] for x in pulse_runs) / 2 for k in (0, 1))
        raw_s, raw_toks = (sum(x[k] for x in raw_runs) / 2 for k in (0, 1))
        run = load_run(f'{tmp}/run1')
        parsed = sum(c['parsed'] for c in run['critiques'])
        return {'n_prompts': len(recs), 'n_critics': a.critics, 'max_new_tokens': a.max_new_tokens,
                'score_mode': a.score_mode, 'engine_start_s': round(start, 1),
                'pulse': {'wall_s': round(pulse_s, 2), 'gen_tokens': toks, 'tok_per_s': round(toks / pulse_s, 1),
                          'answers': len(run['answers']), 'critiques': len(run['critiques']), 'scores_parsed': parsed},
                'raw_vllm': {'wall_s': round(raw_s, 2), 'gen_tokens': raw_toks, 'tok_per_s': round(raw_toks / raw_s, 1)},  # means of the two runs
                'pulse_over_raw_wall': round(pulse_s / raw_s, 3),
                'runs_s': {'pulse': [round(x[0], 2) for x in pulse_runs], 'raw': [round(x[0], 2) for x in raw_runs]}}
    finally:
        eng.close(); shutil.rmtree(tmp, ignore_errors=True)


def run_distilabel(a, shared_llm=None):
    "distilabel's answers + UltraFeedback judgements of the workload; on `shared_llm` (a running `vllm.LLM`) if given."
    res = {'n_prompts': a.n, 'n_critics': a.critics, 'max_new_tokens': a.max_new_tokens}
    try:
        import distilabel
        from distilabel.models.llms import vLLM
        from distilabel.steps.tasks import TextGeneration, UltraFeedback
        res['version'] = distilabel.__version__
    except Exception as e:
        return {**res, 'error': f'import failed: {type(e).__name__}: {e}', 'fix': 'pip install distilabel'}
    from pulse_nb.models import resolve_model
    recs = workload(a.n)
    import contextlib, vllm
    from unittest import mock
    compat = contextlib.nullcontext()
    if 'logits_processors' not in inspect.signature(vllm.SamplingParams).parameters:
        # distilabel 1.5.3 always passes `logits_processors=[...]`, a SamplingParams argument newer vLLM removed. With
        # no structured output that list is empty, so dropping it changes nothing; a non-empty one is refused. The
        # stand-in is in place only while distilabel generates (vLLM's own modules keep the class).
        plain = vllm.SamplingParams
        def sampling_params(*args, logits_processors=None, **kw):
            if logits_processors: raise RuntimeError('distilabel asked for logits processors, which this vLLM no longer takes')
            return plain(*args, **kw)
        compat = mock.patch.object(vllm, 'SamplingParams', sampling_params)
        res['compat'] = ('vllm.SamplingParams no longer takes logits_processors; distilabel passes an empty list, '
                         'which the bench drops')
    # side by side in one process: distilabel's vLLM LLM wraps the engine pulse-nb runs on (its `load` builds
    # `vllm.LLM(...)`; the stand-in returns the running one), so both systems use the very same engine
    share = mock.patch.object(vllm, 'LLM', lambda *args, **kw: shared_llm) if shared_llm is not None else contextlib.nullcontext()
    try:
        cuda = __import__('torch').cuda.is_available()
        kw = {} if cuda else dict(gpu_memory_utilization=0.3)
        t = time.perf_counter()
        llm = vLLM(model=str(resolve_model(a.model)), extra_kwargs=kw, dtype=a.dtype or 'auto',  # no GPU: skip distilabel's pynvml device placement
                   generation_kwargs=dict(max_new_tokens=a.max_new_tokens, temperature=0.7), disable_cuda_device_placement=not cuda)
        gen = TextGeneration(llm=llm)
        with share: gen.load()
        start = time.perf_counter() - t
        judge = UltraFeedback(llm=gen.llm, aspect='overall-rating', num_generations=a.critics,
                              use_default_structured_output=False)
        with mock.patch.object(type(llm), 'load', lambda self: None): judge.load()  # shares gen's engine: no second vLLM
        with compat:
            t = time.perf_counter()
            answers = [r for batch in gen.process([{'instruction': r['prompt']} for r in recs]) for r in batch]
            t_ans = time.perf_counter() - t
            judged = [r for batch in judge.process([{'instruction': r['instruction'], 'generations': [r['generation']]}
                                                    for r in answers]) for r in batch]
            wall = time.perf_counter() - t
        tok = lambda rows, key: sum(sum(s.get('output_tokens', [0]) if isinstance(s.get('output_tokens'), list)
                                        else [s.get('output_tokens', 0)])
                                    for r in rows for s in (lambda m: m if isinstance(m, list) else [m])(
                                        (r.get('distilabel_metadata') or {}).get(f'statistics_{key}', {})))
        ratings = [x for r in judged for x in (r.get('ratings') or []) if x is not None]
        gen_tokens = tok(answers, gen.name) + tok(judged, judge.name)
        if shared_llm is None: a._distilabel_llm = llm._model  # its engine, for the next run in this process
        return {**res, 'engine_start_s': round(start, 1), 'wall_s': round(wall, 2), 'answers_s': round(t_ans, 2),
                'gen_tokens': gen_tokens, 'tok_per_s': round(gen_tokens / wall, 1) if gen_tokens else None,
                'answers': len(answers), 'judgements': len(judged), 'ratings_parsed': len(ratings),
                'ratings_expected': sum(len(r.get('generations') or []) for r in judged)}
    except Exception as e:
        return {**res, 'error': f'{type(e).__name__}: {e}', 'where': traceback.format_exc().strip().splitlines()[-3:]}


def pulse_once(a, eng, recs, out):
    "One pulse-nb run of the workload on `eng`: (seconds, generated tokens, critiques, scores parsed)."
    from review import Recorder, reset_cache
    from pulse_nb.review import review, load_run
    rec = Recorder(eng); reset_cache(eng)
    t = time.perf_counter()
    review(recs, rec, n_critics=a.critics, out_dir=out, max_new_tokens=a.max_new_tokens, temperature=0.7,
           score_mode=a.score_mode, batch_size=None, stop_after='critiques', progress=False)
    s = time.perf_counter() - t
    crit = load_run(out)['critiques']
    return s, sum(c[4] for c in rec.calls if c[0] == 'generate'), len(crit), sum(c['parsed'] for c in crit)


def run_both(a):
    "pulse-nb and distilabel side by side in one process, on one vLLM engine: pulse, distilabel, distilabel, pulse."
    from pulse_nb.engines import make_engine
    from review import cpu_line, reset_cache
    if a.distilabel_path: sys.path.append(a.distilabel_path)  # after the project's packages: distilabel's extras only
    recs = workload(a.n)
    spec = a.pulse_engine + (f':{a.model}' if a.model else '') + (f';dtype={a.dtype}' if a.dtype else '')
    t = time.perf_counter(); eng = make_engine(spec); start = time.perf_counter() - t
    shared = getattr(eng, 'llm', None)  # a vLLM engine: distilabel runs on it too
    tmp = tempfile.mkdtemp(prefix='pulse-peers-')
    runs = {'pulse': [], 'distilabel': []}
    try:
        eng.generate([[{'role': 'user', 'content': 'Hi'}]])  # warm-up, as distilabel's first batch also pays it
        for k, who in enumerate(['pulse', 'distilabel', 'distilabel', 'pulse']):
            reset_cache(eng)  # neither side starts with the other's prompts cached
            if who == 'pulse':
                s, toks, n, parsed = pulse_once(a, eng, recs, f'{tmp}/run{k}')
                runs['pulse'].append({'wall_s': round(s, 2), 'gen_tokens': toks, 'critiques': n, 'scores_parsed': parsed})
            else:
                d = run_distilabel(a, shared or getattr(a, '_distilabel_llm', None))  # one distilabel engine per process
                if 'error' in d: return {'error': f'distilabel: {d["error"]}', 'runs': runs, 'where': d.get('where')}
                runs['distilabel'].append({k: d[k] for k in ('wall_s', 'gen_tokens', 'judgements', 'ratings_parsed',
                                                             'version', 'compat') if k in d})
            print(f'[{who}] {runs[who][-1]}', file=sys.stderr, flush=True)
        mean = {w: sum(r['wall_s'] for r in v) / len(v) for w, v in runs.items()}
        return {'n_prompts': len(recs), 'n_critics': a.critics, 'max_new_tokens': a.max_new_tokens, 'score_mode': a.score_mode,
                'pulse_engine': spec, 'dtype': a.dtype or 'engine default', 'shared_engine': shared is not None, 'pulse_capabilities': eng.capabilities,
                'engine_start_s': round(start, 1), 'cpu': cpu_line(), 'runs': runs,
                'mean_wall_s': {w: round(v, 2) for w, v in mean.items()},
                'distilabel_over_pulse': round(mean['distilabel'] / mean['pulse'], 3)}
    finally:
        eng.close(); shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--system', choices=['pulse', 'distilabel', 'both'], required=True)
    ap.add_argument('--pulse-engine', default='vllm', help="pulse-nb's engine for --system both: vllm or auto")
    ap.add_argument('--distilabel-path', default=os.environ.get('DISTILABEL_PATH', ''),
                    help='a folder with distilabel 1.5.3 (pip install --target DIR distilabel==1.5.3), for --system both')
    ap.add_argument('--n', type=int, default=64); ap.add_argument('--critics', type=int, default=2)
    ap.add_argument('--max-new-tokens', type=int, default=64); ap.add_argument('--model', default=None)
    ap.add_argument('--score-mode', default='text', choices=['text', 'logprobs'])
    ap.add_argument('--dtype', default=None, help="both systems' weights dtype, e.g. bfloat16 (default: each engine's own; "
                    "the embedded models are stored in float32)")
    a = ap.parse_args()
    out = {'pulse': run_pulse, 'distilabel': run_distilabel, 'both': run_both}[a.system](a)
    print('RESULT ' + json.dumps({'bench': 'peers', 'system': a.system, **out}))


if __name__ == '__main__':
    main()
