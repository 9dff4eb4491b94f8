"""The static critique browser (`inspect.html`) in headless Chromium: the page loads offline, its filters give exactly the
records the inspector's own filter gives, and a critique shows its feedback and scores. Also `pulse inspect`."""
import html.parser, re, subprocess, tempfile
from pathlib import Path
import pytest
from pulse_nb.inspector import write_inspect, critique_records, _passes
from pulse_nb.cli import main
from test_docs import CHROMIUM_FLAGS, _chromium as chromium  # one way to find and run Chromium

RUN = Path(__file__).resolve().parents[1]/'nbs'/'experiments'/'runs'/'pulse_rounds'/'dpo'  # a committed 3-round run
FLAGS = [*CHROMIUM_FLAGS, '--virtual-time-budget=5000']


class Recs(html.parser.HTMLParser):
    "Each record's id and whether the page hides it, the count line, and the text inside the records."
    def __init__(self):
        super().__init__(); self.shown, self.hidden, self.count, self.text, self._in = [], [], '', [], None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'details' and 'rec' in (a.get('class') or ''): (self.hidden if 'hidden' in a else self.shown).append(a['id'])
        if tag == 'b' and a.get('id') == 'f-count': self._in = 'count'
    def handle_endtag(self, tag):
        if tag == 'b': self._in = None
    def handle_data(self, d):
        if self._in == 'count': self.count += d
        self.text.append(d)


def dom(page: Path, hash_: str='') -> Recs:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([chromium(), *FLAGS, f'--user-data-dir={profile}', '--dump-dom', page.as_uri() + hash_],
                           capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and '</html>' in r.stdout, r.stderr[-2000:]
    p = Recs(); p.feed(r.stdout); return p


@pytest.fixture(scope='module')
def page(tmp_path_factory):
    return write_inspect(RUN, tmp_path_factory.mktemp('page')/'inspect.html')


@pytest.fixture(scope='module')
def records():
    return [(f'round {k}/{r["id"]}', r) for k in (1, 2, 3) for r in critique_records(RUN/f'round-{k}'/'review')]


def test_page_loads_offline_and_shows_every_record(page, records):
    p = dom(page)
    assert sorted(p.shown) == sorted(i for i, _ in records) and not p.hidden
    assert p.count == f'{len(records)} of {len(records)} shown'


@pytest.mark.parametrize('hash_,args', [
    ('#min_margin=0.5', (0.5, False, False, 'all')),
    ('#label=revision', (0.0, False, False, 'revision')),
    ('#disagreement=1&label=initial', (0.0, True, False, 'initial')),
    ('#min_margin=0.3&disagreement=1', (0.3, True, False, 'all'))])
def test_filters_in_the_page_keep_what_the_inspector_keeps(page, records, hash_, args):
    want = [i for i, r in records if _passes(r, *args)]
    assert 0 < len(want) < len(records)  # each filter keeps some records and hides others
    p = dom(page, hash_)
    assert sorted(p.shown) == sorted(want), hash_
    assert len(p.hidden) == len(records) - len(want) and p.count.startswith(f'{len(want)} of ')


def test_section_filter_keeps_one_round(page, records):
    p = dom(page, '#section=round%202')
    assert p.shown and all(i.startswith('round 2/') for i in p.shown)


def test_a_critique_shows_its_feedback_and_scores(page, records):
    i, r = records[0]
    c = next(c['c0'] for c in r['critics'] if c['c0'] and c['c0'].get('feedback'))
    text = re.sub(r'\s+', ' ', ''.join(dom(page).text))
    assert re.sub(r'\s+', ' ', c['feedback']).strip()[:60] in text
    assert f"{c['score']:.2f}" in text


def test_pulse_inspect_writes_the_page_and_errors_are_one_line(tmp_path, capsys):
    main(['inspect', str(RUN), '--out', str(tmp_path/'x.html')])
    assert (tmp_path/'x.html').read_text().count('<details class="rec"') > 0
    assert 'critiques:' in capsys.readouterr().out
    with pytest.raises(SystemExit) as e: main(['inspect', str(tmp_path/'nothing')])
    assert e.value.code == 1 and capsys.readouterr().err.strip().count('\n') == 0
    with pytest.raises(SystemExit) as e: main(['inspect', str(tmp_path)])
    assert e.value.code == 1 and 'holds no review' in capsys.readouterr().err
