"""Check the documentation without Quarto: process every notebook as `nbdev_docs` would (`nbdev_proc_nbs`), check the
site config travelled with them, and render each processed page to standalone HTML in `_site/` (nbconvert).

With Quarto installed, `nbdev_docs` builds the real site from the same `_proc/` folder."""
import sys
from pathlib import Path
import nbformat, yaml
from nbconvert import HTMLExporter
from nbdev.serve import proc_nbs

ROOT = Path(__file__).resolve().parent.parent

def main():
    proc = Path(proc_nbs(str(ROOT/'nbs'), force=True, n_workers=0))
    cfg = yaml.safe_load((proc/'_quarto.yml').read_text())
    navbar = [i.get('text') for i in cfg['website']['navbar']['left']]
    assert navbar == ['Home', 'Tutorial', 'API', 'Experiments'], navbar
    site, exporter, pages = ROOT/'_site', HTMLExporter(), []
    for nb_path in sorted(proc.rglob('*.ipynb')):
        nb = nbformat.read(nb_path, as_version=4)
        html, _ = exporter.from_notebook_node(nb)
        out = site/nb_path.relative_to(proc).with_suffix('.html')
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html)
        pages.append(out)
    missing = [p for p in cfg['website']['navbar']['left'] if 'href' in p and not (proc/p['href']).exists()]
    if missing: sys.exit(f'navbar links to pages that do not exist: {missing}')
    print(f'processed {len(pages)} notebooks into {proc}; rendered HTML into {site}')

if __name__ == '__main__': main()
