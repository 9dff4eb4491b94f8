"""Engines: HFEngine correctness, bad input, score read-out; vLLM and `vllm serve` agreement (slow);
OpenAIEngine failure paths against a local fake server that injects faults."""
import asyncio, json, logging, socket, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import pytest
from fastcore.test import test_eq as teq, test_fail as tfail
from pulse_nb.engines import (SamplingConfig, Completion, Generation, ScoreReadout, Engine, HFEngine, OpenAIEngine,
                              EngineError, RequestError, NoLogprobsError, ContextLengthError, make_engine,
                              choose_backend, render_ids)

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
        g = hf_engine.generate([Q('hi'), long], SamplingConfig(temperature=0, max_new_tokens=4), truncate=True)
        teq(g[1].prompt_tokens, 60)
        assert len(g[1].completions[0].text) > 0 or g[1].completions[0].n_tokens > 0
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
    'nologprobs'. A test double for failure injection only; the happy path is tested against `vllm serve`."""
    def __init__(self, script=None, stall=3.0):
        self.script, self.stall, self.hits, self.lock = dict(script or {}), stall, [], threading.Lock()
        fake = self
        class H(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            def log_message(self, *a): pass
            def do_GET(self): self._send(200, {'data': [{'id': 'fake'}]})
            def _send(self, code, obj=None, raw=None):
                body = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(code)
                self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(body)))
                self.end_headers(); self.wfile.write(body)
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
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
                if req.get('logprobs') and act != 'nologprobs':
                    choice['logprobs'] = {'content': [{'token': '7', 'logprob': -0.1, 'top_logprobs': [
                        {'token': '7', 'logprob': -0.1}, {'token': '8', 'logprob': -2.5}, {'token': 'x', 'logprob': -4.0}]}]}
                self._send(200, {'choices': [choice], 'usage': {'prompt_tokens': len(text.split()), 'completion_tokens': 3}})
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
    with pytest.raises(NoLogprobsError, match='no log-probs'):
        e.score([[*Q('NOLP'), {'role': 'assistant', 'content': 'Score: '}]], ['7'])
    assert e.supports_logprobs is False


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
