"""Fig. 3 is honest about its checkpoints: one checkpoint gives a point with error bars per initialisation (no curve over
steps 199-201), several give curves with interval bands; the loss half shows the interval over seeds."""
import csv, os

os.environ['HF_HUB_OFFLINE'] = '1'
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from emt.evaluation import plot_success, success_curve_figure, summarize
from emt.vla import plot_heldout_loss
from emt.report import fig3_figure

INITS = ('base', 'estimator', 'random')


def _results(steps):
    "Pooled eval results of three initialisations at `steps`, and the two reference policies."
    out = {f'{i}/step_{s:06d}': {'metaworld': summarize([{'task': 'a', 'success': int(t < 3 + j + s // 100)}
                                                          for t in range(12)])}
           for j, i in enumerate(INITS) for s in steps}
    for ref, k in (('random', 0), ('expert', 12)):
        out[f'reference/{ref}'] = {'metaworld': summarize([{'task': 'a', 'success': int(t < k)} for t in range(12)])}
    return out


def _loss_rows(steps, seeds=(0, 1, 2)):
    return [{'init': i, 'benchmark': 'metaworld', 'seed': str(sd), 'step': str(s), 'split': 'heldout',
             'loss': str(0.3 + 0.01 * j + 0.02 * sd - 0.0001 * s)} for j, i in enumerate(INITS) for sd in seeds for s in steps]


def _errorbars(ax): return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
def _bands(ax): return [c for c in ax.collections if isinstance(c, PolyCollection)]
def _ticks(ax): return [t.get_text() for t in ax.get_xticklabels()]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close('all')


def test_success_with_one_checkpoint_is_a_point_per_initialisation():
    fig, ax = plt.subplots()
    plot_success(ax, _results([200]), ['metaworld'])
    assert _ticks(ax) == ['without mid-training', 'mid-trained\n(estimator)', 'mid-trained\n(random)']
    assert len(_errorbars(ax)) == 3 and not _bands(ax)
    assert 'step 200' in ax.get_xlabel()
    for c, lo_hi in zip(_errorbars(ax), [_results([200])[f'{i}/step_000200']['metaworld']['ci95'] for i in INITS]):
        seg = c.lines[2][0].get_segments()[0]   # the vertical bar: the Wilson interval
        assert seg[:, 1].tolist() == pytest.approx(lo_hi)


def test_success_over_several_checkpoints_is_curves_with_bands():
    fig, ax = plt.subplots()
    plot_success(ax, _results([100, 200, 300]), ['metaworld'])
    assert ax.get_xlabel() == 'fine-tuning step' and not _errorbars(ax)
    assert len(_bands(ax)) == 3
    curves = [l for l in ax.lines if len(l.get_xdata()) == 3]
    assert len(curves) == 3 and all(list(l.get_xdata()) == [100, 200, 300] for l in curves)


def test_success_figure_with_one_checkpoint_has_no_fractional_step_ticks():
    ax = success_curve_figure(_results([200])).axes[0]
    assert len(ax.get_xticks()) == 3 and not any('.' in t for t in _ticks(ax))


def test_heldout_loss_shows_the_interval_over_seeds():
    fig, ax = plt.subplots()
    plot_heldout_loss(ax, _loss_rows([200]))
    assert len(ax.get_xticks()) == 3 and len(_errorbars(ax)) == 3
    assert all(c.lines[2][0].get_segments()[0][:, 1].max() > c.lines[2][0].get_segments()[0][:, 1].min() for c in _errorbars(ax))   # 3 seeds: an interval
    fig, ax = plt.subplots()
    plot_heldout_loss(ax, _loss_rows([100, 200]))
    assert len(_bands(ax)) == 3 and not _errorbars(ax) and ax.get_xlabel() == 'fine-tuning step'


@pytest.mark.parametrize('steps', [[200], [100, 150, 200]])
def test_report_fig3_draws_both_halves_with_intervals(tmp_path, steps):
    rows = _loss_rows(steps)
    with open(tmp_path/'vla_loss.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
    fig = fig3_figure({'eval': {'pooled': _results(steps)}}, loss_csv=tmp_path/'vla_loss.csv')
    loss, success = fig.axes[:2]
    for ax in (loss, success):
        if len(steps) == 1: assert len(ax.get_xticks()) == 3 and len(_errorbars(ax)) == 3, ax.get_title()
        else: assert len(_bands(ax)) == 3 and not _errorbars(ax), ax.get_title()
