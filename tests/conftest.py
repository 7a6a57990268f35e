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


# Markers by what a test needs, and which take minutes: `make quick` leaves these out; CI runs everything and prints
# the slowest tests (`--durations`). `slow`: the module's tests run `dvc repro`, `accelerate launch` or whole stages.
BROWSER, INTEROP = {'test_browser.py'}, {'test_interop.py'}
SLOW = {'test_paper_rehearsal.py', 'test_paper_smoke.py', 'test_pipeline.py', 'test_stage.py', 'test_dvc_resume.py',
        'test_midtrain.py', 'test_vla.py', 'test_sft.py', 'test_features.py', 'test_ppl.py', 'test_eval_external.py'}


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.path.name
        if name in BROWSER: item.add_marker(pytest.mark.browser)
        if name in INTEROP: item.add_marker(pytest.mark.interop)
        if name in SLOW: item.add_marker(pytest.mark.slow)
