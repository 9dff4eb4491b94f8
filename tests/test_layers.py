"""The library's layers: every module imports only modules below it, and no private name crosses a module boundary.

The order is written once, here. Lazy imports inside functions count as much as those at the top of a module."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1]/'pulse_nb'

ORDER = ['core',                                   # UserError, atomic files, JSONL records, checksums, plug-in lookup
         'sandbox', 'graders', 'data', 'benchsets',  # pure functions and data: no model, no engine
         'models',
         'engines', 'engine_hf', 'engine_vllm', 'engine_openai', 'scaleout', 'verifier',
         'prompts', 'review', 'preferences',
         'losses', 'trainer', 'train',
         'evaluate', 'benchmarks',
         'config', 'inspector', 'report', 'loop',
         'cli']


def lib_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    "(line, pulse_nb module, imported names) for every import of a pulse_nb module in `path`, at any depth."
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: mod = node.module or ''
            elif node.module and node.module.split('.')[0] == 'pulse_nb': mod = node.module.partition('.')[2]
            else: continue
            names = [a.name for a in node.names]
            if not mod: out += [(node.lineno, n, []) for n in names]  # from . import prompts
            else: out.append((node.lineno, mod, names))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.partition('.')[2], []) for a in node.names if a.name.startswith('pulse_nb.')]
    return out


def modules() -> list[str]:
    return sorted(p.stem for p in LIB.glob('*.py') if not p.stem.startswith('_'))


def test_every_module_has_a_place_in_the_order():
    assert sorted(ORDER) == modules(), 'a module was added or removed: give it its place in ORDER'


@pytest.mark.parametrize('mod', ORDER)
def test_no_module_imports_one_above_it(mod):
    up = [f'{mod}.py:{line} imports {dep}' for line, dep, _ in lib_imports(LIB/f'{mod}.py')
          if dep in ORDER and ORDER.index(dep) > ORDER.index(mod)]  # a module may name itself (workers import by path)
    assert not up, '; '.join(up)


@pytest.mark.parametrize('mod', ORDER)
def test_no_private_name_crosses_a_module(mod):
    priv = [f'{mod}.py:{line} imports {dep}.{n}' for line, dep, names in lib_imports(LIB/f'{mod}.py')
            for n in names if n.startswith('_') and dep != mod]
    assert not priv, '; '.join(priv)


def test_no_module_is_long():
    long = {m: n for m in modules() if (n := len((LIB/f'{m}.py').read_text().splitlines())) > 620}
    assert not long, f'modules over 620 lines: {long}'


def test_the_checks_catch_an_upward_and_a_private_import(tmp_path):
    "The import reader sees relative, absolute and lazy imports, so the tests above can fail."
    p = tmp_path/'x.py'
    p.write_text('from .loop import run\nimport pulse_nb.cli\ndef f():\n    from pulse_nb.review import _hash\n    from . import prompts\n')
    got = [(dep, names) for _, dep, names in lib_imports(p)]
    assert got == [('loop', ['run']), ('cli', []), ('review', ['_hash']), ('prompts', [])]


@pytest.mark.parametrize('old, name, new', [
    ('pulse_nb.engines', 'HFEngine', 'pulse_nb.engine_hf'),
    ('pulse_nb.engines', 'VLLMEngine', 'pulse_nb.engine_vllm'),
    ('pulse_nb.engines', 'OpenAIEngine', 'pulse_nb.engine_openai'),
    ('pulse_nb.benchmarks', 'math_equal', 'pulse_nb.graders'),
    ('pulse_nb.benchmarks', 'bench_file', 'pulse_nb.benchsets'),
    ('pulse_nb.evaluate', 'landlock_abi', 'pulse_nb.sandbox'),
    ('pulse_nb.train', 'DeviceMetrics', 'pulse_nb.trainer'),
    ('pulse_nb.loop', 'round_table', 'pulse_nb.report'),
    ('pulse_nb.loop', 'push_to_hub', 'pulse_nb.report')])
def test_a_moved_name_still_imports_from_its_old_module_with_a_warning_naming_the_new(old, name, new):
    import importlib
    with pytest.warns(DeprecationWarning, match=f'moved to {new}.{name}'):
        obj = getattr(importlib.import_module(old), name)
    assert obj is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match='no_such_name'): getattr(importlib.import_module(old), 'no_such_name')


def test_names_the_old_modules_import_keep_their_paths_without_a_warning():
    "The commonest old imports: names a module still imports from below, so they resolve as before."
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        from pulse_nb.benchmarks import grade_math, bench_prompts, BENCHMARKS, evaluate_bench
        from pulse_nb.evaluate import run_code, extract_code
        from pulse_nb.train import PulseDPOTrainer, BetaSchedule
        from pulse_nb.loop import RunConfig, load_config, plan, PRESETS, write_report, round_dir
        from pulse_nb.review import write_atomic, read_jsonl, RunError
        from pulse_nb.models import sha256_file
        from pulse_nb.data import last_number
    from pulse_nb import graders, config, core
    assert grade_math is graders.grade_math and RunConfig is config.RunConfig and write_atomic is core.write_atomic


def test_plugins_are_found_by_name():
    "The low modules reach the backends and benchmark sets through entry points, not imports."
    from pulse_nb.core import entry_point_names
    from pulse_nb.engines import engine_class, parse_spec
    from pulse_nb.data import load_prompts
    assert entry_point_names('pulse_nb.engines') == ['hf', 'openai', 'verify', 'vllm']
    assert engine_class('hf').__module__ == 'pulse_nb.engine_hf'
    assert load_prompts('bench:gsm8k:heldout', limit=2)[0]['task'] == 'gsm8k'
    with pytest.raises(ValueError, match='use hf, openai, verify, vllm or auto'): parse_spec('tgi:x')
