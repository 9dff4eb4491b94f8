"""The documentation as a reader sees it: processed pages exist, and the rendered inspector page shows critique text."""
import html.parser, json, re, shutil, subprocess, sys, tempfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT/'nbs'/'experiments'/'pulse_smollm2.ipynb'
PAGE = ROOT/'_site'/'experiments'/'pulse_smollm2.html'


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


def _chromium():
    exe = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if not exe: pytest.skip('no Chromium on this machine (tools/install.sh installs Debian chromium where it can)')
    return exe


def test_rendered_inspector_page_shows_critique_text():
    "Open the rendered report in headless Chromium, print it, and find an expanded critique's text on the page."
    exe = _chromium()
    pypdf = pytest.importorskip('pypdf')
    if not PAGE.exists(): subprocess.run([sys.executable, str(ROOT/'tools'/'docs.py')], check=True, cwd=ROOT)
    p = _Pre(); p.feed(_inspector_html())
    shown = [t for t, visible in p.pres if visible and len(_squash(t)) > 40]
    assert shown, 'the stored inspector output should have expanded records'
    out = Path(tempfile.mkdtemp())/'page.pdf'
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                        '--disable-background-networking', '--disable-component-update', '--disable-sync',
                        f'--user-data-dir={profile}', '--no-pdf-header-footer', f'--print-to-pdf={out}', PAGE.as_uri()],
                       check=True, capture_output=True, timeout=180)
    text = _squash(' '.join(pg.extract_text() or '' for pg in pypdf.PdfReader(str(out)).pages))
    hits = [t for t in shown if _squash(t)[:40] in text]
    assert hits, 'no expanded critique text is visible on the printed page'


def test_processed_docs_have_every_page():
    "nbdev_proc_nbs output (made by tools/docs.py) holds every notebook and the site config with its navbar."
    proc = ROOT/'_proc'
    if not (proc/'_quarto.yml').exists(): subprocess.run([sys.executable, str(ROOT/'tools'/'docs.py')], check=True, cwd=ROOT)
    nbs = {p.relative_to(ROOT/'nbs') for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts}
    assert nbs <= {p.relative_to(proc) for p in proc.rglob('*.ipynb')}
    assert 'Experiments' in (proc/'_quarto.yml').read_text()
