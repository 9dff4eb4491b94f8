"""Time the main job: `pulse run` (two families, the default rounds) and `pulse run --quick`, each in a fresh run
directory, as a user runs them. Reports the wall time of each command, and per round and stage the seconds and peak
memory from each round's `round.json`, plus the CPU flags that decide which engine is fast here.

    python bench/loop.py                      # both budgets, and the quick run again in float32
    python bench/loop.py --only quick         # or: quick-fp32, default, or several: quick,default
    python bench/loop.py --set review.per_round=8  # extra `--set` overrides for both runs
    python bench/loop.py --only quick-fp32 --avx2  # as on an AVX2-only CPU: kernels held to AVX2 (recorded in the result)

Ends with a `RESULT {json}` line (read by bench/run_all.py).
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

BUDGET_S = {'quick': 180, 'quick-fp32': 180, 'default': 900}  # the targets on 2 CPU cores
KINDS = {'quick': ['--quick'], 'quick-fp32': ['--quick', '--set', 'pool.dtype=float32'], 'default': []}  # quick-fp32: what a CPU without bf16 runs


# what an AVX2-only CPU runs, on a newer one: PyTorch's own kernels, oneDNN's and MKL's held to AVX2
AVX2_ONLY = {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2', 'MKL_ENABLE_INSTRUCTIONS': 'AVX2'}
ISA_LIMITS = tuple(AVX2_ONLY)  # the variables a result records when set


def cpu_info() -> dict:
    flags = set()
    model = ''
    for line in Path('/proc/cpuinfo').read_text().splitlines():
        if line.startswith('flags'): flags |= set(line.split(':', 1)[1].split())
        if line.startswith('model name'): model = line.split(':', 1)[1].strip()
    keep = sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma', 'f16c')))
    limits = {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)}  # kernels held to an older instruction set
    return {'model': model, 'cores': os.cpu_count(), 'flags': keep, **({'isa_limits': limits} if limits else {})}


def one(kind: str, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f'pulse-bench-{kind}-'))/'run'
    cmd = [sys.executable, '-m', 'pulse_nb.cli', 'run', '--out', str(out), *KINDS[kind], *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'TOKENIZERS_PARALLELISM': 'false'})
    wall = time.perf_counter() - t0
    if p.returncode != 0: return {'error': p.stderr.strip().splitlines()[-1:] or ['?'], 'wall_s': round(wall, 1)}
    rounds = [json.loads((out/f'round-{r}'/'round.json').read_text()) for r in range(1, 100)
              if (out/f'round-{r}'/'round.json').exists()]
    return {'command': ' '.join(cmd[1:]), 'wall_s': round(wall, 1), 'budget_s': BUDGET_S[kind],
            'within_budget': wall <= BUDGET_S[kind],
            'peak_rss_gib': round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
            'rounds': [{'round': r['round'], 'seconds': r['seconds'], 'peak_rss_gib': r['peak_rss_gib'], 'n_pairs': r['n_pairs'],
                        'review': {k: r['review'].get(k) for k in ('revision_win_rate', 'label_accuracy', 'n_checkable_pairs')},
                        'eval': r.get('eval')} for r in rounds],
            'run_dir': str(out)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--only', default=None, help='comma-separated subset of: ' + ', '.join(KINDS))
    ap.add_argument('--set', action='append', default=[])
    ap.add_argument('--avx2', action='store_true', help='hold PyTorch, oneDNN and MKL kernels to AVX2, as on an AVX2-only CPU')
    a = ap.parse_args()
    kinds = a.only.split(',') if a.only else list(KINDS)
    if bad := [k for k in kinds if k not in KINDS]: ap.error(f'unknown run kind {bad[0]!r}; choose from {", ".join(KINDS)}')
    if a.avx2: os.environ.update(AVX2_ONLY)
    extra = [x for s in a.set for x in ('--set', s)]
    res = {'cpu': cpu_info()}
    for kind in kinds:
        res[kind] = one(kind, extra)
        print(kind, json.dumps(res[kind])[:2000], flush=True)
    print('RESULT ' + json.dumps(res))


if __name__ == '__main__': main()
