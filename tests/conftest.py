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
SLOW_TESTS = {'test_sigkill_then_resume_counts_every_episode_once', 'test_two_workers_give_the_same_episodes_as_one',
              'test_libero_scripted_policy_solves_a_libero_object_task_random_does_not',
              'test_metaworld_eval_sees_the_corpus_view_and_experts_solve_mt10',
              'test_first_pretraining_steps_match_the_committed_curve', 'test_same_params_same_selected_ids',
              'test_quota_and_gumbel', 'test_features_notebook_runs_with_the_network_unreachable',
              'test_cli_builds_and_says_how_to_view'}  # 8-38 s each in CI's --durations


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.path.name
        if name in BROWSER: item.add_marker(pytest.mark.browser)
        if name in INTEROP: item.add_marker(pytest.mark.interop)
        if name in SLOW or item.originalname in SLOW_TESTS: item.add_marker(pytest.mark.slow)
