"""Run every benchmark and write `bench/results.md` (one command).

    python bench/run_all.py                 # the full sizes of the issues (hours on a 2-core CPU without AVX-512 bf16)
    python bench/run_all.py --profile quick # smaller sizes, same measurements (about 4 hours on a 2-core CPU)
    python bench/run_all.py --only engines,train
    python bench/run_all.py --profile quick --only review-critique --tag xeon-amx   # kept beside, as `review-critique@xeon-amx`

Each benchmark runs in its own process (one engine start each) and ends with a `RESULT {json}` line; the JSON of every
benchmark goes to `bench/results.json` and a readable summary to `bench/results.md`, rewritten after each benchmark, so
an interrupted run keeps what finished. `bench/conditions.md` (hand-written: what else ran, what was
stopped) is appended to `results.md`. Ratios are measured side by side inside one benchmark run, never across runs.
`--tag MACHINE` stores a run as `name@MACHINE` next to the untagged one (a rerun on another kind of CPU does not replace
the first), and the targets table gives each its own row.
"""
import argparse, datetime, json, os, platform, subprocess, sys, tempfile, time

DISTILABEL = os.environ.get('DISTILABEL_PATH') or os.path.join(tempfile.gettempdir(), 'distilabel')  # its checkout
from pathlib import Path

HERE = Path(__file__).resolve().parent
POOL = 'hf:qwen2.5-coder-0.5b-instruct,hf:smollm2-135m-instruct,hf:qwen2.5-coder-0.5b-instruct'  # configs/cpu-pool.yaml: actor, then critics
PROFILES = {
    'full': {'engines': ['--n', '256', '--max-new-tokens', '64', '--naive', '16'],
             'review': ['--engine', 'vllm', '--n', '128', '--subset', '16', '--max-new-tokens', '64'],
             'peers-pulse': ['--system', 'pulse', '--n', '64', '--critics', '2', '--max-new-tokens', '64'],
             'peers-distilabel': ['--system', 'distilabel', '--n', '64', '--critics', '2', '--max-new-tokens', '64'],
             'train': ['--steps', '8', '--rounds', '2'],
             'loop': [],
             'peers-both': ['--system', 'both', '--n', '64', '--critics', '2', '--max-new-tokens', '64', '--pulse-engine', 'vllm',
                            '--distilabel-path', DISTILABEL],
             'review-critique': ['--engine', 'vllm', '--n', '64', '--critics', '2', '--max-new-tokens', '64', '--critique-ratio',
                                 '--repeats', '12', '--layouts', '--skip-review', '--skip-naive'],
             'peers-both-hf': ['--system', 'both', '--n', '64', '--critics', '2', '--max-new-tokens', '64', '--pulse-engine', 'hf',
                               '--dtype', 'bfloat16', '--distilabel-path', DISTILABEL],
             'review-critique-hf': ['--engine', 'hf', '--n', '64', '--critics', '2', '--max-new-tokens', '64', '--critique-ratio',
                                    '--skip-review', '--skip-naive'],
             'review-pool': ['--pool', ';dtype=fast,'.join(POOL.split(',')) + ';dtype=fast', '--n', '32', '--critics', '2', '--max-new-tokens', '128'],
             'scaling': ['--engine', 'vllm', '--ns', '32,64,128,256', '--ks', '1,2,4', '--max-new-tokens', '32']},
    'quick': {'engines': ['--n', '256', '--max-new-tokens', '32', '--naive', '16'],
              'review': ['--engine', 'vllm', '--n', '128', '--subset', '8', '--max-new-tokens', '32'],
              'peers-pulse': ['--system', 'pulse', '--n', '32', '--critics', '2', '--max-new-tokens', '32'],
              'peers-distilabel': ['--system', 'distilabel', '--n', '32', '--critics', '2', '--max-new-tokens', '32'],
              'train': ['--steps', '6', '--rounds', '2'],
              'loop': [],
              'peers-both': ['--system', 'both', '--n', '32', '--critics', '2', '--max-new-tokens', '32', '--pulse-engine', 'vllm',
                             '--distilabel-path', DISTILABEL],
              'review-critique': ['--engine', 'vllm', '--n', '32', '--critics', '2', '--max-new-tokens', '64', '--critique-ratio',
                                  '--repeats', '12', '--layouts', '--skip-review', '--skip-naive'],
              'peers-both-hf': ['--system', 'both', '--n', '32', '--critics', '2', '--max-new-tokens', '32', '--pulse-engine', 'hf',
                                '--dtype', 'bfloat16', '--distilabel-path', DISTILABEL],
              'review-critique-hf': ['--engine', 'hf', '--n', '32', '--critics', '2', '--max-new-tokens', '64', '--critique-ratio',
                                     '--skip-review', '--skip-naive'],
              'review-pool': ['--pool', ';dtype=fast,'.join(POOL.split(',')) + ';dtype=fast', '--n', '16', '--critics', '2', '--max-new-tokens', '64'],
              'scaling': ['--engine', 'auto', '--ns', '32,64', '--ks', '1,2,4', '--max-new-tokens', '16'],
              'scaling-n128': ['--engine', 'auto', '--ns', '128', '--ks', '1,2,4', '--max-new-tokens', '16'],
              'scaling-n256': ['--engine', 'auto', '--ns', '256', '--ks', '1,2,4', '--max-new-tokens', '16'],
              'scaling-vllm': ['--engine', 'vllm', '--ns', '32,64,128,256', '--ks', '1,2,4', '--max-new-tokens', '16',
                               '--cells', str(HERE/'cells'/'scaling-vllm.jsonl')],
              # the two-family pool; N = 256 apart (it costs as much as the rest); both resume from one cells file
              'scaling-pool': ['--pool', POOL, '--ns', '32,64,128', '--ks', '1,2,4', '--max-new-tokens', '16',
                               '--cells', str(HERE/'cells'/'scaling-pool.jsonl')],
              'scaling-pool-n256': ['--pool', POOL, '--ns', '256', '--ks', '1,2,4', '--max-new-tokens', '16',
                                    '--cells', str(HERE/'cells'/'scaling-pool.jsonl')]},
}
def script(name: str) -> str:
    "The script behind a benchmark name: the part before the first dash (`peers-pulse` -> `peers.py`, `loop@xeon` -> `loop.py`)."
    return name.split('@')[0].split('-')[0] + '.py'


def run_one(name, args, log):
    t, started = time.perf_counter(), datetime.datetime.now().isoformat(timespec='minutes')
    p = subprocess.run([sys.executable, str(HERE/script(name)), *args], capture_output=True, text=True,
                       env={**os.environ, 'VLLM_ENABLE_V1_MULTIPROCESSING': '0'})
    log.write_text(p.stdout + '\n--- stderr ---\n' + p.stderr[-20000:])
    res = [l[len('RESULT '):] for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    out = json.loads(res[-1]) if res else {'error': f'exit {p.returncode}: ' + (p.stderr.strip().splitlines() or ['?'])[-1]}
    return {**out, 'args': args, 'seconds': round(time.perf_counter() - t, 1),
            'ran_at': started}


def peers_yields(r) -> str:
    "What each side of a `peers-both` run produced: generated tokens and judgements that carry a score, per run."
    p, d = r['runs'].get('pulse') or [], r['runs'].get('distilabel') or []
    if not p or not d or 'scores_parsed' not in p[0]: return ''
    one = lambda runs, tok, got, of: ', '.join(f'{x[tok]} tokens, {x[got]}/{x[of]} scored' for x in runs)
    return (f'; per run, pulse-nb ({r.get("score_mode", "text")} scores): {one(p, "gen_tokens", "scores_parsed", "critiques")}; '
            f'distilabel (ratings from its text): {one(d, "gen_tokens", "ratings_parsed", "judgements")}')


def fmt(name, r) -> str:
    "A few markdown lines per benchmark."
    name = name.split('@')[0]  # a tagged rerun (`review-critique@xeon-amx`) reads like its section
    if 'error' in r: return f'**{name}**: did not finish: `{r["error"]}`'
    if name == 'engines':
        rows = '\n'.join(f'| {k} | {v["tok_per_s"]} | {v["tokens"]} | {v["gen_s"]} | {v["start_s"] or ""} |' for k, v in r['rows'].items())
        return (f'CPU: {r["cpu"]}; {r["n_prompts"]} prompts, greedy, {r["max_new_tokens"]} new tokens\n\n'
                f'| engine | tok/s | tokens | gen s | start s |\n|---|---|---|---|---|\n{rows}\n\n'
                f'HFEngine / naive loop: **{r["hf_over_naive"]}x**' +
                (f' (attention `{r["hf_attention"]}`; {r["hf_over_stock_attention"]}x its stock-attention run, '
                 f'{r["identical_to_stock"]}/{r["n_prompts"]} completions identical)' if 'hf_over_stock_attention' in r else '') +
                (f'; VLLMEngine / naive: **{r["vllm_over_naive"]}x**; VLLMEngine / raw vLLM: **{r["vllmengine_over_raw"]}**'
                 if 'vllm_over_naive' in r else ''))
    if name.startswith('review-critique'):
        c, l = r.get('critique_ratio') or {}, r.get('layouts') or {}
        return (f'{c.get("n_convs")} critiques on `{r["engine"]}` ({r["max_new_tokens"]} new tokens; {r["cpu"]}): the critique '
                f'stage (feedback + score) over generating the same feedback alone: **{c.get("critique_over_alone")}** '
                f'(ratio of means; paired runs {"{} [95% CI {}, {}]".format(*paired_ratio(c))}; seconds {c.get("runs_s")})' + (
                f'; labels of the shared-prefix layout vs persona-first: agreement '
                f'**{l.get("agreement_new_vs_old_layout")}** on {l.get("n_compared_old")} pairs (the new layout against itself '
                f'with another seed: {l.get("agreement_new_vs_new_other_seed")})' if l else ''))
    if name.startswith('peers-both'):
        m = r['mean_wall_s']
        how = (f'one `{r["pulse_engine"]}` engine shared' if r.get('shared_engine', True) else
               f'pulse-nb on `{r["pulse_engine"]}`, distilabel on its own vLLM engine in the same process')
        return (f'{r["n_prompts"]} prompts, an answer and {r["n_critics"]} judgements each, {r["max_new_tokens"]} new tokens, '
                f'{how}, dtype {r.get("dtype", "engine default")}, runs in the order pulse, distilabel, distilabel, pulse ({r["cpu"]}): '
                f'pulse-nb {m["pulse"]} s, distilabel {m["distilabel"]} s: distilabel / pulse-nb wall **{r["distilabel_over_pulse"]}**'
                + peers_yields(r))
    if name == 'review-pool':
        per = '; '.join(f'`{k}`: {v["gen_tokens"]} tokens, {v["raw_generation_s"]} s raw generation + {v["raw_score_readouts_s"]} s '
                        f'read-outs' for k, v in r['per_model'].items())
        return (f'{r["n_prompts"]} prompts, {r["n_critics"]} critics, {r["max_new_tokens"]} new tokens ({r["cpu"]}), pool '
                f'{len(r["per_model"])} models: the review {r["review_s"]} s against the sum of each model\'s raw generation of '
                f'the same tokens {r["raw_generation_sum_s"]} s (**{r["review_over_raw_generation"]}x**; with the score read-outs '
                f'replayed too, {r["raw_with_readouts_sum_s"]} s: {r["review_over_raw_with_readouts"]}x). {per}')
    if name == 'review':
        s = (f'{r["n_prompts"]} prompts x {r["n_critics"]} critics on `{r["engine"]}` ({r["max_new_tokens"]} new tokens): '
             f'PULSE {r["pulse_s"]} s vs the same calls on raw vLLM {r["raw_s"]} s: overhead **{r["overhead_frac"]:.1%}** '
             f'of wall time ({r["overhead_frac_per_token"]:.1%} per generated token)')
        if 'naive_over_batched' in r:
            s += f'; a per-prompt loop on {r["subset"]} prompts is **{r["naive_over_batched"]}x** slower than stage batching'
        return s
    if name.startswith('peers'):
        if r.get('system') == 'pulse':
            return (f'pulse-nb {r["pulse"]["wall_s"]} s ({r["pulse"]["tok_per_s"]} tok/s) vs raw vLLM on the same calls '
                    f'{r["raw_vllm"]["wall_s"]} s ({r["raw_vllm"]["tok_per_s"]} tok/s): pulse/raw wall **{r["pulse_over_raw_wall"]}**; '
                    f'{r["pulse"]["scores_parsed"]}/{r["pulse"]["critiques"]} critic scores parsed ({r["score_mode"]} mode)')
        return (f'distilabel {r.get("version")}: {r["wall_s"]} s ({r["tok_per_s"]} tok/s) for {r["answers"]} answers and '
                f'{r["judgements"]} judgements; {r["ratings_parsed"]}/{r["ratings_expected"]} ratings parsed')
    if name.startswith('train'):
        m = r.get('peak_rss_gib') or r.get('peak_gpu_gib')
        return (f'step time pulse/stock **{r["ratio_pulse_over_stock"]}** ({r["step_s"]}); tokens/s {r["tok_per_s"]}; '
                f'loss curves max |diff| {r["loss_curve_max_abs_diff"]:.1e}; peak memory {m} GiB')
    if name.startswith('gpu_train'):
        rows = '\n'.join(f'| {x["size"]} | {x["mode"]} | {x["trainer"]} | {x["step_s"]:.4f} | {x["tokens_per_s"]:.0f} | '
                         f'{x.get("peak_gib", "")} |' for x in r['rows'])
        ratios = ', '.join(f'{k}: **{v}**' for k, v in r['ratios'].items())
        return (f'device {r["device"]}{" (toy size)" if r["toy"] else ""}, {r["steps"]} steps ({r["warmup"]} warm-up), '
                f'{r["tokens_per_step"]} tokens per step\n\n| size | mode | trainer | step s | tokens/s | peak GiB |\n'
                f'|---|---|---|---|---|---|\n{rows}\n\npulse/stock tokens/s: {ratios}')
    if name == 'loop':
        cmds = {'quick': ' --quick', 'quick-fp32': ' --quick --set pool.dtype=float32', 'default': ''}
        part = lambda k, x: (f'`pulse run{cmds[k]}`: ' + (f'did not finish: {x["error"]}' if 'error' in x else
                             f'**{x["wall_s"]} s** (budget {x["budget_s"]} s), peak RSS {x["peak_rss_gib"]} GiB; per round: ' +
                             '; '.join(f'round {y["round"]} {y["seconds"]} (peak GiB {y["peak_rss_gib"]})' for y in x['rounds'])))
        held = ', '.join(f'{k}={v}' for k, v in (r['cpu'].get('isa_limits') or {}).items())
        return (f'CPU {r["cpu"]["model"]}, {r["cpu"]["cores"]} cores, flags {" ".join(r["cpu"]["flags"])}' +
                (f'; kernels held to an older instruction set: {held}' if held else '') + '\n\n') + \
               '\n\n'.join(part(k, r[k]) for k in cmds if r.get(k))
    if name.startswith('scaling'):
        ns, ks = sorted({x['n'] for x in r['rows']}), sorted({x['k'] for x in r['rows']})
        cell = {(x['n'], x['k']): x for x in r['rows']}
        head = '| K \\ N | ' + ' | '.join(map(str, ns)) + ' |\n|---|' + '---|' * len(ns)
        body = '\n'.join(f'| {k} | ' + ' | '.join(f'{cell[n, k]["wall_s"]} s ({cell[n, k]["s_per_generation"]} s/gen)'
                                                   if (n, k) in cell else '' for n in ns) + ' |' for k in ks)
        stages = '\n'.join(f'- N={x["n"]}, K={x["k"]}: ' + ', '.join(f'{s} {v} s' for s, v in x['stage_s'].items())
                           for x in r['rows'] if 'stage_s' in x)
        what = (f'the two-family pool {", ".join(f"`{x}`" for x in r["pool"])} (actor first; dtype `{r.get("dtype")}`)'
                if r.get('pool') else f'engine `{r["engine"]}`')
        return (f'{what} (start {r.get("engine_start_s")} s), {r["max_new_tokens"]} new tokens' +
                (f', {r["cpu"]}' if r.get('cpu') else '') + ', '
                f'wall time of review + pairs:\n\n{head}\n{body}' + (f'\n\nSeconds per stage:\n\n{stages}' if stages else ''))
    return '`' + json.dumps(r) + '`'


def paired_ratio(c: dict) -> tuple:
    "A critique-ratio result's mean ratio of paired runs (the k-th critique run over the k-th alone run, ABBA) and its 95 % t-interval."
    import statistics
    T975 = [12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,   # Student t, 97.5 %, df 1..30
            2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
            2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423]
    a, b = (c.get('runs_s') or {}).get('critique') or [], (c.get('runs_s') or {}).get('alone') or []
    r = [x / y for x, y in zip(a, b)]
    if len(r) < 2: return (round(r[0], 3) if r else None), None, None   # one pair: no interval
    m, h = statistics.fmean(r), T975[min(len(r), 31) - 2] * statistics.stdev(r) / len(r) ** 0.5   # df > 30: df 30's (wider)
    return round(m, 3), round(m - h, 3), round(m + h, 3)


def ratio_row(what, c, limit, section):
    "A `targets` row for an upper limit on a ratio measured in paired runs: met when the whole 95 % interval is under it."
    m, lo, hi = paired_ratio(c or {})
    if m is None: return (what, 'not measured', None, section)
    if lo is None: return (what, f'{m}x (one pair, no interval)', 'undecided', section)
    ok = True if hi <= limit else False if lo > limit else 'undecided'
    return (what, f'{m}x [95% CI {lo}, {hi}; {len(c["runs_s"]["critique"])} pairs]', ok, section)


def target_rows(r) -> list[tuple]:
    """The speed issue's targets, each as (target, measured, met: True/False/None for not measured, section), reading each
    section's result with `r(name)`."""
    def row(what, value, ok, section, text='{}x'):
        return (what, 'not measured' if value is None else text.format(value), None if value is None else ok(value), section)
    train, gpu = r('train'), r('gpu_train')
    gpu_ratios = {} if gpu.get('toy', True) else gpu.get('ratios') or {}  # a toy-size GPU run measures nothing
    return [
        row('pulse-nb >= 1.3x faster than distilabel 1.5.3 (same workload, one engine)',
            r('peers-both').get('distilabel_over_pulse'), lambda v: v >= 1.3, 'peers-both'),
        ratio_row('critique stage <= 1.15x generating the same feedback alone (vLLM: prefix cache)',
                  r('review-critique').get('critique_ratio'), 1.15, 'review-critique'),
        ratio_row('critique stage <= 1.15x generating the same feedback alone (transformers: read-out from the KV cache)',
                  r('review-critique-hf').get('critique_ratio'), 1.15, 'review-critique-hf'),
        *[row(f'`pulse run --quick` <= 180 s on 2 cores ({how})', (r('loop').get(key) or {}).get('wall_s'),
              lambda v: v <= 180, 'loop', '{} s')
          for key, how in (('quick', 'the pool in bfloat16 where the CPU has avx512_bf16'),
                           ('quick-fp32', 'float32, as on a CPU without bfloat16 instructions'))],
        row('CPU training step time <= 1.0x stock TRL, identical losses', train.get('ratio_pulse_over_stock'),
            lambda v: v <= 1.0, 'train', '{}x, largest loss difference ' + f'{train.get("loss_curve_max_abs_diff", 0):.1e}'),
        *[row(f'GPU: >= {need}x stock TRL tokens/s at {params} full fine-tuning', gpu_ratios.get(f'{size}/full'),
              lambda v, need=need: v >= need, 'gpu_train')
          for size, params, need in (('large', '0.89B', 1.5), ('small', '0.37B', 2.0))]]


def targets(results) -> list[tuple]:
    "`target_rows` of `results`; a section's reruns on other machines (`section@machine`) follow its row, one row each (what they measured)."
    out = []
    for i, row in enumerate(target_rows(lambda name: results.get(name) or {})):
        out.append(row)
        for tagged in sorted(k for k in results if k.startswith(row[3] + '@')):
            what, value, ok, _ = target_rows(lambda name: (results.get(tagged) or {}) if name == row[3] else {})[i]
            if value != 'not measured': out.append((f'{what} [{tagged.split("@", 1)[1]}]', value, ok, tagged))
    return out


def targets_table(results) -> list[str]:
    "The markdown table of `targets`."
    mark = {True: 'met', False: '**not met**', None: 'not measured', 'undecided': '**undecided** (the CI includes the target)'}
    return ['## Targets', '', '| target | measured | | section |', '|---|---|---|---|',
            *[f'| {w} | {v} | {mark[ok]} | {s} |' for w, v, ok, s in targets(results)], '']


def write(results, path, profile):
    lines = [f'# Benchmarks', '', f'Written by `python bench/run_all.py --profile {profile}` on {datetime.date.today()}, '
             f'{platform.machine()}, {os.cpu_count()} CPUs. Raw numbers: `bench/results.json`; logs: `bench/logs/`.', '']
    lines += targets_table(results)
    for name, r in results.items():
        when = [f'_Ran {r["ran_at"].replace("T", " ")}, {r["seconds"]} s._', ''] if 'ran_at' in r else []
        lines += [f'## {name}', '', fmt(name, r), '', *when]
    p, d = results.get('peers-pulse', {}), results.get('peers-distilabel', {})
    if p.get('pulse') and d.get('wall_s'):
        lines += ['## peers: pulse-nb vs distilabel', '',
                  f'Same workload ({p["n_prompts"]} prompts, an answer and {p["n_critics"]} critiques each, '
                  f'{p["max_new_tokens"]} new tokens, vLLM CPU build); separate processes, engine start excluded: '
                  f'distilabel / pulse-nb wall **{d["wall_s"] / p["pulse"]["wall_s"]:.2f}** '
                  f'({d["wall_s"]} s vs {p["pulse"]["wall_s"]} s); tokens/s {d["tok_per_s"]} vs {p["pulse"]["tok_per_s"]}.', '']
    notes = path.parent/'conditions.md'  # hand-written notes on the machine's state during the runs, kept across rewrites
    if notes.exists(): lines += [notes.read_text().rstrip(), '']
    path.write_text('\n'.join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--profile', choices=list(PROFILES), default='full')
    ap.add_argument('--only', default=None, help='comma-separated subset of: ' + ', '.join(PROFILES['quick']))
    ap.add_argument('--tag', default=None, help='store the results as `name@TAG` (a rerun on another machine, kept beside the first)')
    ap.add_argument('--args', default=None, help="the script's arguments instead of the profile's (one section with --only)")
    ap.add_argument('--gpu', action='store_true', help='also run the GPU training benchmark (bench/gpu_train.py, both sizes and modes)')
    a = ap.parse_args()
    todo = dict(PROFILES[a.profile])
    if a.gpu: todo['gpu_train'] = ['--steps', '40', '--warmup', '5']
    if a.only: todo = {k: v for k, v in todo.items() if k in a.only.split(',')}
    if a.args is not None:
        if len(todo) != 1: ap.error('--args needs exactly one section (--only NAME)')
        todo = {k: a.args.split() for k in todo}
    (HERE/'logs').mkdir(exist_ok=True)
    jpath = HERE/'results.json'
    results = json.loads(jpath.read_text()) if jpath.exists() else {}
    for name, args in todo.items():
        print(f'[{time.strftime("%H:%M:%S")}] {name}: python bench/{script(name)} {" ".join(args)}', flush=True)
        key = f'{name}@{a.tag}' if a.tag else name
        results[key] = run_one(name, args, HERE/'logs'/f'{key}.log')
        print('   ', fmt(key, results[key]).splitlines()[-1], flush=True)
        jpath.write_text(json.dumps(results, indent=1))
        write(results, HERE/'results.md', a.profile)


if __name__ == '__main__':
    main()
