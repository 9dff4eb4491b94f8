"""Check the documentation without Quarto, and render an offline preview that reads like the site.

1. `nbdev_proc_nbs` processes every notebook as `nbdev_docs` would (into `_proc/`); the site config must travel along
   and every navbar link must point to a page.
2. Each processed page is rendered (nbconvert) to `_site/<its output-file>`, the way Quarto shows it: the front matter
   becomes the title block, cells marked `echo: false` show only their output, `include: false` and `hide` cells are
   left out, `output: false` cells show only their source, directive lines are not shown, links to notebooks and to
   the site's own address point to the preview's pages, and every page carries the navbar of `_quarto.yml`. Math is
   typeset by MathJax 3 from the npm registry (`--install-mathjax` puts it in the cache once; each build copies it
   into `_site/mathjax/`), so the preview works offline.

Usage: `python tools/docs.py` (build), `python tools/docs.py --install-mathjax` (fetch MathJax with npm, once).
With Quarto installed, `nbdev_docs` builds the real site from the same `_proc/` folder."""
import html, os, re, shutil, subprocess, sys
from pathlib import Path, PurePosixPath
import jinja2, nbformat, yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from nbdev.serve import proc_nbs

ROOT = Path(__file__).resolve().parent.parent
MATHJAX_VERSION = '3.2.2'
HIDE_INPUT = 'pulse-docs-hide-input'  # the cell tag that stands for `echo: false` during rendering


def cache_dir() -> Path:
    "pulse-nb's cache: `$PULSE_CACHE`, else `~/.cache/pulse-nb` (as `pulse_nb.models`)."
    return Path(os.environ.get('PULSE_CACHE') or Path.home()/'.cache'/'pulse-nb').expanduser()


def mathjax_dir() -> Path:
    "MathJax's `es5/` build folder: `$PULSE_MATHJAX`, else the npm package installed in the cache."
    if os.environ.get('PULSE_MATHJAX'): return Path(os.environ['PULSE_MATHJAX'])
    return cache_dir()/f'mathjax-{MATHJAX_VERSION}'/'node_modules'/'mathjax'/'es5'


def install_mathjax() -> Path:
    "Install MathJax from the npm registry into the cache (once); returns its `es5/` folder."
    es5 = mathjax_dir()
    if (es5/'tex-mml-chtml.js').exists(): print(f'MathJax {MATHJAX_VERSION} is in {es5}'); return es5
    if not shutil.which('npm'): sys.exit('docs: npm is needed once to fetch MathJax (apt-get install npm)')
    subprocess.run(['npm', 'install', '--prefix', str(es5.parents[2]), '--no-save', '--no-package-lock', '--no-audit',
                    '--no-fund', '--loglevel=error', f'mathjax@{MATHJAX_VERSION}'], check=True)
    if not (es5/'tex-mml-chtml.js').exists(): sys.exit(f'docs: npm installed MathJax, but {es5} has no tex-mml-chtml.js')
    print(f'MathJax {MATHJAX_VERSION} installed in {es5}')
    return es5


def copy_mathjax(site: Path) -> str|None:
    "Copy the parts of MathJax a page loads into `site/mathjax`; its script path relative to `site` (None if absent)."
    es5 = mathjax_dir()
    if not (es5/'tex-mml-chtml.js').exists(): return None
    dest = site/'mathjax'
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5/'tex-mml-chtml.js', dest)
    for part in ('input', 'output', 'ui', 'a11y'):  # extensions, fonts and the menu load on demand from these
        if (es5/part).exists(): shutil.copytree(es5/part, dest/part, dirs_exist_ok=True)
    if (es5.parent/'LICENSE').exists(): shutil.copy2(es5.parent/'LICENSE', dest)
    return 'mathjax/tex-mml-chtml.js'


# --- a processed notebook, as Quarto reads it

_DIRECTIVE = re.compile(r'^\s*#\s*\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def split_directives(source: str) -> tuple[dict, str]:
    "The leading `#| key: value` (Quarto) and `#| flag` (nbdev) lines of a code cell as a dict, and the code after them."
    lines, opts = source.splitlines(keepends=True), {}
    i = 0
    while i < len(lines) and (m := _DIRECTIVE.match(lines[i])):
        val = m[2]
        opts[m[1]] = True if val == '' else {'true': True, 'false': False}.get(val.lower(), val)
        i += 1
    return opts, ''.join(lines[i:])


def front_matter(nb) -> dict:
    "Remove the notebook's front matter (the raw `---` cell nbdev puts first) and return it as a dict."
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'raw' and (m := re.match(r'\s*---\s*\n(.*?)\n---\s*$', c.source, re.S)):
            del nb.cells[i]
            return yaml.safe_load(m[1]) or {}
    return {}


_PANDOC_LINK = re.compile(r'\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}')


def pandoc_links(md: str) -> str:
    "Pandoc's `[text](url){attrs}` (as `show_doc` writes it) as an HTML link, which plain Markdown renders."
    return _PANDOC_LINK.sub(lambda m: f'<a href="{m[2]}" {m[3]}>{m[1]}</a>', md)


def as_quarto_shows(nb):
    "Drop, hide and clean cells the way Quarto renders a page (see the module docstring); returns `nb`."
    cells = []
    for c in nb.cells:
        if c.cell_type == 'markdown': c.source = pandoc_links(c.source)
        if c.cell_type != 'code': cells.append(c); continue
        opts, c.source = split_directives(c.source)
        if opts.get('hide') or opts.get('include') is False: continue
        if not c.source.strip() and not c.get('outputs'): continue  # nbdev empties cells that are not for the docs
        if opts.get('echo') is False: c.metadata.setdefault('tags', []).append(HIDE_INPUT)
        if opts.get('output') is False: c.outputs = []
        for o in c.get('outputs', []):
            if 'text/markdown' in o.get('data', {}): o['data']['text/markdown'] = pandoc_links(o['data']['text/markdown'])
        cells.append(c)
    nb.cells = cells
    return nb


# --- the site around the pages

def page_map(proc: Path) -> dict:
    "Each processed notebook (relative POSIX path) -> (its page's path under `_site/`, its title), from the front matter."
    out = {}
    for p in sorted(proc.rglob('*.ipynb')):
        rel = p.relative_to(proc)
        fm = front_matter(nbformat.read(p, as_version=4))
        out[rel.as_posix()] = ((rel.parent/fm.get('output-file', rel.with_suffix('.html').name)).as_posix(),
                               fm.get('title', rel.stem))
    return out


def rel_link(target: str, page: str) -> str:
    "The link from the page at `page` to the site path `target` (both relative to the site root)."
    return os.path.relpath(target, PurePosixPath(page).parent.as_posix() or '.').replace(os.sep, '/')


def inline_md(text: str) -> str:
    "A title's inline Markdown (only `code`) as HTML."
    return re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(str(text)))


def navbar(cfg: dict, pages: dict, page: str) -> str:
    "The `_quarto.yml` navbar (left items, their menus, the right-hand links) as HTML for the page at `page`."
    nav = cfg['website']['navbar']
    def link(item, cls='nav-link'):
        item = {'href': item} if isinstance(item, str) else item
        href = item.get('href', '')
        if href in pages: target, title = pages[href]; href = rel_link(target, page)
        else: title = item.get('icon', href)
        text = item.get('text') or title
        return f'<a class="{cls}" href="{html.escape(href)}">{inline_md(text)}</a>'
    left = []
    for item in nav.get('left', []):
        if 'menu' in item:
            links = ''.join(link(m, 'dropdown-item') for m in item['menu'])
            left.append(f'<div class="nav-menu"><button class="nav-link" type="button">{inline_md(item["text"])} ▾</button>'
                        f'<div class="dropdown">{links}</div></div>')
        else: left.append(link(item))
    icon = lambda i: {'github': 'GitHub'}.get(i.get('icon', ''), i.get('icon', '').title())
    right = ''.join(link({**i, 'text': i.get('text') or icon(i)}) for i in nav.get('right', []))
    brand = f'<a class="navbar-brand" href="{rel_link(pages["index.ipynb"][0], page)}">{inline_md(cfg["website"]["title"])}</a>'
    return (f'<nav class="pulse-navbar" aria-label="site">{brand}<div class="nav-left">{"".join(left)}</div>'
            f'<div class="nav-right">{right}</div></nav>')


NAV_CSS = """
body.jp-Notebook { margin: 0; padding: 0; }
.pulse-navbar { display: flex; align-items: center; gap: 1.2rem; padding: .5rem 1.5rem; background: #2780e3;
  font-family: system-ui, sans-serif; position: sticky; top: 0; z-index: 10; }
.pulse-navbar a, .pulse-navbar button { color: #fdfeff; text-decoration: none; background: none; border: none;
  font: inherit; cursor: pointer; padding: .3rem 0; }
.pulse-navbar .navbar-brand { font-size: 1.25rem; font-weight: 500; }
.pulse-navbar .nav-left { display: flex; gap: 1.2rem; flex: 1; }
.nav-menu { position: relative; }
.nav-menu .dropdown { display: none; position: absolute; top: 100%; left: 0; background: #fff; min-width: 14rem;
  box-shadow: 0 4px 12px rgba(0,0,0,.15); padding: .4rem 0; }
.nav-menu:hover .dropdown, .nav-menu:focus-within .dropdown { display: block; }
.nav-menu .dropdown a { display: block; color: #343a40; padding: .3rem 1rem; }
.nav-menu .dropdown a:hover { background: #e9ecef; }
main { max-width: 62rem; margin: 0 auto; padding: 0 1.5rem 3rem; }
.pulse-title { padding: 1.5rem 0 .5rem; }
.pulse-title h1 { margin: 0; font-family: system-ui, sans-serif; }
"""

TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}<style type="text/css">{{ resources.pulse.css }}</style>{% endblock extra_css %}
{%- block html_head_js_mathjax -%}
{%- if resources.pulse.mathjax -%}
<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
  processEscapes: true, tags: 'ams'}};</script>
<script defer src="{{ resources.pulse.mathjax }}"></script>
{%- endif -%}
{%- endblock html_head_js_mathjax -%}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{{ resources.pulse.navbar }}
<main>
<header class="pulse-title"><h1 class="title">{{ resources.pulse.title }}</h1>
{%- if resources.pulse.description %}<div class="description">{{ resources.pulse.description }}</div>{% endif -%}
</header>
{%- endblock body_header -%}
"""


def exporter() -> HTMLExporter:
    "nbconvert's JupyterLab page with the preview's template; cells tagged `HIDE_INPUT` show only their output."
    ex = HTMLExporter(template_name='lab', extra_loaders=[jinja2.DictLoader({'pulse_page.html.j2': TEMPLATE})],
                      template_file='pulse_page.html.j2', exclude_input_prompt=True, exclude_output_prompt=True)
    ex.register_preprocessor(TagRemovePreprocessor(remove_input_tags={HIDE_INPUT}), enabled=True)
    return ex


def local_links(page_html: str, page: str, nb_rel: str, pages: dict, site_url: str) -> str:
    "Links to the site's own address and to notebooks, pointed at the preview's pages."
    if site_url: page_html = page_html.replace(site_url.rstrip('/') + '/', '../' * page.count('/'))
    def fix(m):
        target = os.path.normpath(os.path.join(PurePosixPath(nb_rel).parent.as_posix(), m[1] + '.ipynb')).replace(os.sep, '/')
        return f'href="{rel_link(pages[target][0], page)}{m[2] or ""}"' if target in pages else m[0]
    return re.sub(r'href="(?!https?:)([^"#]+?)\.ipynb(#[^"]*)?"', fix, page_html)


def render(proc: Path, site: Path, cfg: dict) -> list[Path]:
    "Render every processed notebook into `site`; returns the pages written."
    pages, ex, out = page_map(proc), exporter(), []
    css = NAV_CSS + ((proc/'styles.css').read_text() if (proc/'styles.css').exists() else '')
    mathjax, site_url = copy_mathjax(site), cfg['website'].get('site-url', '')
    if mathjax is None: print(f'docs: no MathJax in {mathjax_dir()}: math shows as TeX source '
                              f'(run `python tools/docs.py --install-mathjax` once)', file=sys.stderr)
    for nb_rel, (page, _) in pages.items():
        nb = nbformat.read(proc/nb_rel, as_version=4)
        fm = front_matter(nb)
        nb.metadata['title'] = fm.get('title', PurePosixPath(nb_rel).stem)
        res = {'pulse': {'css': css, 'navbar': navbar(cfg, pages, page), 'title': inline_md(nb.metadata['title']),
                         'description': inline_md(fm.get('description', '')),
                         'mathjax': mathjax and rel_link(mathjax, page)}}
        body, _ = ex.from_notebook_node(as_quarto_shows(nb), resources=res)
        dest = site/page
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(local_links(body, page, nb_rel, pages, site_url))
        out.append(dest)
    return out


def main():
    if sys.argv[1:] == ['--install-mathjax']: install_mathjax(); return
    if sys.argv[1:]: sys.exit(__doc__.split('Usage: ')[1].split('\n')[0])
    proc = Path(proc_nbs(str(ROOT/'nbs'), force=True, n_workers=0))
    cfg = yaml.safe_load((proc/'_quarto.yml').read_text())
    navbar_items = [i.get('text') for i in cfg['website']['navbar']['left']]
    assert navbar_items == ['Home', 'Tutorial', 'API', 'Experiments'], navbar_items
    hrefs = [i['href'] for i in cfg['website']['navbar']['left'] if 'href' in i]
    hrefs += [m for i in cfg['website']['navbar']['left'] for m in i.get('menu', [])]
    missing = [h for h in hrefs if not (proc/h).exists()]
    if missing: sys.exit(f'navbar links to pages that do not exist: {missing}')
    site = ROOT/'_site'
    if site.exists(): shutil.rmtree(site)  # no page of an earlier layout left behind
    pages = render(proc, site, cfg)
    print(f'processed {len(pages)} notebooks into {proc}; rendered the offline preview into {site} '
          f'(open {site/"index.html"})')


if __name__ == '__main__': main()
