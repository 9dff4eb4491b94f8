"""The critique inspector and the plots: on a real (tiny) review run of the embedded model, and on a run written from
a hand-made table (tests/test_preferences.py's `TABLE`) whose labels, margins and filters are worked out by hand."""
import html, json, shutil
from pathlib import Path
import pytest
from matplotlib.figure import Figure
from fastcore.test import test_eq as teq, test_fail as tfail
from pulse_nb.review import review, load_run, read_jsonl
from pulse_nb.preferences import build_pairs, save_pairs
from pulse_nb.inspector import (CritiqueInspector, critique_records, save_plots, plot_scores, plot_margins, plot_agreement,
                              plot_win_rate, plot_training, plot_noise_robustness, win_rates, NoData)

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def run_dir(hf_engine, tmp_path_factory):
    "3 arithmetic prompts, 2 critics, 24 new tokens: one real review run for the whole module."
    out = tmp_path_factory.mktemp('inspect_run')
    return review('builtin:arithmetic', hf_engine, n_critics=2, limit=3, max_new_tokens=24, out_dir=out, progress=False)


@pytest.fixture
def table_run(tmp_path):
    "TABLE's run: p1 and p5 prefer the revision (margins 4, .5), p2 the initial answer (2.75), p3 and p4 are dropped."
    from test_preferences import fake_run, TABLE
    return fake_run(tmp_path/'table', TABLE)


def feedbacks(rec):
    return [c[t]['feedback'] for c in rec['critics'] for t in ('c0', 'c1') if c[t] and c[t]['feedback']]


def test_widget_state(run_dir):
    insp = CritiqueInspector(run_dir)
    run = load_run(run_dir)
    teq(len(insp.visible_ids), 3)
    teq(sorted(insp.visible_ids), sorted(f"r{a['round']}/{a['prompt_id']}" for a in run['answers']))
    for i in reversed(range(3)):
        insp.slider.value = i
        rec = insp.current
        teq((insp.index, rec['id'], insp.dropdown.value), (i, insp.visible_ids[i], insp.visible_ids[i]))
        fbs = feedbacks(rec)
        teq(len(fbs), 4)  # 2 critics x (initial, revision)
        for fb in fbs: assert html.escape(fb) in insp.pane.value
        assert html.escape(rec['a1']) in insp.pane.value and html.escape(rec['prompt']) in insp.pane.value
    insp.dropdown.value = insp.visible_ids[1]  # the dropdown drives the slider too
    teq((insp.index, insp.current['id']), (1, insp.visible_ids[1]))
    teq(insp.show(insp.visible_ids[2])['id'], insp.visible_ids[2])
    with pytest.raises(IndexError, match='out of range'): insp.show(3)
    # the widget tree holds the live panes
    assert insp.pane in insp.widget.children and insp.slider in insp.widget.children[1].children


def test_records_match_pairs(run_dir):
    "The inspector's labels and confidence are the ones `build_pairs` trains on."
    pairs = {p['pair_id']: p for p in build_pairs(run_dir).to_list()}
    for r in critique_records(run_dir):
        if r['label'] == 'dropped': assert r['id'] not in pairs; continue
        p = pairs[r['id']]
        teq(r['label'], 'revision' if p['chosen_is_revision'] else 'initial')
        teq((r['margin'], r['agreement'], r['delta_std']), (p['margin'], p['agreement'], p['delta_std']))
        teq(r['a1'] if p['chosen_is_revision'] else r['a0'], p['chosen'][0]['content'])


def test_filters(run_dir):
    insp = CritiqueInspector(run_dir)
    recs = insp.records
    margins = sorted(r['margin'] for r in recs if r['margin'] is not None)
    m = margins[len(margins) // 2]
    teq(insp.filter(min_margin=m), [r['id'] for r in recs if r['margin'] is not None and r['margin'] >= m])
    assert all(insp.by_id[i]['margin'] >= m for i in insp.visible_ids)
    assert insp.current is None or insp.current['id'] in insp.visible_ids
    insp.min_margin.value = 0  # the widget itself drives the filter
    teq(len(insp.visible_ids), 3)
    pairs = build_pairs(run_dir).to_list()
    for d, want in (('revision', {p['pair_id'] for p in pairs if p['chosen_is_revision']}),
                    ('initial', {p['pair_id'] for p in pairs if not p['chosen_is_revision']}),
                    ('dropped', {r['id'] for r in recs} - {p['pair_id'] for p in pairs})):
        insp.direction.value = d
        teq(set(insp.visible_ids), want)
        if not want: assert insp.current is None and 'No item passes' in insp.pane.value
    insp.filter(direction='all', disagreement=True)
    dis = set()
    for r in recs:
        ds = [c['c1']['score'] - c['c0']['score'] for c in r['critics'] if c['c0']['parsed'] and c['c1']['parsed']]
        if len({(x > 0) - (x < 0) for x in ds}) > 1 or (r['agreement'] is not None and r['agreement'] < 1): dis.add(r['id'])
    teq(set(insp.visible_ids), dis)
    with pytest.raises(ValueError, match='direction must be one of'): insp.filter(direction='sideways')


def test_labels_and_filters_on_a_known_table(table_run):
    "Worked by hand from TABLE: p1 (Δ +5, +3), p2 (+.5, -6), p3 (no critic on both), p4 (ties), p5 (+2, -1)."
    insp = CritiqueInspector(table_run)
    got = {r['id']: (r['label'], r['margin'], r['agreement']) for r in insp.records}
    teq(got, {'r0/p1': ('revision', 4.0, 1.0), 'r0/p2': ('initial', 2.75, 0.5), 'r0/p3': ('dropped', None, None),
              'r0/p4': ('dropped', 0.0, None), 'r0/p5': ('revision', 0.5, 0.5)})
    teq(insp.filter(min_margin=3), ['r0/p1'])
    insp.min_margin.value = 0  # no margin filter
    for d, want in (('revision', ['r0/p1', 'r0/p5']), ('initial', ['r0/p2']), ('dropped', ['r0/p3', 'r0/p4'])):
        insp.direction.value = d
        teq(insp.visible_ids, want)
    insp.filter(direction='all', disagreement=True)
    teq(insp.visible_ids, ['r0/p2', 'r0/p5'])  # critics disagree on the sign of Δ
    teq(CritiqueInspector(table_run, unparsed=True).visible_ids, ['r0/p3'])


def test_unparsed_findable(run_dir, tmp_path):
    # in the real run: the filter finds exactly the items with an unparsed critique
    run = load_run(run_dir)
    bad = {f"r{c['round']}/{c['prompt_id']}" for c in run['critiques'] + run['rescores'] if not c['parsed']}
    teq(set(CritiqueInspector(run_dir, unparsed=True).visible_ids), bad)
    # a copy where one critic's re-score fell below min_mass, recorded as `review` records it (score None, parsed False)
    d = tmp_path/'run'
    shutil.copytree(run_dir, d)
    rs = read_jsonl(d/'rescores.jsonl')
    rs[0].update(score=None, score_std=None, parsed=False, mass=0.12, raw='I cannot rate <this>.')
    (d/'rescores.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rs))
    insp = CritiqueInspector(d, unparsed=True)
    want = bad | {f"r{rs[0]['round']}/{rs[0]['prompt_id']}"}
    teq(set(insp.visible_ids), want)
    insp.show(f"r{rs[0]['round']}/{rs[0]['prompt_id']}")
    assert 'unparsed' in insp.pane.value and 'I cannot rate &lt;this&gt;.' in insp.pane.value and '(mass 0.12)' in insp.pane.value
    assert insp.current['n_unparsed'] >= 1


def test_to_html_escapes(run_dir, table_run, tmp_path):
    insp = CritiqueInspector(run_dir)
    page = insp.to_html()
    teq(page.count('<details'), 3 + page.count('<summary class="small">raw text'))
    for r in insp.records:
        for fb in feedbacks(r): assert html.escape(fb) in page
    one = insp.to_html(max_items=1)
    teq(one.count('class="pulse-insp-item"'), 1)
    assert '2 more items not shown' in one
    # a dataset (parquet file) with markup in the prompt and the answers
    pairs = build_pairs(table_run).to_list()
    teq(len(pairs), 3)
    evil = dict(pairs[0], pair_id='evil', prompt=[{'role': 'user', 'content': 'Hi <script>alert("x")</script> & <b>bye'}],
                chosen=[{'role': 'assistant', 'content': '</details></div><img src=x onerror=alert(1)>'}])
    from datasets import Dataset
    path = save_pairs(Dataset.from_list(pairs + [evil]), tmp_path)['parquet']
    insp = CritiqueInspector(path)
    teq(insp.visible_ids, [p['pair_id'] for p in pairs] + ['evil'])
    page = insp.to_html()
    assert '<script' not in page and '<img' not in page and '<b>bye' not in page
    assert html.escape('Hi <script>alert("x")</script> & <b>bye') in page
    assert html.escape('</details></div><img src=x onerror=alert(1)>') in page
    teq(page.count('<details'), len(pairs) + 1)


def test_plots(run_dir, table_run, tmp_path):
    for f in (plot_scores, plot_margins, plot_agreement, plot_win_rate): assert isinstance(f(table_run), Figure), f
    # what they draw, from TABLE by hand: 18 parsed scores (x: 5 on a0, 4 on a1; y: 4 and 5), 3 labelled pairs, 2 of 3 revisions
    ax = plot_scores(table_run).axes[0]
    teq([len(c.get_offsets()) for c in ax.collections], [5, 4, 4, 5])
    teq(sorted(float(y) for c in ax.collections for _, y in c.get_offsets()), sorted([3, 8, 7, 7.5, 5, 6, 6, 4, 6, 4, 7, 8, 2, 6, 5, 5, 5, 4]))
    ax = plot_margins(table_run).axes[0]
    teq((ax.get_title(), sum(p.get_height() for p in ax.patches)), ('Pair margins (3 pairs)', 3))
    ax = plot_win_rate(table_run).axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([2 / 3]) and [t.get_text() for t in ax.texts] == ['2/3\n(2 dropped)']
    for f in (plot_scores, plot_agreement): assert isinstance(f(run_dir), Figure), f  # the real run has parsed scores
    wr = win_rates(table_run)
    teq(wr[['round', 'revision', 'initial', 'dropped']].values.tolist(), [[0, 2, 1, 2]])
    assert abs(wr.win_rate[0] - 2 / 3) < 1e-12
    wr = win_rates(run_dir)
    teq(int((wr.revision + wr.initial + wr.dropped).sum()), 3)
    # a run whose items are all dropped (every critic gives both answers the same score): nothing to plot for pairs
    from test_preferences import fake_run, TABLE
    ties = fake_run(tmp_path/'ties', [t[:5] + ({'x': (5, 5), 'y': (7, 7)},) for t in TABLE])
    for f in (plot_margins, plot_win_rate): tfail(lambda: f(ties), contains='no labelled pairs')
    assert isinstance(plot_scores(ties), Figure)
    import pandas as pd
    res = pd.DataFrame([dict(loss=l, flip_rate=f, seed=s, accuracy=1 - f * k) for l, k in (('dpo', 1), ('savage', .5))
                        for f in (0, .2, .4) for s in (0, 1)])
    assert isinstance(plot_noise_robustness(res), Figure)
    res.to_csv(tmp_path/'res.csv', index=False)
    assert isinstance(plot_noise_robustness(tmp_path/'res.csv'), Figure)
    tfail(lambda: plot_noise_robustness(res.drop(columns='flip_rate')), contains="lack columns ['flip_rate']")
    paths = save_plots(run_dir, tmp_path/'plots', robustness=res)
    names = [p.name for p in paths]
    assert {'scores.png', 'agreement.png', 'noise_robustness.png'} <= set(names)
    for p in paths: assert p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and p.stat().st_size > 1000


def test_training_curves(run_dir, table_run, tmp_path):
    "A real 2-step LoRA run on TABLE's 3 pairs, plotted."
    from pulse_nb.train import train
    ds = build_pairs(table_run)
    teq(ds.num_rows, 3)
    dirs = [train(ds, loss=l, max_steps=2, batch_size=2, out_dir=tmp_path/l, save=False, progress=False, num_threads=1).out_dir
            for l in ('savage',)]
    assert isinstance(plot_training(dirs), Figure)
    paths = save_plots(run_dir, tmp_path/'plots', train_dirs=dirs)
    assert 'training.png' in [p.name for p in paths]
    tfail(lambda: plot_training([tmp_path]), contains='no metrics.json')


def test_empty_and_unfinished_runs(run_dir, tmp_path):
    empty = tmp_path/'empty'; empty.mkdir()
    (empty/'manifest.json').write_text(json.dumps({'format': 1, 'rounds': {}}))
    teq(save_plots(empty), [])
    insp = CritiqueInspector(empty)
    teq((insp.visible_ids, insp.current), ([], None))
    assert '0 items' in insp.to_html()
    # killed after the critiques: no revisions yet, so no pairs; the score plots still work
    part = tmp_path/'part'; part.mkdir()
    for f in ('manifest.json', 'prompts.jsonl', 'answers.jsonl', 'critiques.jsonl'): shutil.copy(Path(run_dir)/f, part/f)
    teq([p.name for p in save_plots(part)], ['scores.png', 'agreement.png'])
    teq(CritiqueInspector(part).records, [])
    tfail(lambda: CritiqueInspector(tmp_path/'nope'), contains='does not exist')
