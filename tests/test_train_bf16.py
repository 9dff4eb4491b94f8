"""The GPU training path, exercised on CPU with a random-init tiny Llama: `bf16=True` (bf16 autocast) and bf16 weights with
bf16 LoRA adapters train, with losses finite and close to fp32's."""
import math
import pytest, torch
from test_train import word_pairs, tiny_train


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(**kw):
    return tiny_train(word_pairs(8), loss='savage', max_steps=4, batch_size=4, lr=2e-2, **kw)


def test_bf16_training_is_close_to_fp32():
    fp32 = run(bf16=False)
    amp = run(bf16=True)              # fp32 weights, bf16 autocast (the bug: this raised TypeError, a duplicate keyword)
    pure = run(dtype='bfloat16')      # bf16 weights; bf16 autocast and bf16 adapters follow from them
    assert amp.trainer.accelerator.mixed_precision == 'bf16' and pure.trainer.args.bf16
    lora = lambda r: {p.dtype for n, p in r.model.named_parameters() if p.requires_grad}
    assert lora(amp) == {torch.float32} and lora(pure) == {torch.bfloat16}
    print('fp32', fp32.losses, '\nbf16 autocast', amp.losses, '\nbf16 weights', pure.losses)
    for r in (amp, pure):
        assert len(r.losses) == 4 and all(math.isfinite(l) for l in r.losses)
        assert max(abs(a - b) for a, b in zip(r.losses, fp32.losses)) <= 2e-3
    assert min(fp32.losses[1:]) < fp32.losses[0] - 1e-2                # the runs compared do train
    assert amp.losses != fp32.losses and pure.losses != amp.losses     # and bf16 really was used (it rounds differently)
