"""Beyond one machine (`pulse_nb.scaleout`), on this machine's CPUs with the embedded model:

- `RayDataEngine`: Ray Data LLM (`vLLMEngineProcessorConfig` + `build_processor`) running the vLLM CPU build on a
  local Ray cluster (2 CPUs, no GPU). Its samples equal `VLLMEngine`'s, and a review through it gives the records a
  review through `VLLMEngine` gives and resumes after a torn checkpoint. Each call is one Ray Data run that starts its
  vLLM actor (about 45 s here in eager mode), so the module makes five runs.
- Two `vllm serve` replicas behind one `OpenAIEngine` serve two review stages: each replica finishes exactly its half
  of the requests (its /metrics), and the records equal those of the same stages served by one replica alone.
"""
import os
import pytest
from conftest import SERVER_START_TIMEOUT, VLLM_DTYPE
from pulse_nb.engines import SamplingConfig, ContextLengthError
from pulse_nb.engine_openai import OpenAIEngine
from pulse_nb.review import review, read_jsonl

Q = lambda q: [{'role': 'user', 'content': q}]
QS = [Q('What is the capital of France?'), Q('Say hi.'), Q('Name a color.')]
# two stages (answers, then critiques: a generate and a score per critic), greedy, whole stages per call
STAGES = dict(n_critics=1, limit=4, max_new_tokens=12, temperature=0, batch_size=None, stop_after='critiques', progress=False)
ENGINE_FIELDS = ('actor', 'critic_model')  # engine ids: differ between engines by design


def records(run, stage):
    "A stage's records by key, without the fields that name the engine."
    return {r['key']: {k: v for k, v in r.items() if k not in ENGINE_FIELDS} for r in read_jsonl(run/f'{stage}.jsonl')}


def assert_same_records(a, b, tol):
    "Same keys, same texts and fields; probabilities and scores within `tol`."
    assert a.keys() == b.keys()
    for k in a:
        x, y = dict(a[k]), dict(b[k])
        px, py = x.pop('probs', None), y.pop('probs', None)
        for f in ('score', 'score_std', 'mass'):
            if x.get(f) is not None or y.get(f) is not None: assert x.pop(f) == pytest.approx(y.pop(f), abs=tol), (k, f)
        assert x == y, k
        if px is not None or py is not None: assert px == pytest.approx(py, abs=tol), k


@pytest.fixture(scope='module')
def ray_engine(model_path):
    pytest.importorskip('vllm')
    pytest.importorskip('ray', reason="Ray Data is not installed: pip install 'ray[data]>=2.60'")
    from pulse_nb.scaleout import RayDataEngine
    with RayDataEngine(dtype=VLLM_DTYPE, enforce_eager=True, batch_size=16,
                       runtime_env={'env_vars': {'VLLM_CPU_KVCACHE_SPACE': '1'}},
                       ray_init=dict(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=256 * 2**20)) as e:
        yield e


@pytest.mark.slow
def test_ray_data_samples_equal_vllm(ray_engine, vllm_engine):
    "Seeded samples, n=2 per prompt: the same texts, token counts and finish reasons as VLLMEngine, in input order."
    assert ray_engine.cluster == {'CPU': 2.0}  # a CPU-only cluster: the replica ran on a CPU bundle
    sc = SamplingConfig(temperature=0.8, max_new_tokens=12, n=2, seed=5)
    got, want = ray_engine.generate(QS, sc), vllm_engine.generate(QS, sc)
    assert got == want
    assert {c.finish_reason for g in got for c in g.completions} == {'stop', 'length'}
    assert len({c.text for c in got[1].completions}) == 2  # two different samples, not one repeated
    with pytest.raises(ContextLengthError, match='conversation 1'): ray_engine.generate([QS[0], Q('word ' * 3000)], sc)


@pytest.mark.slow
def test_ray_data_review_equals_vllm_and_resumes(ray_engine, vllm_engine, tmp_path):
    "Answers and critiques (with log-prob scores) through Ray equal VLLMEngine's; a torn checkpoint resumes to the same records."
    ref = review('builtin:arithmetic', pool=[vllm_engine], out_dir=tmp_path/'vllm', **STAGES)
    run = review('builtin:arithmetic', pool=[ray_engine], out_dir=tmp_path/'ray', **STAGES)
    for stage in ('answers', 'critiques'): assert_same_records(records(run, stage), records(ref, stage), 1e-4)
    assert all(r['parsed'] for r in read_jsonl(run/'critiques.jsonl'))  # scores came from the log-probs
    answers, critiques = records(run, 'answers'), (run/'critiques.jsonl').read_bytes()
    lines = (run/'answers.jsonl').read_bytes().splitlines(keepends=True)
    (run/'answers.jsonl').write_bytes(b''.join(lines[:-1]) + lines[-1][:25])  # a kill in the middle of the last write
    review('builtin:arithmetic', pool=[ray_engine], out_dir=run, **STAGES)
    assert records(run, 'answers') == answers and len(read_jsonl(run/'answers.jsonl')) == len(answers)
    assert (run/'critiques.jsonl').read_bytes() == critiques  # nothing left to do there


@pytest.mark.slow
def test_two_vllm_replicas_serve_review_stages(model_path, tmp_path):
    "Two `vllm serve` replicas behind one OpenAIEngine: each serves half the requests; the records equal one replica's."
    pytest.importorskip('vllm')
    from pulse_nb.scaleout import start_replicas
    with start_replicas(2, dtype=VLLM_DTYPE, extra=['--enforce-eager'], env={'VLLM_CPU_KVCACHE_SPACE': '1'},
                        timeout=SERVER_START_TIMEOUT) as reps:
        both, one = reps.engine(), OpenAIEngine(reps.urls[:1], model=reps.name)
        assert both.capabilities['servers'] == 2 and one.capabilities['logprobs']  # probed before counting
        before = reps.finished()
        two_run = review('builtin:arithmetic', pool=[both], out_dir=tmp_path/'two', **STAGES)
        mid = reps.finished()
        one_run = review('builtin:arithmetic', pool=[one], out_dir=tmp_path/'one', **STAGES)
        after = reps.finished()
    # 4 answers + 4 feedbacks + 4 score reads = 12 requests: request i of a call goes to replica i mod 2
    assert [m - b for m, b in zip(mid, before)] == [6, 6]
    assert [a - m for a, m in zip(after, mid)] == [12, 0]
    for stage in ('answers', 'critiques'): assert_same_records(records(two_run, stage), records(one_run, stage), 1e-4)
