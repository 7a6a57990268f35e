"Shared pytest setup: offline hubs, quiet progress bars, offscreen MuJoCo, and a throwaway project root."
import os

os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['EMT_PROGRESS'] = '0'
os.environ.setdefault('MUJOCO_GL', 'egl')

import pytest


@pytest.fixture
def tmp_project(tmp_path, monkeypatch):
    "A temporary project directory (with an empty params.yaml) that `emt.core.root()` resolves to."
    (tmp_path/'params.yaml').write_text('')
    monkeypatch.setenv('EMT_ROOT', str(tmp_path))
    return tmp_path
