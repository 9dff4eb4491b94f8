"""bench/gpu_train.py runs at toy size on CPU (so the GPU benchmark cannot rot): both trainers, full and LoRA, the
table, the GPU plan with the model sizes of issue 21.4, and the RESULT line; run, as on the GPU machine, through
bench/gpu_device.sh, which installs missing packages from carried wheels and returns the results in $OUT."""
import json, math, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false', 'CUDA_VISIBLE_DEVICES': ''}


def bench(*args):
    return subprocess.run([sys.executable, str(ROOT/'bench'/'gpu_train.py'), *args], env=ENV, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def device(*args, out=None):
    "bench/gpu_device.sh with this interpreter, results to `out` (the device machine's $OUT)."
    env = {**ENV, 'PYTHON': sys.executable, **({'OUT': str(out)} if out else {})}
    return subprocess.run(['bash', str(ROOT/'bench'/'gpu_device.sh'), *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_gpu_bench_runs_at_toy_size(tmp_path):
    p = device('--toy', out=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(next(l for l in p.stdout.splitlines() if l.startswith('RESULT '))[7:])
    assert json.loads((tmp_path/'gpu_train.json').read_text()) == res    # what comes back from the device machine
    assert 'RESULT ' in (tmp_path/'gpu_train.log').read_text()
    got = {(r['mode'], r['trainer']) for r in res['rows']}
    assert got == {('full', 'stock'), ('full', 'pulse'), ('full', 'pulse +precomputed ref'), ('lora', 'stock'), ('lora', 'pulse')}
    for r in res['rows']:
        assert r['step_s'] > 0 and math.isfinite(r['tokens_per_s']) and len(r['losses']) == res['steps']
        assert all(math.isfinite(x) for x in r['losses'])
    full = {r['trainer']: r['losses'] for r in res['rows'] if r['mode'] == 'full'}
    assert full['stock'] == full['pulse'] == full['pulse +precomputed ref']   # the same DPO loss on the same batches
    assert set(res['ratios']) == {'toy/full', 'toy/lora'}
    # what the GPU run measures: the two model sizes of the issue, their FLOPs per token
    assert 'small 0.374B (N 0.341B)' in p.stdout and 'large 0.886B (N 0.821B)' in p.stdout
    assert '6.56 GFLOP/token' in p.stdout        # 8N, N = 0.821B: large, full fine-tuning


def test_gpu_bench_without_gpu_says_so(tmp_path):
    p = bench('--sizes', 'small', '--steps', '2')
    assert p.returncode != 0 and 'no GPU here; run with --toy' in p.stderr
    p = device(out=tmp_path)     # the device script's full run: stops before touching bench/results.*
    assert p.returncode != 0 and 'gpu_device.sh: no GPU here' in p.stderr and not any(tmp_path.iterdir())
