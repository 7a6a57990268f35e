"""The README's main job on a fresh clone: the corpus comes from the in-repo remote offline, the first stage runs, and a
second run has nothing to do."""
import os, shutil, subprocess, sys
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
