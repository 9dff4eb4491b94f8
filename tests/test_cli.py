"""Tests of the `pulse` command: help, bad input, benchmark evaluation (the loop itself, kill and resume: tests/test_loop.py)."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from fastcore.test import test_eq as teq

PULSE = [sys.executable, '-m', 'pulse_nb.cli']
ENV = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2'), 'PULSE_ENGINE': 'hf',
       'TOKENIZERS_PARALLELISM': 'false'}


def pulse(*args, timeout=1800, check=True):
    r = subprocess.run(PULSE + list(args), env=ENV, capture_output=True, text=True, timeout=timeout)
    if check: assert r.returncode == 0, f'pulse {args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r


def test_help_lists_subcommands():
    out = pulse('--help').stdout
    for cmd in ('generate', 'train', 'evaluate', 'run'): assert cmd in out


def test_bad_input_is_a_clear_error(tmp_path):
    "Bad input: exit 1 and one line `pulse CMD: error: ...` that names the problem, never a traceback; nothing written."
    for cmd, args, names in (('generate', ['--prompts', str(tmp_path/'missing.jsonl')], 'missing.jsonl'),
                             ('train', ['--data', str(tmp_path/'nothing'), '--loss', 'no-such-loss'], 'no-such-loss')):
        r = pulse(cmd, *args, '--out', str(tmp_path/cmd), check=False)
        lines = r.stderr.strip().splitlines()
        assert (r.returncode, len(lines)) == (1, 1), (r.returncode, r.stderr[-3000:])
        assert lines[0].startswith(f'pulse {cmd}: error: ') and names in lines[0], lines
        assert not (tmp_path/cmd).exists()




def test_evaluate_bench_grades_held_out_items_and_the_paired_difference(tmp_path):
    "`pulse evaluate --bench` grades two real sets on their held-out split, for the model and a baseline of another family."
    from pulse_nb.benchmarks import bench_prompts
    out = tmp_path/'ev'
    r = pulse('evaluate', '--model', 'hf:smollm2-135m-instruct', '--baseline', 'hf:qwen2.5-coder-0.5b-instruct',
              '--bench', 'gsm8k,ifeval', '--n', '2', '--max-new-tokens', '24', '--out', str(out))
    res = json.loads((out/'eval.json').read_text())
    teq(sorted(res['sets']), ['gsm8k', 'ifeval'])
    for k in ('gsm8k', 'ifeval'):
        held = {it['id'] for it in bench_prompts(k, 'heldout')}
        ids = res['sets'][k]['per_item']['ids']
        teq(len(ids), 2); assert set(ids) <= held, ids
    teq(json.loads((out/'baseline'/'eval.json').read_text())['family'], 'qwen2')
    diff = json.loads((out/'vs_baseline.json').read_text())['difference']
    teq(diff['gsm8k']['accuracy']['n'], 2)
    assert 'gsm8k accuracy:' in r.stdout and 'vs hf:qwen2.5-coder-0.5b-instruct' in r.stdout, r.stdout
    r = pulse('evaluate', '--model', 'hf:smollm2-135m-instruct', '--bench', 'gsm9k', check=False)
    teq(r.returncode, 1)
    assert r.stderr.strip().startswith("pulse evaluate: error: unknown benchmark 'gsm9k'"), r.stderr


def one_line_error(r, cmd):
    lines = r.stderr.strip().splitlines()
    assert (r.returncode, len(lines)) == (1, 1), (r.returncode, r.stderr[-3000:])
    assert lines[0].startswith(f'pulse {cmd}: error: '), lines
    return lines[0]


def test_generate_refuses_held_out_prompts_before_loading_a_model(tmp_path):
    "`pulse generate` on the win rate's held-out split, or a file holding one benchmark held-out item: refused in one line, nothing written."
    from pulse_nb.benchmarks import bench_prompts
    f = tmp_path/'mine.jsonl'
    f.write_text('{"prompt": "Say hello."}\n' + json.dumps({'prompt': bench_prompts('gsm8k', 'heldout')[5]['prompt']}) + '\n')
    for spec in ('builtin:general:heldout', str(f)):
        r = pulse('generate', '--prompts', spec, '--out', str(tmp_path/'g'), check=False)
        assert 'held-out evaluation sets' in one_line_error(r, 'generate')
        assert not (tmp_path/'g').exists()
    r = pulse('generate', '--critics', 'hf:smollm2-135m-instruct', '--out', str(tmp_path/'g'), check=False)
    assert r.returncode == 2 and 'name critic models with --critic-models' in r.stderr, r.stderr


REVIEWED = Path(__file__).parents[1]/'nbs'/'experiments'/'runs'/'pulse_rounds'/'savage'/'round-1'


def test_train_trains_the_actor_that_made_the_pairs(tmp_path):
    "Without --model, `pulse train` trains the review's actor (Qwen here), not the embedded default (SmolLM2)."
    import shutil
    data = tmp_path/'round'
    shutil.copytree(REVIEWED/'review', data/'review'); shutil.copy(REVIEWED/'pairs.parquet', data)
    pulse('train', '--data', str(data), '--out', str(tmp_path/'t'), '--max-steps', '1', '--batch-size', '1')
    args = json.loads((tmp_path/'t'/'train_args.json').read_text())
    teq((args['model'], args['weighting'], args['loss']), ('qwen2.5-coder-0.5b-instruct', None, 'dpo'))  # pulse run's defaults
    cfg = json.loads((tmp_path/'t'/'adapter'/'adapter_config.json').read_text())
    assert 'qwen' in cfg['base_model_name_or_path'].lower(), cfg['base_model_name_or_path']


def test_train_refuses_pairs_without_an_actor_or_with_held_out_prompts(tmp_path):
    "A bare pairs file needs --model; pairs made from a held-out prompt are refused; both in one line, nothing written."
    import pandas as pd
    from pulse_nb.evaluate import heldout_prompts
    bare = tmp_path/'pairs.parquet'
    df = pd.read_parquet(REVIEWED/'pairs.parquet')
    df.to_parquet(bare)
    r = pulse('train', '--data', str(bare), '--out', str(tmp_path/'t'), check=False)
    assert 'name the model to train with --model' in one_line_error(r, 'train')
    df.at[0, 'prompt'] = [{'role': 'user', 'content': heldout_prompts(1)[0]['prompt']}]
    df.to_parquet(bare)
    r = pulse('train', '--data', str(bare), '--model', 'smollm2-135m-instruct', '--out', str(tmp_path/'t'), check=False)
    assert 'held-out evaluation sets' in one_line_error(r, 'train')
    assert not (tmp_path/'t').exists()
