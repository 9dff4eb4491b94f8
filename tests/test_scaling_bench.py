"""bench/scaling.py with a pool (issue 21.5's grid runs on the two-family pool): at toy size on the embedded model, as
two specs that make two engines, so the pool is built as `pulse run` builds it; each cell's run (its stages, the
actor's tokens, its pairs), and `--cells` resuming a grid without loading a model."""
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
POOL = 'hf:smollm2-135m-instruct;dtype=float32,hf:smollm2-135m-instruct;dtype=bfloat16,hf:smollm2-135m-instruct;dtype=float32'


def scaling(*args):
    p = subprocess.run([sys.executable, str(ROOT/'bench'/'scaling.py'), '--pool', POOL, '--ns', '2', '--ks', '3',
                        '--max-new-tokens', '2', *args], env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(next(l for l in p.stdout.splitlines() if l.startswith('RESULT '))[7:]), p.stdout


def test_the_scaling_grid_runs_on_a_pool_and_resumes_its_cells(tmp_path):
    cells = tmp_path/'cells.jsonl'
    res, _ = scaling('--cells', str(cells))
    assert res['engine'] == 'pool' and res['pool'] == POOL.split(',')
    [r] = res['rows']
    assert (r['n'], r['k']) == (2, 3)                       # K = 3 slots from two critic models: personas fill the third
    assert 0 < r['actor_tokens'] <= 2 * 2 * 2                # read from the run: 2 answers and 2 revisions, 2 tokens at most
    assert set(r['stage_s']) == {'answers', 'critiques', 'revisions', 'rescores'} and r['wall_s'] > 0 and r['pairs'] <= 2
    assert len(cells.read_text().splitlines()) == 1
    again, out = scaling('--cells', str(cells))                 # every cell done: read back, no model loaded
    assert again['rows'] == res['rows'] and out.count('done before:') == 1 and again['engine_start_s'] < 1
