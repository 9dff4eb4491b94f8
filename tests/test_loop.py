"""The PULSE loop end to end: two model families in one pool, rounds on the trained actor, kill and resume, the run
config (file < flags, refusal of a changed config), dry runs of the shipped configs, the report and the dataset card."""
import json, os, re, signal, subprocess, sys, time
from pathlib import Path
import pytest
import yaml
from fastcore.test import test_eq as teq, test_fail as tfail

ROOT = Path(__file__).resolve().parents[1]
PULSE = [sys.executable, '-m', 'pulse_nb.cli']
ENV = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2'), 'TOKENIZERS_PARALLELISM': 'false'}
QWEN, SMOL = 'qwen2.5-coder-0.5b-instruct', 'smollm2-135m-instruct'

# Two families (qwen2 actor; llama and qwen2 critics), two rounds, as small as a real loop gets. The learning rate is
# high so that two LoRA steps move the policy enough to change what it samples in round 2.
TINY = {'rounds': 2, 'seed': 3,
        'pool': {'actor': f'hf:{QWEN}', 'critics': [f'hf:{SMOL}', f'hf:{QWEN}'], 'n_critics': 2},
        'review': {'prompts': 'builtin:arithmetic', 'per_round': 2, 'max_new_tokens': 24, 'temperature': 1.0,
                   'n_answers': 1, 'revise': True},   # the peer protocol: every stage, so every stage is killed and resumed
        'label': {'source': 'scores'},
        'train': {'loss': 'savage', 'beta': 0.1, 'max_steps': 2, 'batch_size': 2, 'lr': 0.005},
        'eval': {'bench': 'gsm8k', 'bench_n': 2, 'bench_max_new_tokens': 16, 'win_rate_prompts': 2, 'arithmetic': 2,
                 'max_new_tokens': 16}}


def pulse(*args, timeout=3600, check=True):
    r = subprocess.run(PULSE + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check: assert r.returncode == 0, f'pulse {args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r


def lines(p): return Path(p).read_text().splitlines() if Path(p).exists() else []


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    p = tmp_path_factory.mktemp('cfg')/'tiny.yaml'
    p.write_text(yaml.safe_dump(TINY))
    return p


@pytest.fixture(scope='module')
def finished_run(tiny_config, tmp_path_factory):
    "An uninterrupted two-family, two-round run (shared by the tests that read a finished run)."
    out = tmp_path_factory.mktemp('runs')/'b'
    r = pulse('run', '--config', tiny_config, '--out', out)
    assert str(out/'summary.md') in r.stdout
    (out.parent/'terminal.out').write_text(r.stdout); (out.parent/'terminal.err').write_text(r.stderr)
    return out


# --- the loop itself (slow: real models, real training)

@pytest.mark.slow
def test_round_two_acts_with_the_round_one_policy(finished_run):
    "Round 2's actor is round 1's trained adapter (merged), trained on a non-default model, and round 2 trains from it."
    from pulse_nb.models import resolve_model, model_family, adapter_base
    r1, r2 = (json.loads((finished_run/f'round-{k}'/'round.json').read_text()) for k in (1, 2))
    teq(r1['actor'], f'hf:{QWEN}')
    teq(r2['actor'], f"hf:{finished_run/'round-1'/'train'/'adapter'}")
    teq(r2['policy'], str(finished_run/'round-2'/'train'/'adapter'))
    base1 = json.loads((finished_run/'round-1'/'train'/'adapter'/'adapter_config.json').read_text())['base_model_name_or_path']
    teq(base1, QWEN)                   # the actor's model is trained, not the default SmolLM2; recorded by name
    teq(model_family(base1), 'qwen2')
    a2 = finished_run/'round-2'/'train'/'adapter'
    teq(json.loads((a2/'adapter_config.json').read_text())['base_model_name_or_path'], '../../../round-1/train/adapter')
    base2 = adapter_base(a2)           # recorded relative to the adapter, so the run directory can move
    teq(Path(base2).resolve(), (finished_run/'round-1'/'train'/'adapter').resolve())  # trained from (and against) the
    merged = Path(resolve_model(base2))                          # previous policy: round 1's adapter merged into its base
    teq(json.loads((merged/'pulse_manifest.json').read_text())['adapter'], base2)
    answers = [json.loads(l) for l in lines(finished_run/'round-2'/'review'/'answers.jsonl')]
    assert answers and all(a['actor'] == r2['actor'] for a in answers)
    teq(set(r1['prompt_ids']) & set(r2['prompt_ids']), set())   # each round reviews new prompts


@pytest.mark.slow
def test_round_two_answers_differ_from_the_base_model(finished_run, tmp_path):
    "Reviewing round 2's prompts with the base model as actor, same seed, gives other answers than the round-1 policy gave."
    from pulse_nb.loop import load_config, round_prompts, Pool
    from pulse_nb.review import review
    cfg = load_config(finished_run/'config.yaml')
    with Pool() as pool:
        review(round_prompts(cfg)[1], [pool.get(f'hf:{QWEN}')], n_critics=1, out_dir=tmp_path/'base', first_round=2,
               actor='fixed', seed=cfg.seed, max_new_tokens=cfg.review.max_new_tokens, temperature=cfg.review.temperature,
               stop_after='answers', progress=False)
    key = lambda f: {json.loads(l)['prompt_id']: json.loads(l)['text'] for l in lines(f)}
    policy, base = key(finished_run/'round-2'/'review'/'answers.jsonl'), key(tmp_path/'base'/'answers.jsonl')
    teq(sorted(policy), sorted(base))
    assert any(policy[k] != base[k] for k in policy), 'round 2 answered exactly like the untrained base model'


@pytest.mark.slow
def test_killed_in_round_two_then_resumed_equals_uninterrupted(tiny_config, finished_run, tmp_path):
    """SIGKILL during round 2's review, then the same command: same records, same pairs; round 1 is not trained again.
    The run starts from the finished run's round 1 (what a run killed as round 2 begins holds): round 1's own
    determinism is the kill tests' of `pulse generate` and `pulse train` (tests/faults)."""
    import shutil
    a = tmp_path/'a'
    shutil.copytree(finished_run, a, ignore=lambda d, names: [n for n in names if Path(d) == finished_run and (
        n.startswith('round-') and n != 'round-1' or n in ('summary.md', 'README.md', 'plots', '.lock'))])
    assert sorted(x.name for x in a.glob('round-*')) == ['round-1']
    p = subprocess.Popen(PULSE + ['run', '--config', str(tiny_config), '--out', str(a)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 3000
    while time.time() < deadline and p.poll() is None and not lines(a/'round-2'/'review'/'critiques.jsonl'):
        time.sleep(0.5)
    assert p.poll() is None, 'the run ended before it could be killed in round 2'
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert not (a/'round-2'/'round.json').exists() and (a/'round-1'/'round.json').exists()
    trained1 = (a/'round-1'/'train'/'metrics.json').stat().st_mtime_ns
    r = pulse('run', '--config', tiny_config, '--out', a)
    assert 'report at' in r.stdout
    teq((a/'round-1'/'train'/'metrics.json').stat().st_mtime_ns, trained1)   # round 1 is not retrained
    for k in (1, 2):
        here = lambda f, d: [l.replace(str(d).replace('/', '\\/'), 'RUN').replace(str(d), 'RUN') for l in lines(f)]  # the actor names its run dir
        teq(here(a/f'round-{k}'/'pairs.jsonl', a), here(finished_run/f'round-{k}'/'pairs.jsonl', finished_run))
        for stage in ('answers', 'critiques', 'revisions', 'rescores'):
            got, want = lines(a/f'round-{k}'/'review'/f'{stage}.jsonl'), lines(finished_run/f'round-{k}'/'review'/f'{stage}.jsonl')
            keys = [json.loads(l)['key'] for l in got]
            teq(len(keys), len(set(keys)))                                          # nothing duplicated
            teq(sorted(json.loads(l)['text' if 'text' in json.loads(l) else 'feedback'] for l in got),
                sorted(json.loads(l)['text' if 'text' in json.loads(l) else 'feedback'] for l in want))
    # a rerun of a finished run does nothing and changes nothing
    before = (a/'round-2'/'pairs.jsonl').read_text()
    pulse('run', '--config', tiny_config, '--out', a)
    teq((a/'round-2'/'pairs.jsonl').read_text(), before)


@pytest.mark.slow
def test_a_run_copied_without_its_weights_is_restored_bit_for_bit(finished_run, tmp_path):
    "A copy of a finished run without adapter/ folders: refused as it is, retrained to the recorded sha256, refused if they differ."
    import shutil
    from pulse_nb.loop import restore_policies, policy_of, weights_digest
    from pulse_nb.review import RunError
    copy = lambda d: shutil.copytree(finished_run, d, ignore=shutil.ignore_patterns('adapter', 'model', '*.lock', '.lock'))
    b = copy(tmp_path/'b')
    with pytest.raises(RunError, match='holds no weights'): policy_of(b, 2)
    teq(restore_policies(b), [1, 2])
    for k in (1, 2):
        want = json.loads((finished_run/f'round-{k}'/'train'/'policy.json').read_text())['sha256']
        teq(weights_digest(b/f'round-{k}'/'train'/'adapter'), want)
        teq(weights_digest(finished_run/f'round-{k}'/'train'/'adapter'), want)
    teq(restore_policies(b), [])                                             # nothing left to restore
    c = copy(tmp_path/'c')
    rec = c/'round-1'/'train'/'policy.json'
    rec.write_text(json.dumps({**json.loads(rec.read_text()), 'sha256': {'adapter_model.safetensors': '0' * 64}}))
    with pytest.raises(RunError, match="sha256 differs"): restore_policies(c)
    assert not (c/'round-1'/'train'/'adapter').exists() and not (c/'round-1'/'.train-restore').exists()


@pytest.mark.slow
def test_a_run_moved_elsewhere_resumes_without_retraining(finished_run, tiny_config, tmp_path):
    "A run killed after round 2 trained, then moved: the resume reuses the training (its recorded paths are relative) and evaluates."
    import shutil
    moved = shutil.copytree(finished_run, tmp_path/'elsewhere'/'run', ignore=shutil.ignore_patterns('.lock'))
    for f in ('round-2/round.json', 'round-2/eval.json', 'round-2/eval.md'): (moved/f).unlink(missing_ok=True)
    args = json.loads((moved/'round-2'/'train'/'train_args.json').read_text())
    teq((args['data'], args['model']), ('../pairs.parquet', '../../round-1/train/adapter'))
    sha = (moved/'round-2'/'train'/'policy.json').read_text()
    pulse('run', '--config', tiny_config, '--out', moved)
    teq((moved/'round-2'/'train'/'policy.json').read_text(), sha)          # not retrained
    assert (moved/'round-2'/'eval.json').exists() and (moved/'round-2'/'round.json').exists()


@pytest.mark.slow
def test_report_card_and_diagnostics_of_a_finished_run(finished_run):
    "The run's report, plots across rounds, per-critic diagnostics, peak memory, and a dataset card that names each round."
    for f in ('summary.md', 'README.md', 'config.yaml', 'plots/rounds.png', 'round-1/eval.json', 'round-2/eval.json', 'inspect.html'):
        assert (finished_run/f).exists(), f
    page = (finished_run/'inspect.html').read_text()  # the critique browser: both rounds, linked from the summary
    assert 'data-section="round 1"' in page and 'data-section="round 2"' in page and '(inspect.html)' in (finished_run/'summary.md').read_text()
    card = (finished_run/'README.md').read_text()
    front = yaml.safe_load(card.split('---')[1])
    teq([d['split'] for d in front['configs'][0]['data_files']], ['round_1', 'round_2'])
    assert f'hf:{SMOL}` (llama)' in card and f'hf:{QWEN}` (qwen2)' in card
    diag = json.loads((finished_run/'round-1'/'diagnostics.json').read_text())
    crit = diag['critics']
    teq(sorted(v['family'] for v in crit['scale'].values()), ['llama', 'qwen2'])
    pair = next(iter(crit['agreement'].values()))
    teq(pair['cross_family'], True)
    teq(crit['self_preference'][f'hf:{QWEN}']['n_other'], 0)   # a fixed qwen2 actor: only own-family answers
    rec = json.loads((finished_run/'round-2'/'round.json').read_text())
    assert 0.5 < max(rec['peak_rss_gib'].values()) < 24
    ev = json.loads((finished_run/'round-1'/'eval.json').read_text())
    teq(sorted({j['judge_model'] for p in ev['win_rate']['pairs'] for j in p['judgements']}), [SMOL])  # the actor's QWEN judges neither side


BAR = re.compile(r'^round \d+ (answers|critiques|revisions|rescores|train|evaluate): ')
CUT = re.compile(r'^pulse_nb: round \d+: .* cut at the token budget \(over 10 %\)')


@pytest.mark.slow
def test_the_terminal_shows_a_bar_per_stage_a_line_per_round_and_nothing_else(finished_run):
    "No library bars or warnings, no table: the stages' bars on stderr, one line per round and where the report is on stdout."
    out, err = (finished_run.parent/'terminal.out').read_text(), (finished_run.parent/'terminal.err').read_text()
    got = out.splitlines()
    teq(len(got), 3)
    assert re.match(r'round 1 done in [\d.]+ (s|min): \d pairs, \d decisive; .*cut at the budget: answers \d+ %, revisions \d+ %, evaluation \d+ %; '
                    r'gsm8k policy − base [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(n=2\)$', got[0]), got[0]
    assert got[1].startswith('round 2 done in ') and got[2].startswith('PULSE run finished in ') and str(finished_run/'inspect.html') in got[2]
    shown = [l for l in re.split(r'[\r\n]+', err) if l.strip()]
    other = [l for l in shown if not BAR.match(l) and not CUT.match(l)]
    assert not other, other                                                  # nothing but the bars and the cut warnings
    teq(sorted({BAR.match(l)[1] for l in shown if BAR.match(l)}), ['answers', 'critiques', 'evaluate', 'rescores', 'revisions', 'train'])
    teq(sum(bool(CUT.match(l)) for l in shown), 2)                             # 24/16-token budgets: both rounds say so


@pytest.mark.slow
def test_each_stage_records_its_cut_share_and_the_summary_reads_as_prose(finished_run):
    "The share cut at the token budget per stage, as the records say; summary.md with a narrow table, no raw dicts; the card says what labels are worth."
    rec = json.loads((finished_run/'round-1'/'round.json').read_text())
    for stage in ('answers', 'critiques', 'revisions', 'rescores'):
        recs = [json.loads(l) for l in lines(finished_run/'round-1'/'review'/f'{stage}.jsonl')]
        assert recs and all(r['finish_reason'] in ('length', 'stop') for r in recs), stage
        teq(rec['cut_share'][stage], sum(r['finish_reason'] == 'length' for r in recs) / len(recs))
    ev = json.loads((finished_run/'round-1'/'eval.json').read_text())
    items = ev['win_rate']['n_pairs'] + ev['accuracy']['candidate']['n'] + ev['bench']['gsm8k']['n']
    cut = (ev['win_rate']['cut_by_budget']['candidate'] + ev['accuracy']['candidate']['cut_by_budget'] + ev['bench']['gsm8k']['cut_policy'])
    teq((items, rec['cut_share']['evaluation']), (6, cut / 6))
    summary = (finished_run/'summary.md').read_text()
    assert "{'" not in summary and '| round | pairs | decisive pairs | label accuracy | answers cut | revisions cut |' in summary
    assert max(len(l) for l in summary.splitlines() if l.startswith('| round |')) < 160
    assert '**Review.** 2 prompts gave ' in summary and '**Cut at the token budget.** answers ' in summary
    card = (finished_run/'README.md').read_text()
    assert '## What the labels are worth' in card and ('**These labels are unchecked.**' in card or '**Label accuracy' in card)


def test_rounds_train_in_the_pools_precision(finished_run):
    "With `pool.dtype: fast`, every round trains in bf16 autocast exactly where the hardware computes bfloat16."
    from pulse_nb.engines import fast_dtype
    for r in (1, 2):
        args = json.loads((finished_run/f'round-{r}'/'train'/'train_args.json').read_text())
        teq(args.get('bf16'), True if fast_dtype() == 'bfloat16' else None)


@pytest.mark.slow
def test_push_to_hub_goes_as_far_as_the_network_call(finished_run):
    "Everything before the upload works: the files are chosen, and `pulse push` fails only at the hub, which is offline."
    from pulse_nb.report import hub_files
    teq(hub_files(finished_run), ['README.md', 'config.yaml', 'round-1/diagnostics.json', 'round-1/pairs.jsonl',
                                  'round-1/pairs.parquet', 'round-2/diagnostics.json', 'round-2/pairs.jsonl',
                                  'round-2/pairs.parquet'])
    r = subprocess.run(PULSE + ['push', '--run', str(finished_run), '--repo', 'someone/pulse-test'], capture_output=True,
                       text=True, timeout=300, env={**ENV, 'HF_HUB_OFFLINE': '1', 'HF_TOKEN': 'hf_test'})
    teq(r.returncode, 1)
    assert 'huggingface.co/api/repos/create' in r.stderr and 'offline mode' in r.stderr, r.stderr


@pytest.mark.slow
def test_each_round_is_graded_on_the_benchmarks_held_out_items(finished_run):
    "Both rounds grade the same held-out GSM8K items; the base model is graded once for the run; no item was reviewed."
    from pulse_nb.benchmarks import bench_prompts
    held = {it['id'] for it in bench_prompts('gsm8k', 'heldout')}
    base = json.loads((finished_run/'base-bench'/'eval.json').read_text())
    ids = [json.loads((finished_run/f'round-{k}'/'bench'/'eval.json').read_text())['sets']['gsm8k']['per_item']['ids'] for k in (1, 2)]
    teq(ids[0], ids[1]); teq(ids[0], base['sets']['gsm8k']['per_item']['ids']); teq(len(ids[0]), 2)
    assert set(ids[0]) <= held
    reviewed = {json.loads(l)['prompt_id'] for k in (1, 2) for l in lines(finished_run/f'round-{k}'/'review'/'answers.jsonl')}
    teq(reviewed & set(ids[0]), set())
    ev = json.loads((finished_run/'round-2'/'eval.json').read_text())['bench']['gsm8k']
    teq((ev['metric'], ev['n']), ('accuracy', 2))
    assert ev['difference_ci'][0] <= ev['difference'] <= ev['difference_ci'][1]
    assert '| gsm8k policy − base [95% CI] |' in (finished_run/'summary.md').read_text()


# --- the run config and the command line (fast: nothing loads a model)

def test_config_file_is_overridden_by_flags(tmp_path):
    from pulse_nb.cli import build_parser, run_config
    f = tmp_path/'c.yaml'; f.write_text(yaml.safe_dump({'rounds': 3, 'review': {'per_round': 9, 'max_new_tokens': 40},
                                                        'train': {'loss': 'dpo'}}))
    cfg = run_config(build_parser().parse_args(['run', '--config', str(f), '--limit', '4', '--loss', 'ipo', '--set', 'eval.arithmetic=3']))
    teq((cfg.rounds, cfg.review.per_round, cfg.review.max_new_tokens, cfg.train['loss'], cfg.eval.arithmetic), (3, 4, 40, 'ipo', 3))
    cfg2 = run_config(build_parser().parse_args(['run', '--config', str(f)]))
    teq((cfg2.review.per_round, cfg2.train['loss']), (9, 'dpo'))


def test_changed_config_is_refused_on_resume_but_more_rounds_continue(tmp_path):
    "Once a stage has run, a change to its fields is refused; more rounds continue the same run."
    from pulse_nb.loop import RunConfig, check_run_config
    from pulse_nb.review import RunError
    check_run_config(tmp_path, RunConfig())
    (tmp_path/'round-1'/'review').mkdir(parents=True); (tmp_path/'round-1'/'review'/'manifest.json').write_text('{}')
    check_run_config(tmp_path, RunConfig(rounds=3))            # more rounds: the same run, continued
    with pytest.raises(RunError) as e: check_run_config(tmp_path, RunConfig(seed=1))
    assert 'seed: 0 (in the run dir) vs 1 (now)' in str(e.value)
    with pytest.raises(RunError) as e: check_run_config(tmp_path, RunConfig(review={'per_round': 5}))
    assert 'review.per_round' in str(e.value)


def test_pulse_run_refuses_a_changed_config_in_one_line(tmp_path):
    (tmp_path/'r').mkdir()
    from pulse_nb.loop import RunConfig, save_config
    save_config(RunConfig(seed=7), tmp_path/'r'/'config.yaml')
    (tmp_path/'r'/'round-1'/'review').mkdir(parents=True); (tmp_path/'r'/'round-1'/'review'/'manifest.json').write_text('{}')
    r = pulse('run', '--out', tmp_path/'r', '--prompts', 'builtin:arithmetic', check=False)
    teq(r.returncode, 1)
    assert 'holds a run whose finished stages were made with another config' in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.parametrize('config', sorted(p.name for p in (ROOT/'configs').glob('*.yaml') if 'pool' in yaml.safe_load(p.read_text())))
def test_dry_run_of_every_shipped_config(config):
    """Each shipped run config validates and prints its plan without loading a model; the plan's counts are the config's
    arithmetic (computed here from the YAML) and its memory plan names every stage, none reserving more than one device."""
    import math, re
    from pulse_nb.loop import load_config, config_dict
    r = pulse('run', '--config', ROOT/'configs'/config, '--dry-run', timeout=900)
    plan = json.loads(r.stdout)
    y, dflt = yaml.safe_load((ROOT/'configs'/config).read_text()), config_dict(load_config())  # YAML, then the defaults
    get = lambda sec, k: y.get(sec, {}).get(k, dflt[sec].get(k))
    teq(plan['models']['actor'], y['pool']['actor']); teq(plan['models']['critics'], y['pool']['critics'])
    n, K, T, rounds = get('review', 'per_round'), get('pool', 'n_critics'), get('review', 'max_new_tokens'), y.get('rounds', dflt['rounds'])
    pairwise, m = bool(get('review', 'pairwise')), get('review', 'n_answers')  # m candidates per prompt (best-of-n)
    rv = bool(get('review', 'revise'))                      # a revision and its re-score per candidate, or neither
    c = n * m
    teq(plan['stages'], {'answers': c, 'critiques': c*K, **({'revisions': c, 'rescores': c*K} if rv else {}),
                         **({'comparisons': 2*c*K} if pairwise else {})})
    fb = get('review', 'feedback')                          # critics write feedback: as set, or where unset, when revising or parsing text
    fb = rv or get('review', 'score_mode') != 'logprobs' if fb is None else fb
    gen = c * (1 + rv) + c*K*(fb + rv) + (2*c*K if pairwise else 0)  # a0 (and a1) per candidate, K critiques of each (+ both orders of K verdicts)
    tr = {'batch_size': 4, 'gradient_accumulation_steps': 1, 'max_steps': -1, 'epochs': 1, **y.get('train', {})}  # TrainConfig's defaults
    steps = tr['max_steps'] if tr['max_steps'] > 0 else math.ceil(n / (tr['batch_size'] * tr['gradient_accumulation_steps'])) * math.ceil(tr['epochs'])
    n_bench = len([b for b in str(get('eval', 'bench')).split(',') if b.strip()]) * get('eval', 'bench_n')
    ev_gen = 2 * (get('eval', 'win_rate_prompts') + get('eval', 'arithmetic')) + n_bench   # policy and base answer each prompt
    ev_tok = (ev_gen - n_bench) * get('eval', 'max_new_tokens') + n_bench * get('eval', 'bench_max_new_tokens')
    teq(plan['per_round'], {'prompts': n, 'candidates': c, 'generations': gen, 'score_readouts': (1 + rv)*c*K if get('review', 'score_mode') == 'logprobs' else 0,
                            'max_generated_tokens': gen * T, 'train_steps_at_most': steps, 'eval_generations': ev_gen,
                            'eval_judgements': 2 * get('eval', 'win_rate_prompts') * len(get('pool', 'judges') or [c for c in y['pool']['critics'] if c != y['pool']['actor'] and not c.startswith('verify:')]),
                            'eval_generated_tokens_at_most': ev_tok})
    teq(plan['total_generated_tokens_at_most'], rounds * (gen * T + ev_tok))
    # memory: a review, a train and an evaluate stage for round 1 (and round 2+ when there is one); no stage over one device
    mem, labels = plan['memory'], ['round 1', 'round 2+'][:min(rounds, 2)]
    teq({s.split(':')[0] for s in mem}, set(labels))
    engines = {y['pool']['actor'], *y['pool']['critics']}
    for l in labels:
        teq(mem[f'{l}: train'], {'trainer (policy and reference)': None})
        review = [s for s in mem if s.startswith(f'{l}: review')]
        assert review and f'{l}: evaluate' in mem, (l, list(mem))
        if l == 'round 1': teq({e for s in review for e in mem[s]}, engines)   # every model of the review is loaded in it
    for stage, shares in mem.items():
        for e, v in shares.items():
            if m := re.search(r'gpu_memory_utilization=([0-9.]+)', e): teq(v, float(m[1]))   # the share its spec asks for
        assert sum(v for v in shares.values() if v) <= 1 + 1e-9, (stage, shares)
    if config.startswith('cpu'): teq(set(plan['families'].values()), {'llama', 'qwen2'})


def test_shipped_configs_are_there():
    teq({'cpu-quick.yaml', 'cpu-pool.yaml', 'gpu-paper.yaml'} <= {p.name for p in (ROOT/'configs').glob('*.yaml')}, True)
    from pulse_nb.loop import load_config, config_dict        # and the CPU ones say what `pulse run [--quick]` does
    teq(config_dict(load_config(ROOT/'configs'/'cpu-quick.yaml')), config_dict(load_config(preset='quick')))
    teq(config_dict(load_config(ROOT/'configs'/'cpu-pool.yaml')), config_dict(load_config()))


def test_heldout_prompts_never_reach_review_through_pulse_run(tmp_path):
    "A run whose review would take the held-out evaluation prompts is refused before anything runs."
    r = pulse('run', '--prompts', 'builtin:general:heldout', '--limit', '2', '--out', tmp_path/'h', check=False)
    teq(r.returncode, 1)
    assert "are in both the review prompts of 'builtin:general:heldout' and the held-out evaluation sets" in r.stderr, r.stderr
    assert not (tmp_path/'h').exists() or not list((tmp_path/'h').glob('round-*'))
    r = pulse('run', '--prompts', 'bench:gsm8k:heldout', '--out', tmp_path/'g', check=False)   # the benchmark's graded split
    teq(r.returncode, 1)
    assert "review prompts of 'bench:gsm8k:heldout' and the held-out evaluation sets" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path/'g').exists() or not list((tmp_path/'g').glob('round-*'))


def test_a_run_reviewing_a_benchmark_takes_its_other_split():
    "Reviewing bench:gsm8k takes the trainable split: no round's prompt is an item (id or text) of the graded split."
    from pulse_nb.loop import RunConfig, plan, round_prompts
    from pulse_nb.benchmarks import bench_prompts
    cfg = RunConfig(rounds=3, review={'prompts': 'bench:gsm8k', 'per_round': 200})
    teq(plan(cfg)['eval_bench'], {'gsm8k': 16})
    held = bench_prompts('gsm8k', 'heldout')
    reviewed = [p for ps in round_prompts(cfg) for p in ps]
    teq(len(reviewed), 600)
    norm = lambda t: ' '.join(t.split()).casefold()
    teq({p['id'] for p in reviewed} & {h['id'] for h in held}, set())
    teq({norm(p['meta']['question']) for p in reviewed} & {norm(h['meta']['question']) for h in held}, set())


def test_bad_run_input_is_one_line_and_exit_1(tmp_path):
    for args, msg in ((['--limit', '0'], 'review.per_round must be >= 1'), (['--actor', 'hf;foo=1'], 'pool.actor'),
                      (['--set', 'train.nope=1'], 'nope'), (['--rounds', '-1'], 'rounds must be >= 1')):
        r = pulse('run', *args, '--dry-run', check=False, timeout=900)
        teq(r.returncode, 1)
        assert msg in r.stderr, (args, r.stderr)
        assert 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_server_actor_needs_a_policy_server_for_round_two(tmp_path):
    from pulse_nb.loop import RunConfig, actor_spec, ConfigError
    cfg = RunConfig(pool={'actor': 'openai:http://127.0.0.1:9/v1', 'actor_model': QWEN})
    (tmp_path/'round-1'/'train'/'adapter').mkdir(parents=True)
    teq(actor_spec(cfg, tmp_path, 1), 'openai:http://127.0.0.1:9/v1')
    tfail(lambda: actor_spec(cfg, tmp_path, 2), contains='set pool.policy_server')
    cfg2 = RunConfig(pool={'actor': 'openai:http://127.0.0.1:9/v1', 'actor_model': QWEN, 'policy_server': 'http://127.0.0.1:8/v1'})
    teq(actor_spec(cfg2, tmp_path, 2)['base_urls'], ['http://127.0.0.1:8/v1'])


def test_generate_reviews_one_round_only(tmp_path):
    r = pulse('generate', '--rounds', '2', '--out', tmp_path/'g', check=False)
    teq(r.returncode, 1)
    assert 'pulse run --rounds' in r.stderr


def test_a_round_without_pairs_trains_nothing_and_the_policy_stays(tmp_path):
    "A real review with a scripted actor that revises nothing: no pair, no training, and round 2 acts with the base."
    from pulse_nb.engines import Engine, Generation, Completion, ScoreReadout
    from pulse_nb.loop import RunConfig, Pool, LazyEngine, run_round, round_prompts, actor_spec, policy_of

    class Same(Engine):  # every answer and every revision is '42'; every critic score is 5
        name, model = 'hf', 'same'
        def _generate(self, convs, sc, progress=False, truncate=False):
            return [Generation([Completion('42', 1, 'stop')] * sc.n, 5) for _ in convs]
        def _score(self, convs, candidates, truncate=False):
            return [ScoreReadout({c: float(c == '5') for c in candidates}, 1.0) for _ in convs]

    cfg = RunConfig(rounds=2, pool={'actor': 'hf:same-actor', 'critics': ['hf:same-critic']},
                    review={'per_round': 2, 'n_answers': 1, 'revise': True}, label={'source': 'scores'}, eval={'skip': True})
    with Pool() as pool:
        for spec in ('hf:same-actor', 'hf:same-critic'):
            lz = pool.get(spec); lz._box['engine'] = Same()
        rec = run_round(cfg, tmp_path, 1, round_prompts(cfg)[0], pool, progress=False)
    teq((rec['n_pairs'], rec['trained'], rec['review']['dropped']), (0, False, {'identical': 2}))
    assert not (tmp_path/'round-1'/'train').exists()
    teq(policy_of(tmp_path, 1), None)
    teq(actor_spec(cfg, tmp_path, 2), 'hf:same-actor')   # round 2 acts with the policy as it was: the base
    from pulse_nb.report import write_report
    summary = write_report(tmp_path, cfg)                  # the report of a run with a round that trained nothing
    assert summary.exists() and not (tmp_path/'plots'/'round-1'/'training.png').exists()
