"""The documentation as a reader sees it: processed pages exist; the offline preview (tools/docs.py) reads like the
site, with typeset math, no hidden sources or front matter, and the navbar; the rendered inspector shows critique text.
The pages are opened in headless Chromium, as a reader's browser would run them."""
import html.parser, json, re, shutil, subprocess, sys, tempfile
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT/'_site'
REPORT = ROOT/'nbs'/'experiments'/'pulse_smollm2.ipynb'
PAGE = SITE/'experiments'/'pulse_smollm2.html'
LOSSES_NB, LOSSES = ROOT/'nbs'/'10_losses.ipynb', SITE/'losses.html'  # the losses page has display math


class _Pre(html.parser.HTMLParser):
    "Collect the text of every <pre>, with whether it sits inside a closed <details>."
    def __init__(self):
        super().__init__(); self.stack, self.pres, self.cur = [], [], None
    def handle_starttag(self, tag, attrs):
        if tag == 'details': self.stack.append(dict(attrs).get('open', 'closed') != 'closed')
        if tag == 'pre': self.cur = []
    def handle_endtag(self, tag):
        if tag == 'details' and self.stack: self.stack.pop()
        if tag == 'pre' and self.cur is not None:
            self.pres.append((''.join(self.cur), all(self.stack))); self.cur = None
    def handle_data(self, d):
        if self.cur is not None: self.cur.append(d)


def _inspector_html() -> str:
    nb = json.loads(REPORT.read_text())
    for c in nb['cells']:
        for o in c.get('outputs', []):
            h = ''.join(o.get('data', {}).get('text/html', []))
            if 'pulse-insp' in h and '<details' in h: return h
    pytest.fail(f'{REPORT.name} has no stored inspector HTML output: execute the report')


def _squash(s): return re.sub(r'\s+', '', s)


CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync']


def _chromium():
    exe = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if not exe: pytest.skip('no Chromium on this machine (`tools/install.sh --test` installs Debian chromium)')
    return exe


def _site():
    "Build the preview with tools/docs.py unless it is there and newer than the script and the losses notebook."
    newest = max((ROOT/'tools'/'docs.py').stat().st_mtime, LOSSES_NB.stat().st_mtime)
    if not (LOSSES.exists() and PAGE.exists() and LOSSES.stat().st_mtime >= newest):
        subprocess.run([sys.executable, str(ROOT/'tools'/'docs.py')], check=True, cwd=ROOT, capture_output=True)
    return SITE


def _dom(page: Path) -> str:
    "The page's DOM after its scripts ran (MathJax typesets asynchronously: virtual time lets it finish)."
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f'--user-data-dir={profile}', '--virtual-time-budget=30000',
                            '--dump-dom', page.as_uri()], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and '</html>' in r.stdout, r.stderr[-2000:]
    return r.stdout


class _Body(html.parser.HTMLParser):
    "The visible text of <main>, the MathJax elements in it, and the navbar's links (text, href, inside a menu)."
    def __init__(self):
        super().__init__(); self.text, self.math, self.links, self.where, self.skip = [], [], [], [], 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ('main', 'nav'): self.where.append(tag)
        if tag in ('script', 'style'): self.skip += 1
        if tag.startswith('mjx-') and 'main' in self.where: self.math.append((tag, a))
        if tag in ('a', 'button') and 'nav' in self.where:  # a link, or the button that opens a menu (href None)
            self.links.append(['', a.get('href'), 'dropdown-item' in a.get('class', '')])
    def handle_endtag(self, tag):
        if tag in ('main', 'nav') and self.where: self.where.pop()
        if tag in ('script', 'style'): self.skip -= 1
        if tag in ('a', 'button') and self.links: self.links[-1].append('closed')
    def handle_data(self, d):
        if self.skip: return
        if 'main' in self.where: self.text.append(d)
        if 'nav' in self.where and self.links and len(self.links[-1]) == 3: self.links[-1][0] += d.strip()


def _parse(dom: str) -> _Body:
    b = _Body(); b.feed(dom)
    b.flat = re.sub(r'\s+', '', ''.join(b.text))  # highlighted code splits into many spans: compare without spaces
    b.text = ' '.join(b.text)
    return b


def test_preview_typesets_math_and_shows_the_page_as_quarto_would():
    "The losses page in Chromium: every display formula typeset by MathJax (offline), no TeX error; `echo: false`"
    " and `#| hide` sources, directive lines and the front matter absent; the title block and the navbar there."
    _chromium()
    page = _parse(_dom(_site()/'losses.html'))
    src = json.loads(LOSSES_NB.read_text())
    md = ''.join(''.join(c['source']) for c in src['cells'] if c['cell_type'] == 'markdown')
    n_display = md.count('$$') // 2
    assert n_display >= 3, 'the losses notebook should hold display math'
    shown = [a for t, a in page.math if t == 'mjx-container' and a.get('display') == 'true']
    assert len(shown) == n_display, f'{len(shown)} typeset display formulas, the notebook has {n_display}'
    assert not [t for t, _ in page.math if t == 'mjx-merror'], 'MathJax reported a TeX error'
    assert '$$' not in page.flat and r'\log\pi' not in page.flat, 'TeX source left on the page'
    # an `echo: false` cell (nbdev's show_doc cells) shows its output, not its source; `#| hide` cells vanish
    assert 'show_doc(' not in page.flat and 'Theimplicitrewardmargin' in page.flat
    assert 'fromnbdev.showdocimport' not in page.flat
    assert not re.search(r'#\|\s*(echo|output|hide|export|eval|include|default_exp)\b', page.text), 'a directive line is shown'
    # the front matter is the title block, not text
    assert 'output-file' not in page.flat and 'title:Losses' not in page.flat
    assert re.search(r'^\s*Losses\s+The robust preference losses', page.text), page.text[:200]
    # the navbar of _quarto.yml: Home, Tutorial, the API menu (every module page), Experiments; every link resolves
    cfg = yaml.safe_load((ROOT/'nbs'/'_quarto.yml').read_text())
    top = [t for t, h, menu, *_ in page.links if not menu]
    assert top[:5] == ['pulse-nb', 'Home', 'Tutorial', 'API ▾', 'Experiments'], top
    api = next(i['menu'] for i in cfg['website']['navbar']['left'] if i.get('text') == 'API')
    assert len([1 for _, _, menu, *_ in page.links if menu]) == len(api)
    for t, h, *_ in page.links:
        if h and not h.startswith('http'): assert (SITE/h).exists(), (t, h)


def test_rendered_inspector_page_shows_critique_text():
    "Open the rendered report in headless Chromium, print it, and find an expanded critique's text on the page."
    exe = _chromium()
    pypdf = pytest.importorskip('pypdf')
    _site()
    p = _Pre(); p.feed(_inspector_html())
    shown = [t for t, visible in p.pres if visible and len(_squash(t)) > 40]
    assert shown, 'the stored inspector output should have expanded records'
    out = Path(tempfile.mkdtemp())/'page.pdf'
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', '--no-pdf-header-footer',
                        f'--print-to-pdf={out}', PAGE.as_uri()], check=True, capture_output=True, timeout=180)
    text = _squash(' '.join(pg.extract_text() or '' for pg in pypdf.PdfReader(str(out)).pages))
    hits = [t for t in shown if _squash(t)[:40] in text]
    assert hits, 'no expanded critique text is visible on the printed page'


def test_processed_docs_have_every_page():
    "nbdev_proc_nbs output (made by tools/docs.py) holds every notebook and the site config with its navbar."
    _site()
    proc = ROOT/'_proc'
    nbs = {p.relative_to(ROOT/'nbs') for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts}
    assert nbs <= {p.relative_to(proc) for p in proc.rglob('*.ipynb')}
    assert 'Experiments' in (proc/'_quarto.yml').read_text()
