"Built-in prompt sets, answer checking and prompt loading."
import json, pytest
import pandas as pd
from pulse_nb.data import (make_arithmetic, make_conversions, make_letter_counts, make_general, check_answer, load_prompts,
                           text_id, GENERAL_INSTRUCTIONS)

def test_sets_stable_and_verifiable():
    for make in (make_arithmetic, make_conversions, make_letter_counts):
        a = make(40, seed=5)
        assert a == make(40, seed=5) and a[:10] == make(10, seed=5)
        assert len({p['id'] for p in a}) == 40
        assert all(p['id'] == text_id(p['prompt']) and check_answer(f"It is {p['answer']}.", p['answer']) for p in a)

def test_general_set():
    g = make_general()
    assert len(g) >= 100 and len({p['id'] for p in g}) == len(g) and all(p['answer'] is None for p in g)
    assert len(GENERAL_INSTRUCTIONS) == len(g)

@pytest.mark.parametrize('resp,ans,ok', [('12', '12', True), ('so 3 + 4 = 7.', '7', True), ('1,000 people', '1000', True),
                          ('-2', '-2', True), ('7.0', '7', True), ('7 or 8', '7', False), ('none', '1', False), ('', '0', False)])
def test_check_answer(resp, ans, ok): assert check_answer(resp, ans) is ok

def test_load_files(tmp_path):
    (tmp_path/'a.jsonl').write_text('\n'.join(json.dumps({'prompt': f'q{i}', 'answer': i}) for i in range(5)) + '\n\n')
    got = load_prompts(str(tmp_path/'a.jsonl'), limit=3)
    assert [p['prompt'] for p in got] == ['q0', 'q1', 'q2'] and got[1]['answer'] == '1'
    pd.DataFrame({'instruction': ['x', 'y'], 'id': ['i1', 'i2']}).to_parquet(tmp_path/'b.parquet')
    assert [p['id'] for p in load_prompts(tmp_path/'b.parquet')] == ['i1', 'i2']
    pd.DataFrame({'messages': [json.dumps([{'role': 'user', 'content': 'hi'}])]}).to_csv(tmp_path/'c.csv', index=False)
    assert load_prompts(tmp_path/'c.csv')[0]['prompt'].startswith('[')  # CSV has no nested types: the cell is a string

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
