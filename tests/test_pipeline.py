"""The README's main job on a fresh clone: the corpus comes from the in-repo remote offline, the first stage runs, and a
second run has nothing to do."""
import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd, cwd, timeout=1200):
    env = {**os.environ, 'PATH': f"{BIN}:{os.environ['PATH']}", 'HF_HUB_OFFLINE': '1', 'EMT_PROGRESS': '0'}
    env.pop('EMT_ROOT', None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, shell=True)
    assert r.returncode == 0, f'{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r.stdout + r.stderr


@pytest.fixture(scope='module')
def clone(tmp_path_factory):
    "A fresh clone of the committed project (what CI and a new user get)."
    if not (ROOT/'.git').exists(): pytest.skip('not a git checkout')
    dest = tmp_path_factory.mktemp('clone')/'emt'
    _run(f'git clone -q --no-hardlinks "{ROOT}" "{dest}"', cwd=ROOT)
    return dest


def test_fresh_clone_repro_then_nothing_to_do(clone):
    assert not (clone/'data').exists()
    _run('dvc repro --pull data', cwd=clone)
    assert (clone/'artifacts'/'data'/'metaworld_mt10').is_dir()
    metrics = (clone/'metrics'/'data.json').read_text()
    assert '"skipped": 0' in metrics
    out = _run('dvc repro data', cwd=clone)
    assert 'Stage \'data\' didn\'t change' in out or 'up to date' in out.lower(), out
    status = _run('dvc status data', cwd=clone)  # the later stages take minutes: `make repro` runs them
    assert 'up to date' in status.lower(), status


def test_metrics_and_plots_of_every_stage_are_listed(clone):
    "`dvc metrics show` and `dvc plots show` read the committed outputs of the last reproduction."
    import json
    metrics = _run('dvc metrics show --json', cwd=clone)
    files = set(next(iter(json.loads(metrics).values()))['data'])
    assert {f'metrics/summary/{s}.json' for s in ('data', 'base_vlm', 'features', 'gap', 'estimator', 'ppl',
                                                  'select', 'midtrain', 'ability', 'vla', 'eval', 'report')} <= files, files
    plots = json.loads(_run('dvc plots show --json', cwd=clone))['data']
    assert {'metrics/base_vlm_loss.csv', 'metrics/midtrain_loss.csv', 'metrics/vla_loss.csv',
            'metrics/eval_curve.csv'} <= set(plots), set(plots)
    spec = plots['metrics/vla_loss.csv'][0]['content']  # the repository's template: one line per init and split
    assert spec['encoding']['color']['field'] == 'series' and 'datum.init' in spec['transform'][0]['calculate']
    rows = spec['data']['values']
    assert {r['init'] for r in rows} == {'base', 'estimator', 'random'} and {r['split'] for r in rows} == {'train', 'heldout'}
