"""`pulse generate` against an OpenAI-compatible server that misbehaves: a fault-injecting HTTP proxy on 127.0.0.1 in
front of a real `vllm serve` (the embedded model) drops connections, stalls past the client's timeout, answers 500 and
returns malformed JSON, on a fixed schedule of request numbers.

- Transient faults (each request fails at most a few times): the run finishes; every stage has exactly its records.
- The server goes bad for good mid-run: `pulse generate` stops with a one-line error and exit 1; every checkpoint
  completed before it is on disk, whole; a rerun against a healthy server resumes, keeps those records unchanged and
  ends with every record once."""
import asyncio, json, os, subprocess, sys, threading
from pathlib import Path
import pytest
from pulse_nb.review import read_jsonl, STAGES

pytestmark = pytest.mark.slow


class FaultProxy:
    "An HTTP/1.1 proxy: request i (POSTs counted from 1) gets `plan(i)`: None (forward), 'drop', 'stall', '500' or 'badjson'."
    def __init__(self, upstream: str, plan, port: int=0):
        self.upstream, self.plan, self.n, self.faults, self.port = upstream.rstrip('/'), plan, 0, [], port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, '127.0.0.1', self.port))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    @property
    def url(self): return f'http://127.0.0.1:{self.port}/v1'

    async def _handle(self, reader, writer):
        import httpx
        try:
            head = await reader.readuntil(b'\r\n\r\n')
            lines = head.decode('latin-1').split('\r\n')
            method, path, _ = lines[0].split(' ', 2)
            hdr = {k.strip().lower(): v.strip() for k, _, v in (l.partition(':') for l in lines[1:] if l)}
            body = await reader.readexactly(int(hdr.get('content-length', 0)))
            fault = None
            if method == 'POST':
                self.n += 1
                fault = self.plan(self.n)
                if fault: self.faults.append((self.n, fault))
            if fault == 'drop': return
            if fault == 'stall': await asyncio.sleep(6); return
            if fault == '500': status, data = 500, b'{"error": "injected"}'
            elif fault == 'badjson': status, data = 200, b'{"id": "x", "choices": [{"message": '
            else:
                async with httpx.AsyncClient(timeout=300) as c:
                    r = await c.request(method, self.upstream + path[len('/v1'):] if path.startswith('/v1') else path,
                                        content=body, headers={'content-type': hdr.get('content-type', 'application/json')})
                status, data = r.status_code, r.content
            writer.write(f'HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n'
                         f'connection: close\r\n\r\n'.encode() + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self):
        "Stop serving and free the port."
        async def stop():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}


def generate(url, out, retries=3):
    spec = f'openai:{url};timeout=3;retries={retries};backoff=0.05;max_concurrency=4'
    return subprocess.run([sys.executable, '-m', 'pulse_nb.cli', 'generate', '--prompts', 'builtin:arithmetic',
                           '--limit', '4', '--critics', '2', '--engine', spec, '--max-new-tokens', '8', '--batch-size', '2',
                           '--out', str(out)], env=ENV, capture_output=True, text=True, timeout=900)


def records(run):
    out = {}
    for s in STAGES:
        recs = read_jsonl(Path(run)/f'{s}.jsonl')
        keys = [r['key'] for r in recs]
        assert len(keys) == len(set(keys)), f'duplicated records in {s}'
        out[s] = {r['key']: r for r in recs}
    return out


EXPECTED = [4, 8, 4, 8]  # answers, critiques (2 per answer), revisions, rescores


def test_transient_faults_run_finishes_with_every_record(vllm_server, tmp_path):
    kinds = ['drop', 'stall', '500', 'badjson']
    plan = lambda i: kinds[(i // 3) % 4] if i % 3 == 0 and i <= 36 else None  # every third request, 12 faults
    proxy = FaultProxy(vllm_server, plan)
    try: r = generate(proxy.url, tmp_path/'run')
    finally: proxy.close()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted({k for _, k in proxy.faults}) == sorted(kinds) and len(proxy.faults) >= 8, proxy.faults
    recs = records(tmp_path/'run')
    assert [len(recs[s]) for s in STAGES] == EXPECTED
    assert (tmp_path/'run'/'pairs.jsonl').exists()


def test_server_failing_for_good_stops_clearly_and_resumes(vllm_server, tmp_path):
    proxy = FaultProxy(vllm_server, lambda i: '500' if i > 10 else None)  # healthy for 10 requests, then only 500s
    try: r = generate(proxy.url, tmp_path/'run', retries=2)
    finally: proxy.close()
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    last = r.stderr.strip().splitlines()
    assert 'Traceback' not in r.stderr and any('500' in l for l in last) and 'rerun the same command' in last[-1], r.stderr[-3000:]
    before = records(tmp_path/'run')
    n_before = [len(before[s]) for s in STAGES]
    assert 0 < sum(n_before) < sum(EXPECTED), n_before  # some checkpoints landed, not all
    for s in STAGES:  # what is there is whole and well-formed
        for p in (tmp_path/'run'/f'{s}.jsonl',):
            if p.exists(): assert p.read_bytes().endswith(b'\n') or not p.read_bytes()
    # the server comes back healthy at the same address (the run's config names its engines by their URL)
    healthy = FaultProxy(vllm_server, lambda i: None, port=proxy.port)
    try: r = generate(healthy.url, tmp_path/'run')
    finally: healthy.close()
    assert r.returncode == 0, r.stderr[-3000:]
    after = records(tmp_path/'run')
    assert [len(after[s]) for s in STAGES] == EXPECTED
    for s in STAGES:
        for k, v in before[s].items(): assert after[s][k] == v, (s, k)  # kept, not redone
