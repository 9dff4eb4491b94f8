"""`bench/run_all.py`'s targets table: each speed target read from its benchmark's result, met or not, and 'not
measured' where the benchmark did not run (the GPU rows on a machine without one, or a toy-size GPU run)."""
import importlib.util, json
from pathlib import Path
from fastcore.test import test_eq as teq

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('run_all', ROOT/'bench'/'run_all.py')
run_all = importlib.util.module_from_spec(spec); spec.loader.exec_module(run_all)


def verdicts(results): return [ok for _, _, ok, _ in run_all.targets(results)]


def test_targets_met_missed_and_unmeasured():
    r = {'peers-both': {'distilabel_over_pulse': 1.31},
         'review-critique': {'critique_ratio': {'runs_s': {'critique': [12.0, 12.2, 12.1], 'alone': [10.0, 10.1, 10.0]}}},  # 1.2
         'review-critique-hf': {'critique_ratio': {'runs_s': {'critique': [10.3, 10.4, 10.2], 'alone': [10.0, 10.1, 10.0]}}},  # 1.03
         'loop': {'quick': {'wall_s': 110.8}, 'quick-fp32': {'wall_s': 180.5}},
         'train': {'ratio_pulse_over_stock': 0.99, 'loss_curve_max_abs_diff': 0.0},
         'gpu_train': {'toy': False, 'ratios': {'large/full': 1.49, 'small/full': 2.1}}}
    teq(verdicts(r), [True, False, True, True, False, True, False, True])
    teq(verdicts({}), [None] * 8)
    teq(verdicts({'gpu_train': {'toy': True, 'ratios': {'large/full': 3.0, 'small/full': 3.0}}})[-2:], [None, None])


def test_a_paired_ratio_is_met_only_when_its_interval_is_under_the_target():
    "ABBA pairs: the k-th critique run over the k-th alone run; 95 % t-interval over the pairs."
    noisy = {'critique': [11.0, 12.4, 10.9, 12.2], 'alone': [10.0, 10.0, 10.0, 10.0]}   # ratios 1.10 .. 1.24
    m, lo, hi = run_all.paired_ratio({'runs_s': noisy})
    assert abs(m - 1.1625) < 1e-3 and lo < 1.15 < hi
    teq(run_all.ratio_row('r', {'runs_s': noisy}, 1.15, 's')[2], 'undecided')
    teq(run_all.ratio_row('r', {'runs_s': {'critique': [10.5], 'alone': [10.0]}}, 1.15, 's')[1:3], ('1.05x (one pair, no interval)', 'undecided'))
    teq(run_all.ratio_row('r', {'runs_s': {'critique': [12.0, 12.1, 12.05], 'alone': [10.0, 10.0, 10.0]}}, 1.15, 's')[2], False)
    assert '4 pairs' in run_all.ratio_row('r', {'runs_s': noisy}, 1.15, 's')[1]


def test_the_interval_uses_student_t_for_n_minus_1_degrees_of_freedom():
    "12 pairs: df 11 (t 2.2010), not a capped table's df 10 (2.2281); past df 30 the table's last value (wider)."
    import statistics
    for n, t in [(2, 12.7062), (12, 2.2010), (24, 2.0687), (31, 2.0423), (50, 2.0423)]:
        r = [1.0 + (k % 5) for k in range(n)]   # spread wide enough that df 10 against df 11 shows past rounding
        m, lo, hi = run_all.paired_ratio({'runs_s': {'critique': r, 'alone': [1.0] * n}})
        half = t * statistics.stdev(r) / n ** 0.5
        assert abs((hi - lo) / 2 - half) < 1e-3, (n, (hi - lo) / 2, half)


def test_the_shipped_results_have_a_targets_table():
    "results.md is written from results.json: its first section is the targets table with a row per target."
    md = (ROOT/'bench'/'results.md').read_text()
    table = md.split('## Targets', 1)[1].split('\n## ', 1)[0]
    rows = [l for l in table.splitlines() if l.startswith('| ') and not l.startswith('| target')]
    teq(len(rows), len(run_all.targets(json.loads((ROOT/'bench'/'results.json').read_text()))))


def test_a_rerun_on_another_machine_gets_its_own_row_after_its_section():
    "`--tag xeon` stores `review-critique@xeon`: the untagged row stays, the tagged one follows it with its own verdict."
    slow = {'critique_ratio': {'runs_s': {'critique': [12.0, 12.2, 12.1], 'alone': [10.0, 10.1, 10.0]}}}   # 1.2: not met
    fast = {'critique_ratio': {'n_convs': 64, 'runs_s': {'critique': [10.3, 10.4, 10.2], 'alone': [10.0, 10.1, 10.0]}}}   # 1.03: met
    rows = run_all.targets({'review-critique': slow, 'review-critique@xeon': fast, 'loop@xeon': {'quick': {'wall_s': 170.0}}})
    teq(len(rows), 8 + 2)   # one tagged critique row, and the one `pulse run` row the tagged loop measured
    teq([(ok, sec) for _, _, ok, sec in rows[1:3]], [(False, 'review-critique'), (True, 'review-critique@xeon')])
    assert rows[2][0].endswith('[xeon]') and 'pairs' in rows[2][1]
    teq([(w, v, ok) for w, v, ok, sec in rows if sec == 'loop@xeon'], [(rows[4][0] + ' [xeon]', '170.0 s', True)])
    teq(run_all.script('review-critique@xeon'), 'review.py')
    assert run_all.fmt('review-critique@xeon', {**fast, 'engine': 'vllm', 'max_new_tokens': 64, 'cpu': 'x'}).startswith('64 critiques on `vllm`')


def test_a_loop_run_with_kernels_held_to_avx2_says_so():
    "`bench/loop.py --avx2` records the environment that holds the kernels to AVX2; its section names it."
    spec = importlib.util.spec_from_file_location('loop_bench', ROOT/'bench'/'loop.py')
    loop = importlib.util.module_from_spec(spec); spec.loader.exec_module(loop)
    import os
    from unittest.mock import patch
    with patch.dict(os.environ, {k: '' for k in loop.ISA_LIMITS}): assert 'isa_limits' not in loop.cpu_info()
    with patch.dict(os.environ, loop.AVX2_ONLY): cpu = loop.cpu_info()
    teq(cpu['isa_limits']['ATEN_CPU_CAPABILITY'], 'avx2')
    run = {'wall_s': 92.5, 'budget_s': 180, 'peak_rss_gib': 5.0, 'rounds': []}
    assert 'held to an older instruction set: ATEN_CPU_CAPABILITY=avx2' in run_all.fmt('loop@x', {'cpu': cpu, 'quick-fp32': run})
    assert 'held' not in run_all.fmt('loop', {'cpu': {**cpu, 'isa_limits': {}}, 'quick-fp32': run})


def test_a_peers_section_says_how_many_judgements_carry_a_score():
    "Wall time alone hides what each side produced: the section gives each run's tokens and scored judgements."
    run = lambda who, s, tok, got: {'wall_s': s, 'gen_tokens': tok, 'judgements' if who == 'd' else 'critiques': 64,
                                    'ratings_parsed' if who == 'd' else 'scores_parsed': got}
    r = {'n_prompts': 32, 'n_critics': 2, 'max_new_tokens': 256, 'pulse_engine': 'vllm', 'cpu': 'x', 'score_mode': 'logprobs',
         'runs': {'pulse': [run('p', 54.8, 15375, 64), run('p', 51.4, 15375, 63)],
                  'distilabel': [run('d', 62.5, 19817, 1), run('d', 57.6, 18016, 2)]},
         'mean_wall_s': {'pulse': 53.1, 'distilabel': 60.06}, 'distilabel_over_pulse': 1.131}
    line = run_all.fmt('peers-both@x', r)
    assert 'pulse-nb (logprobs scores): 15375 tokens, 64/64 scored, 15375 tokens, 63/64 scored' in line, line
    assert 'distilabel (ratings from its text): 19817 tokens, 1/64 scored, 18016 tokens, 2/64 scored' in line, line
    old = {**r, 'runs': {'pulse': [{'wall_s': 4.3}], 'distilabel': [{'wall_s': 3.8}]}}   # results from before the counts were kept
    assert run_all.fmt('peers-both', old).endswith('**1.131**')
