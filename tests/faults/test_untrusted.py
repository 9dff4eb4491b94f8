"""Untrusted artifacts: model folders with custom code, pickled weights and adapters, and code under test that tries
to leave the sandbox. Each hostile artifact would write a marker file if it ever ran; the tests check that it did not.
(tests/test_sandbox.py covers the basic sandbox escapes; only what it lacks is here.)"""
import inspect, json, os, pickle, shutil, socket, subprocess, sys, tempfile, textwrap, threading
from pathlib import Path
import pytest
from pulse_nb.models import load_model, load_tokenizer, resolve_model
from pulse_nb.evaluate import run_code
from pulse_nb.sandbox import netns_prefix, landlock_abi


class Payload:
    "Unpickling this runs `touch MARKER`: it stands for any code hidden in a pickle."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def tiny_llama(folder, safetensors=True):
    "A random 1-layer Llama folder (config + weights), cheap to load."
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=64)
    m = LlamaForCausalLM(cfg)
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    if safetensors: m.save_pretrained(folder)
    else: cfg.save_pretrained(folder); torch.save(m.state_dict(), folder/'pytorch_model.bin')
    return folder


CUSTOM_CODE = '''import pathlib
pathlib.Path({marker!r}).write_text('custom code ran')
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig): model_type = 'evil_llama'
class EvilModel(LlamaForCausalLM): config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast): pass
'''


@pytest.fixture
def evil_folder(tmp_path, model_path):
    "A copy of the embedded model folder whose config and tokenizer config point (auto_map) to code that writes a marker."
    src, d, marker = Path(model_path), tmp_path/'evil-model', tmp_path/'MARKER'
    d.mkdir()
    for f in src.iterdir():
        if f.suffix == '.safetensors': os.symlink(f.resolve(), d/f.name)  # the weights are not what is under test
        elif f.is_file(): shutil.copy(f, d/f.name)
    for mod in ('modeling_evil', 'configuration_evil', 'tokenization_evil'):
        (d/f'{mod}.py').write_text(CUSTOM_CODE.format(marker=str(marker)))
    cfg = json.loads((d/'config.json').read_text())
    cfg['auto_map'] = {'AutoConfig': 'configuration_evil.EvilConfig', 'AutoModelForCausalLM': 'modeling_evil.EvilModel'}
    (d/'config.json').write_text(json.dumps(cfg))
    tc = json.loads((d/'tokenizer_config.json').read_text())
    tc['auto_map'] = {'AutoTokenizer': [None, 'tokenization_evil.EvilTokenizer']}
    (d/'tokenizer_config.json').write_text(json.dumps(tc))
    return d, marker


def set_model_type(folder, t):
    cfg = json.loads((folder/'config.json').read_text()); cfg['model_type'] = t
    (folder/'config.json').write_text(json.dumps(cfg))


def test_loaders_default_to_no_remote_code():
    for fn in (load_model, load_tokenizer):
        assert inspect.signature(fn).parameters['trust_remote_code'].default is False, fn.__name__


@pytest.mark.slow
def test_auto_map_code_is_not_run_by_default(evil_folder):
    d, marker = evil_folder
    # a known model_type with an auto_map: the built-in class loads, the folder's code does not run
    m = load_model(str(d)); tok = load_tokenizer(str(d))
    assert type(m).__name__ == 'LlamaForCausalLM' and 'Evil' not in type(tok).__name__
    assert not marker.exists()
    del m
    # an unknown model_type that only the custom code defines: refused with a clear error, still nothing ran
    set_model_type(d, 'evil_llama')
    with pytest.raises(ValueError, match='trust_remote_code'): load_model(str(d))
    assert not marker.exists()


@pytest.mark.slow
def test_engine_does_not_run_custom_code(evil_folder):
    from pulse_nb.engine_hf import HFEngine
    d, marker = evil_folder
    set_model_type(d, 'evil_llama')
    with pytest.raises(ValueError, match='trust_remote_code'): HFEngine(str(d))
    assert not marker.exists()


@pytest.mark.slow
def test_positive_control_custom_code_runs_when_asked(evil_folder, tmp_path):
    "The marker does work: with trust_remote_code=True (in a child, with its own modules cache) the code runs."
    d, marker = evil_folder
    set_model_type(d, 'evil_llama')
    env = {**os.environ, 'HF_MODULES_CACHE': str(tmp_path/'modules'), 'OMP_NUM_THREADS': '1'}
    code = f'from pulse_nb.models import load_model\nload_model({str(d)!r}, trust_remote_code=True)'
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=600)
    assert marker.exists(), r.stderr[-2000:]


def test_pickled_weights_are_refused(tmp_path):
    "A folder with only pytorch_model.bin: a clear error naming the missing safetensors file."
    d = tiny_llama(tmp_path/'bin-only', safetensors=False)
    with pytest.raises(OSError, match='model.safetensors'): load_model(str(d))
    tiny = tiny_llama(tmp_path/'ok')
    assert type(load_model(str(tiny))).__name__ == 'LlamaForCausalLM'  # the same model as safetensors loads


def test_malicious_pickle_is_never_unpickled(tmp_path):
    d = tiny_llama(tmp_path/'bin-only', safetensors=False)
    marker = tmp_path/'MARKER'
    with open(d/'pytorch_model.bin', 'wb') as f: pickle.dump(Payload(marker), f)
    with pytest.raises(OSError, match='model.safetensors'): load_model(str(d))
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(marker)))  # positive control: the payload does run when unpickled
    assert marker.exists()


def adapter_run(tmp_path, marker=None):
    "A `train`-style out dir (config.json + adapter/) on a tiny base model; the adapter weights as a .bin (optionally a payload)."
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = tiny_llama(tmp_path/'base')
    out = tmp_path/'train'; out.mkdir()
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=['q_proj', 'v_proj']))
    pm.save_pretrained(out/'adapter')
    sd = __import__('safetensors.torch', fromlist=['load_file']).load_file(out/'adapter'/'adapter_model.safetensors')
    (out/'adapter'/'adapter_model.safetensors').unlink()
    if marker is None: torch.save(sd, out/'adapter'/'adapter_model.bin')
    else:
        with open(out/'adapter'/'adapter_model.bin', 'wb') as f: pickle.dump(Payload(marker), f)
    (out/'config.json').write_text(json.dumps({'model': str(base)}))
    return out


def test_malicious_adapter_pickle_does_not_run(tmp_path):
    from pulse_nb.train import load_trained
    marker = tmp_path/'MARKER'
    out = adapter_run(tmp_path, marker)
    with pytest.raises(OSError, match='adapter_model.safetensors is missing'): load_trained(out, device='cpu')
    assert not marker.exists()


def test_pickled_adapter_is_refused(tmp_path):
    "An adapter folder with only adapter_model.bin: a clear error naming the missing safetensors file (train and evaluate)."
    from pulse_nb.train import load_trained
    from pulse_nb.evaluate import merge_adapter
    out = adapter_run(tmp_path)
    with pytest.raises(OSError, match='adapter_model.safetensors is missing'): load_trained(out, device='cpu')
    with pytest.raises(OSError, match='adapter_model.safetensors is missing'): merge_adapter(out/'adapter', base=str(tmp_path/'base'))
    assert not (out/'adapter'/'merged').exists()


# --- the code sandbox: what tests/test_sandbox.py does not try

@pytest.fixture
def outside(tmp_path_factory):
    d = tmp_path_factory.mktemp('outside')
    (d/'secret.txt').write_text('TOPSECRET')
    return d


@pytest.mark.parametrize('attack', [
    'import os\nopen("x", "w").write("x")\nos.replace("x", {t!r})',
    'import os\nopen("x", "w").write("x")\nos.link("x", {t!r})',
    'import os\nos.link({s!r}, "h")\nopen("h", "a").write("HACK")',
    'import os\nos.symlink({d!r}, "dirlink")\nopen("dirlink/victim.txt", "w").write("x")',
    'import os\nos.makedirs({d!r} + "/new/deeper")',
    'import tempfile\ntempfile.mkstemp(dir={d!r})',
    'import io\nio.FileIO({t!r}, "w")',
    'import os\nos.chdir({d!r})\nopen("victim.txt", "w").write("x")',
    'import shutil\nshutil.copytree(".", {d!r} + "/copy")',
])
def test_more_write_escapes_fail(outside, attack):
    before = sorted(p.name for p in outside.iterdir())
    r = run_code(attack.format(t=str(outside/'victim.txt'), s=str(outside/'secret.txt'), d=str(outside)), '')
    assert r['status'] == 'error' and 'sandbox:' in r['stderr_tail'], r
    assert sorted(p.name for p in outside.iterdir()) == before and (outside/'secret.txt').read_text() == 'TOPSECRET'


needs_landlock = pytest.mark.skipif(not landlock_abi(), reason='this kernel has no Landlock: the audit hook alone cannot stop '
                                    'code that writes from C or switches the hook off (see 08_evaluate)')


PAST_THE_HOOK = [
    'import os\nfd = os.open({d!r}, os.O_RDONLY)\nos.close(os.open("victim.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd))',
    'import os\nos.mkfifo({d!r} + "/victim.fifo")',
    'import sqlite3\nsqlite3.connect({d!r} + "/victim.db").execute("create table t(x)")',
    'import sys\nm = sys.modules["__main__"]\nm._inside = lambda p: True\nopen({d!r} + "/victim.txt", "w").write("x")',
    'import gc\nfor f in gc.get_objects():\n    if getattr(f, "__name__", "") == "_inside": f.__code__ = (lambda p: True).__code__\n'
    'open({d!r} + "/victim.txt", "w").write("x")',
]


@needs_landlock
@pytest.mark.parametrize('attack', PAST_THE_HOOK)
def test_write_escapes_past_the_hook_stop_at_the_kernel(outside, attack):
    "Code that gets past the audit hook (C-level writes, dir_fd, a disabled hook) is stopped by Landlock."
    before = sorted(p.name for p in outside.iterdir())
    r = run_code(attack.format(d=str(outside)), '', netns=False)
    assert r['status'] == 'error' and r['landlock'], r
    assert sorted(p.name for p in outside.iterdir()) == before


@needs_landlock
@pytest.mark.parametrize('attack', PAST_THE_HOOK)
def test_same_escapes_succeed_without_the_kernel_layer(outside, attack):
    "Control, per attack: with Landlock off each one does write outside, so the test above measures the kernel layer."
    before = sorted(p.name for p in outside.iterdir())
    r = run_code(attack.format(d=str(outside)), '', netns=False, landlock=False)
    assert r['status'] == 'pass' and sorted(p.name for p in outside.iterdir()) != before, r


@pytest.mark.skipif(landlock_abi() < 4, reason='Landlock ABI < 4 does not cover TCP')
def test_socket_after_rebinding_hook_globals():
    srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1); srv.settimeout(5)
    port, got = srv.getsockname()[1], []
    def accept():
        try: got.append(srv.accept()[0])
        except OSError: pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        code = ('import sys\nm = sys.modules["__main__"]\nm._DENY = ()\nm._NOIMPORT = ()\nimport socket\n'
                f's = socket.socket()\ns.settimeout(2)\ns.connect(("127.0.0.1", {port}))')
        r = run_code(code, '', netns=False)  # no network namespace: the hook (switched off) and Landlock
        t.join(3)
        assert r['status'] == 'error' and 'Permission denied' in r['stderr_tail'] and not got, r
        # control: without Landlock the same code does connect, so the refusal above is the kernel's
        t = threading.Thread(target=accept, daemon=True)
        t.start()
        r = run_code(code, '', netns=False, landlock=False)
        t.join(5)
        assert r['status'] == 'pass' and got, r
    finally:
        srv.close()
        for c in got: c.close()


def test_secret_outside_is_readable_but_not_writable(outside):
    "Reads are not confined (the sandbox promises only writes and sockets): recorded here so a change is noticed."
    r = run_code(f'DATA = open({str(outside/"secret.txt")!r}).read()', 'assert DATA == "TOPSECRET"')
    assert r['status'] == 'pass', r
    r = run_code(f'open({str(outside/"secret.txt")!r}, "r+").write("HACKED")', '')
    assert r['status'] == 'error' and (outside/'secret.txt').read_text() == 'TOPSECRET'
