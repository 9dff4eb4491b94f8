"""SIGKILL `pulse train` at many points (fixed delays and file events, fixed seeds), rerun, and check that the output
folder is never half-written while looking finished, and that the run that completes equals an uninterrupted one."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest

PAIRS = [('What is 2+2?', '4', '5'), ('Capital of France?', 'Paris.', 'Rome.'), ('Say hi.', 'Hi!', 'No.'),
         ('Colour of the sky?', 'Blue.', 'Green.')]
N_DELAYS = 10  # kills at fixed fractions of one run's duration; plus the file-event kills below


def cmd(data, out):
    # pairs without a review manifest or critic columns: the model to train and no weighting are named
    return [sys.executable, '-m', 'pulse_nb.cli', 'train', '--data', str(data), '--out', str(out), '--max-steps', '4',
            '--batch-size', '2', '--seed', '0', '--model', 'smollm2-135m-instruct', '--weighting', 'none']


ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}


def start(data, out):
    return subprocess.Popen(cmd(data, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill(p) -> bool:
    "SIGKILL the run's process group; True if it was still running (a real kill)."
    alive = p.poll() is None
    if alive: os.killpg(p.pid, signal.SIGKILL)
    p.wait(60)
    return alive and p.returncode == -signal.SIGKILL


def run_to_end(data, out) -> float:
    t0 = time.time()
    r = subprocess.run(cmd(data, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.time() - t0


def write_pairs(path):
    path.write_text(''.join(json.dumps({'prompt': p, 'chosen': c, 'rejected': r}) + '\n' for p, c, r in PAIRS))
    return path


def adapter(out) -> dict:
    from safetensors.torch import load_file
    return load_file(Path(out)/'adapter'/'adapter_model.safetensors')


def check_finished(out, ref):
    "`out` is a finished training folder: every file there, metrics readable, adapter equal to the reference's."
    out = Path(out)
    for f in ('metrics.json', 'train_args.json', 'config.json', 'adapter/adapter_model.safetensors', 'adapter/adapter_config.json'):
        assert (out/f).exists(), f'{out} looks finished but lacks {f}'
    m = json.loads((out/'metrics.json').read_text())['metrics']
    assert abs(m['train_loss'] - ref['loss']) < 1e-5, (m['train_loss'], ref['loss'])
    got = adapter(out)
    assert sorted(got) == sorted(ref['adapter'])
    for k, v in ref['adapter'].items():
        assert got[k].shape == v.shape and (got[k] - v).abs().max().item() < 1e-6, k


def check_after_kill(work, out, ref):
    "After any kill: the output folder is either absent or complete, and nothing but it and one temp folder exists."
    if out.exists(): check_finished(out, ref)
    others = [p.name for p in work.iterdir() if p != out]
    assert len(others) <= 1 and all(n.startswith('.') for n in others), others


def kill_on(data, out, pred, timeout) -> bool:
    "Start a run and SIGKILL it as soon as `pred(t0)` is true (polled every 2 ms); False if it finished first."
    t0 = time.time(); p = start(data, out)
    while not pred(t0) and p.poll() is None and time.time() - t0 < timeout: time.sleep(0.002)
    return kill(p)


@pytest.mark.slow
def test_sigkill_train_at_many_points(tmp_path, model_path):
    data = write_pairs(tmp_path/'pairs.jsonl')
    # the uninterrupted reference, which also measures one run's duration
    T = run_to_end(data, tmp_path/'ref')
    ref = {'loss': json.loads((tmp_path/'ref'/'metrics.json').read_text())['metrics']['train_loss'], 'adapter': adapter(tmp_path/'ref')}
    work = tmp_path/'work'; work.mkdir(); out = work/'out'
    kills, log = 0, []

    # 1. fixed delays across a run, chained: each run starts from whatever the previous kill left
    for i in range(N_DELAYS):
        delay = 0.3 + (0.92 * T - 0.3) * i / (N_DELAYS - 1)
        p = start(data, out); time.sleep(delay)
        killed = kill(p); kills += killed
        log.append((f'{delay:.1f}s', killed, out.exists(), sorted(x.name for x in work.iterdir())))
        check_after_kill(work, out, ref)
        if out.exists():  # the run finished before the kill: start the next point from scratch
            shutil.rmtree(out)
    # 2. kills on file events, chained on the same state: while the adapter is being saved, and once the temp folder
    #    has its metrics (the rename follows within milliseconds: the kill lands just before or just after it)
    def fresh(path, t0):  # written by this run, not left by an earlier one
        try: return path.stat().st_mtime >= t0
        except OSError: return False
    tmp_has = lambda f: lambda t0: any(fresh(d/f, t0) for d in list(work.iterdir()) if d != out)
    for name, pred in (('adapter saved', tmp_has('adapter/adapter_model.safetensors')), ('metrics written', tmp_has('metrics.json'))):
        killed = kill_on(data, out, pred, 10 * T + 60); kills += killed
        log.append((name, killed, out.exists(), sorted(x.name for x in work.iterdir())))
        check_after_kill(work, out, ref)
    # the rerun from the last state completes and equals the reference; no temp folder is left
    run_to_end(data, out); check_finished(out, ref)
    assert [x.name for x in work.iterdir()] == ['out']

    # 3. a kill right after the rename (the process is exiting): the folder is complete and a rerun reuses it
    shutil.rmtree(out)
    killed = kill_on(data, out, lambda t0: out.exists(), 10 * T + 60); kills += killed
    log.append(('renamed', killed, out.exists(), sorted(x.name for x in work.iterdir())))
    check_after_kill(work, out, ref)
    run_to_end(data, out); check_finished(out, ref)

    print(f'one run: {T:.1f}s; kill log (point, really killed, out exists, folder):', *log, sep='\n  ')
    assert kills >= 10, log

    # 4. the finished folder loads as a model (base + LoRA adapter)
    from pulse_nb.train import load_trained
    m = load_trained(out, device='cpu')
    assert type(m).__name__ == 'PeftModelForCausalLM'


@pytest.mark.slow
def test_half_written_out_is_not_trusted(tmp_path, model_path):
    "An output folder without metrics.json (as a non-atomic writer would leave it) is retrained, not reused."
    data = write_pairs(tmp_path/'pairs.jsonl')
    out = tmp_path/'out'
    (out/'adapter').mkdir(parents=True)
    (out/'adapter'/'adapter_model.safetensors').write_bytes(b'torn')
    (out/'config.json').write_text('{"model": "x"')
    run_to_end(data, out)
    assert adapter(out) and json.loads((out/'config.json').read_text())['max_steps'] == 4
    # a fresh run of all 4 steps, nothing taken from the torn folder: at the first step the policy is its reference
    # (LoRA's B = 0), so the loss is DPO's at a zero margin (the default loss, log 2); train_loss is the steps' mean
    import torch
    from pulse_nb.losses import phi_dpo
    m = json.loads((out/'metrics.json').read_text())
    losses = [h['loss'] for h in m['log_history'] if 'loss' in h]
    assert len(losses) == 4 and losses[0] == pytest.approx(phi_dpo(torch.tensor(0.)).item(), abs=1e-4), losses
    assert m['metrics']['train_loss'] == pytest.approx(sum(losses) / 4, abs=1e-4), (m['metrics'], losses)
