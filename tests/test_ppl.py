"The perplexity baselines on a toy project: score files, agreement with a direct computation, VLA fine-tuning."
import json, math, os
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['EMT_PROGRESS'] = '0'
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine

from emt.backbones import encode, load_vlm
from emt.core import DataError
from emt.samples import samples_to_dataset
from emt.params import load_params, override
from emt.scores import read_scores, write_scores
from emt.ppl import _pool, _pool_ppl, actions_to_text, perplexities, run_ppl, vla_chat_dataset
from emt.fixtures import toy_png_bytes
from emt.toy_projects import toy_ppl_project

MAIN = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "A toy project on which the stage has run once: (root, params, metrics)."
    d = tmp_path_factory.mktemp('ppl')
    old = os.environ.get('EMT_ROOT')
    os.environ['EMT_ROOT'] = str(d)
    try:
        P = toy_ppl_project(d, load_params(MAIN/'params.yaml'))
        m = run_ppl(P, num_workers=0)
        yield d, P, m
    finally:
        if old is None: os.environ.pop('EMT_ROOT', None)
        else: os.environ['EMT_ROOT'] = old


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.setenv('EMT_ROOT', str(project[0]))
    return project


def reference_ppl(model, processor, sample, max_seq_len):
    "exp(mean NLL) of the assistant tokens of one sample, from its full logits, one token at a time."
    b = encode(processor, [sample], max_seq_len, train=True)
    labels = b.pop('labels')[0]
    with torch.no_grad(): logp = torch.log_softmax(model(**b).logits[0].double(), -1)
    nll = [-float(logp[t - 1, labels[t]]) for t in range(1, len(labels)) if labels[t] != -100]
    return math.exp(sum(nll) / len(nll))


def held_out_frames(n=6):
    "VLA frames like the toy project's, not seen in fine-tuning."
    rows = []
    for i in range(100, 100 + n):
        a = [[np.sin(i + t) * 0.8, np.cos(i) * 0.5, 0.1 * t, 1.0 if i % 2 else -1.0] for t in range(3)]
        rows.append({'id': f'arm/ep900/f{i:04d}', 'source': 'arm', 'images': [{'bytes': toy_png_bytes(i), 'path': None}],
                     'instruction': 'push the cube', 'actions': a, 'action_is_pad': [False, False, False],
                     'episode_index': 900, 'frame_index': i, 'task': 'push', 'meta': '{}'})
    return samples_to_dataset(rows, 'vla')


def test_score_files_rows_order_direction(in_project):
    d, P, m = in_project
    order = [f'{s.name}/{i:04d}' for s in P.data.vlm_sources for i in range(12)]
    raw = pd.read_parquet(d/'artifacts/ppl/scores/ppl.parquet')
    assert raw.columns.tolist() == ['id', 'source', 'ppl_vla', 'ppl_base']
    assert raw['id'].tolist() == order
    for method, expected in (('vla_ppl', -raw['ppl_vla']), ('delta_ppl', -(raw['ppl_vla'] - raw['ppl_base']))):
        path = d/'artifacts/ppl/scores'/f'{method}.parquet'
        assert [str(t) for t in pq.read_schema(path).types] == ['string', 'string', 'double']
        df = pd.DataFrame(read_scores(path))
        assert df['id'].tolist() == order
        assert df['source'].tolist() == [i.split('/')[0] for i in order]
        np.testing.assert_allclose(df['score'].to_numpy(), expected.to_numpy())
        # higher = closer: the lowest VLA-LM perplexity (or the largest fall) is ranked first
        best = df['id'][df['score'].idxmax()]
        col = raw.set_index('id')
        if method == 'vla_ppl': assert best == col['ppl_vla'].idxmin()
        else: assert best == (col['ppl_vla'] - col['ppl_base']).idxmin()
    assert m['pool_samples'] == 24 and set(m['sources']) == {'captions', 'points'}
    assert (d/'figures/ppl.png').exists() and (d/'metrics/ppl.json').exists()
    assert not (d/'artifacts/ppl_train').exists()  # training checkpoints removed once the run is done


def test_perplexity_matches_reference(in_project):
    d, P, _ = in_project
    model, proc = load_vlm(d/'artifacts/ppl/vla_lm')
    pool = _pool(P, d/'artifacts/data')
    samples = [pool['captions'][i] for i in range(3)] + [pool['points'][i] for i in range(3)]
    ids, ppl = perplexities(model, proc, samples, batch_size=4, max_seq_len=64)  # padded batches of 4 and 2
    assert ids == [s['id'] for s in samples]
    ref = [reference_ppl(model, proc, s, 64) for s in samples]
    np.testing.assert_allclose(ppl, ref, rtol=1e-4)
    # and the stage stored the same numbers
    raw = pd.read_parquet(d/'artifacts/ppl/scores/ppl.parquet').set_index('id')
    np.testing.assert_allclose(raw.loc[ids, 'ppl_vla'].to_numpy(), ppl, rtol=1e-4)


def test_vla_finetuning_lowers_vla_text_perplexity(in_project):
    d, P, m = in_project
    chats = vla_chat_dataset(held_out_frames(), steps=P.vla.chunk)
    vla, vla_proc = load_vlm(d/'artifacts/ppl/vla_lm')
    base, base_proc = load_vlm(d/'artifacts/base_vlm')
    _, p_vla = perplexities(vla, vla_proc, chats, 8, 64)
    _, p_base = perplexities(base, base_proc, chats, 8, 64)
    assert (p_vla < p_base).all() and np.median(p_vla) < 0.5 * np.median(p_base), (p_vla, p_base)
    assert m['vla_lm']['final_loss'] < m['vla_lm']['first_loss']
    # the numeric pointing answers are closer to action text than captions under both baselines
    g = m['groups']
    assert g['embodied']['mean_score_vla_ppl'] > g['general']['mean_score_vla_ppl']
    assert g['embodied']['mean_score_delta_ppl'] > g['general']['mean_score_delta_ppl']


def test_no_answer_token_is_an_error(in_project):
    d, P, _ = in_project
    model, proc = load_vlm(d/'artifacts/base_vlm')
    pool = _pool(P, d/'artifacts/data')
    with pytest.warns(UserWarning, match='no assistant token'):
        _, ppl = perplexities(model, proc, pool['captions'].select(range(2)), 2, max_seq_len=12)
    assert np.isnan(ppl).all()
    with pytest.raises(DataError, match='Raise max_seq_len'):
        _pool_ppl(model, proc, {'captions': pool['captions'].select(range(2))}, 2, 12, 'base')


def test_skipped_when_not_selected(in_project, tmp_path):
    d, P, _ = in_project
    m = run_ppl(override(P, 'select', methods=['estimator', 'random']), scores=tmp_path/'scores')
    assert m['skipped'] and 'select.methods' in m['reason']
    assert json.loads((d/'metrics/ppl.json').read_text())['skipped'] is True
    assert not (tmp_path/'scores').exists()


def test_actions_text_and_score_checks(tmp_path):
    a = np.array([[-1.0, -0.337, 0.5, 0.999], [0.2, 0.2, 0.2, 0.2]])
    text = actions_to_text(a, [False, True], style='bins')
    centres = (np.array(text.split(), dtype=float) + 0.5) / 256 * 2 - 1
    np.testing.assert_allclose(centres, a[0], atol=1 / 256 + 1e-9)  # a bin index decodes to within half a bin
    assert actions_to_text(a, steps=1) == '-1.00 -0.34 +0.50 +1.00'
    with pytest.raises(Exception, match='not finite'): write_scores(tmp_path/'s.parquet', ['a'], ['x'], [np.inf])
    with pytest.raises(Exception, match='not unique'): write_scores(tmp_path/'s.parquet', ['a', 'a'], ['x', 'x'], [1, 2])
    assert not (tmp_path/'s.parquet').exists()
