"Built-in prompt sets, answer checking and prompt loading."
import json, pytest
import pandas as pd
from pulse_nb.data import (make_arithmetic, make_conversions, make_letter_counts, make_general, check_answer, load_prompts,
                           text_id, GENERAL_INSTRUCTIONS, shared_prompts, check_disjoint)

def test_sets_stable_and_verifiable():
    for make in (make_arithmetic, make_conversions, make_letter_counts):
        a = make(40, seed=5)
        assert a == make(40, seed=5) and a[:10] == make(10, seed=5)
        assert len({p['id'] for p in a}) == 40
        assert all(p['id'] == text_id(p['prompt']) and check_answer(f"It is {p['answer']}.", p['answer']) for p in a)

def test_general_set():
    g = make_general(split='all')
    assert len(g) >= 100 and len({p['id'] for p in g}) == len(g) and all(p['answer'] is None for p in g)
    assert len(GENERAL_INSTRUCTIONS) == len(g) == len(make_general()) + len(make_general(split='heldout'))
    assert shared_prompts(make_general(), make_general(split='heldout')) == []

@pytest.mark.parametrize('resp,ans,ok', [('12', '12', True), ('so 3 + 4 = 7.', '7', True), ('1,000 people', '1000', True),
                          ('-2', '-2', True), ('7.0', '7', True), ('7 or 8', '7', False), ('none', '1', False), ('', '0', False),
                          ('so $\\boxed{\\tfrac{1}{2}}$', '\\frac12', True), ('so $\\boxed{2}$', '\\frac12', False),
                          ('The answer is (2, 3].', '(2,3]', True)])
def test_check_answer(resp, ans, ok): assert check_answer(resp, ans) is ok

def test_load_files(tmp_path):
    (tmp_path/'a.jsonl').write_text('\n'.join(json.dumps({'prompt': f'q{i}', 'answer': i}) for i in range(5)) + '\n\n')
    got = load_prompts(str(tmp_path/'a.jsonl'), limit=3)
    assert [p['prompt'] for p in got] == ['q0', 'q1', 'q2'] and got[1]['answer'] == '1'
    pd.DataFrame({'instruction': ['x', 'y'], 'id': ['i1', 'i2']}).to_parquet(tmp_path/'b.parquet')
    assert [p['id'] for p in load_prompts(tmp_path/'b.parquet')] == ['i1', 'i2']
    chat = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}]
    pd.DataFrame({'messages': [json.dumps(chat)]}).to_csv(tmp_path/'c.csv', index=False)
    assert load_prompts(tmp_path/'c.csv')[0]['prompt'] == 'hi'  # CSV cells are text: a JSON chat is parsed, not used raw
    pd.DataFrame({'messages': ['[not json', '[1, 2]']}).to_csv(tmp_path/'d.csv', index=False)
    assert [p['prompt'] for p in load_prompts(tmp_path/'d.csv')] == ['[not json', '[1, 2]']  # plain text stays text
    pd.DataFrame({'messages': [json.dumps([{'role': 'system', 'content': 'x'}])]}).to_csv(tmp_path/'e.csv', index=False)
    with pytest.raises(ValueError, match='row 0.*no user turn'): load_prompts(tmp_path/'e.csv')

def test_load_errors(tmp_path):
    pd.DataFrame({'text': ['x'], 'label': [1]}).to_csv(tmp_path/'bad.csv', index=False)
    with pytest.raises(ValueError, match=r"bad.csv: no prompt column. Found columns \['text', 'label'\]"): load_prompts(tmp_path/'bad.csv')
    (tmp_path/'e.jsonl').write_text('{"prompt": ""}\n')
    with pytest.raises(ValueError, match="row 0, column 'prompt'"): load_prompts(tmp_path/'e.jsonl')
    (tmp_path/'j.jsonl').write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(ValueError, match='line 2'): load_prompts(tmp_path/'j.jsonl')
    (tmp_path/'x.txt').write_text('a')
    with pytest.raises(ValueError, match='unsupported'): load_prompts(tmp_path/'x.txt')
    with pytest.raises(ValueError, match='Unknown built-in'): load_prompts('builtin:nothing')
    with pytest.raises(ValueError, match='hf:NAME:SPLIT'): load_prompts('hf:onlyname')
    with pytest.raises(FileNotFoundError, match='bench:NAME'): load_prompts(tmp_path/'nothing.jsonl')
    with pytest.raises(ValueError, match='unknown benchmark'): load_prompts('bench:nothing')


def test_bench_prompts_keep_their_references():
    tr = load_prompts('bench:mbpp', limit=2)
    assert [p['task'] for p in tr] == ['mbpp']*2 and all('assert' in p['meta']['tests'] for p in tr)
    assert load_prompts(tr)[0]['meta'] == tr[0]['meta']   # a list of prompt dicts keeps each item's meta
    assert load_prompts('bench:gsm8k:heldout', limit=2, seed=5) == load_prompts('bench:gsm8k:heldout', limit=2, seed=0)


def test_shared_prompts_and_check_disjoint():
    a = [{'id': 'a1', 'prompt': 'What is 2 + 2?'}, {'id': 'a2', 'prompt': 'Name a colour.'}]
    assert shared_prompts(a, [{'id': 'b1', 'prompt': 'what is 2 +  2?'}]) == ['a1']   # same text, other id
    assert shared_prompts(a, [{'id': 'a2', 'prompt': 'another text'}]) == ['a2']      # same id, other text
    assert shared_prompts(['Name a colour.'], a) == ['name a colour.']
    assert shared_prompts(a, make_general(5)) == []
    check_disjoint(a, make_general(5))
    with pytest.raises(ValueError, match=r"1 prompt\(s\) are in both the training and evaluation prompts: a1"):
        check_disjoint(a, ['WHAT IS 2 + 2?'])
