"""The CALVIN and SimplerEnv adapters against stand-ins laid out as the real packages are: a CALVIN checkout
(`calvin_models/calvin_agent`, `calvin_models/conf`, `calvin_env`) whose `get_sequences` starts a process pool as
CALVIN's does, run through `emt.evaluation.evaluate` with daemonic workers; SimplerEnv's rotation against scipy."""
import json, multiprocessing as mp, os, sys, textwrap
from functools import partial

import numpy as np
import pytest

from emt.core import EmtError
from emt.evaluation import evaluate
from emt.eval_external import Calvin, calvin_chains, calvin_conf, euler_to_axis_angle, simpler_action
from emt.fixtures import ConstantPolicy

SUBTASKS = ['open_drawer', 'turn_on_led', 'move_slider_left', 'lift_red_block_table', 'place_in_drawer']
FILES = {
    'calvin_models/calvin_agent/__init__.py': '',
    'calvin_models/calvin_agent/evaluation/__init__.py': '',
    'calvin_models/calvin_agent/evaluation/multistep_sequences.py': f'''
        from multiprocessing import Pool
        def _chain(i): return {{'led': i % 2, 'drawer': 'closed'}}, {SUBTASKS!r}
        def get_sequences(num_sequences=1000, num_workers=None):
            with Pool(2) as p: return p.map(_chain, range(num_sequences))  # CALVIN generates them in a pool too
    ''',
    'calvin_models/calvin_agent/evaluation/utils.py': '''
        def get_env_state_for_initial_condition(c): return ('robot', c), ('scene', c)
    ''',
    'calvin_models/calvin_agent/stand_in_oracle.py': '''
        class Oracle:  # a subtask is done every third step
            def get_task_info_for_set(self, start, info, tasks): return tasks if info['t'] % 3 == 0 else set()
    ''',
    'calvin_models/conf/callbacks/rollout/tasks/new_playtable_tasks.yaml': '_target_: calvin_agent.stand_in_oracle.Oracle\n',
    'calvin_models/conf/annotations/new_playtable_validation.yaml': ''.join(f'{s}: ["{s.replace("_", " ")}"]\n' for s in SUBTASKS),
    'calvin_env/calvin_env/__init__.py': '',
    'calvin_env/calvin_env/envs/__init__.py': '',
    'calvin_env/calvin_env/envs/play_table_env.py': '''
        import numpy as np
        class Env:
            def reset(self, robot_obs=None, scene_obs=None): self.t = 0; return self.obs()
            def obs(self): return {'rgb_obs': {'rgb_static': np.full((200, 200, 3), 9 * self.t, np.uint8)}}
            def step(self, a): self.t += 1; return self.obs(), 0.0, False, {'t': self.t}
            def get_info(self): return {'t': self.t}
            def close(self): pass
        def get_env(path, show_gui=False): return Env()
    '''}


@pytest.fixture()
def calvin(tmp_path, monkeypatch):
    "A stand-in CALVIN checkout on the path (and the workers' path), and its task_ABC_D data folder."
    root = tmp_path/'calvin'
    for f, text in FILES.items():
        (root/f).parent.mkdir(parents=True, exist_ok=True); (root/f).write_text(textwrap.dedent(text))
    paths = [str(root/'calvin_models'), str(root/'calvin_env')]
    for p in paths: monkeypatch.syspath_prepend(p)
    monkeypatch.setenv('PYTHONPATH', ':'.join(paths))
    (root/'dataset/task_ABC_D/validation').mkdir(parents=True)
    yield root
    for m in [m for m in sys.modules if m.startswith(('calvin_agent', 'calvin_env'))]: del sys.modules[m]


def _in_daemon(q):
    try: calvin_chains(4); q.put('ok')
    except Exception as e: q.put(f'{type(e).__name__}: {e}')


def test_calvin_chains_cannot_be_made_in_a_daemonic_worker(calvin):
    "Why `prepare` exists: CALVIN's pool inside an eval worker (a daemonic process) fails."
    ctx = mp.get_context('spawn'); q = ctx.Queue()
    p = ctx.Process(target=_in_daemon, args=(q,), daemon=True); p.start(); p.join(60)
    assert 'daemonic processes are not allowed to have children' in q.get(timeout=5)
    assert len(calvin_chains(4)) == 4  # in this (non-daemonic) process it works


def test_calvin_runs_in_daemonic_workers_with_chains_made_once(calvin, tmp_path):
    adapter = Calvin(size=16, dataset_path=str(calvin/'dataset/task_ABC_D'))
    with pytest.raises(EmtError, match='call Calvin.prepare'):
        adapter.make_env('chains')
    evaluate(adapter, partial(ConstantPolicy, [[0, 0, 0, 0, 0, 0, 1]]), tmp_path/'eval', trials=4, workers=2)
    rows = [json.loads(l) for l in (tmp_path/'eval/results.jsonl').read_text().splitlines()]
    assert len(rows) == 4 and all(r['success'] and r['completed'] == 5 for r in rows), rows
    assert os.getpid() not in {r['pid'] for r in rows}  # the daemonic workers ran them (whichever took each unit)
    proto = json.loads((tmp_path/'eval/protocol.json').read_text())
    assert len(proto['chains_digest']) == 16


def test_calvin_conf_is_beside_calvin_agent(calvin, tmp_path):
    assert calvin_conf(calvin/'calvin_models/calvin_agent/__init__.py') == calvin/'calvin_models/conf'
    (tmp_path/'elsewhere/calvin_agent').mkdir(parents=True)
    with pytest.raises(EmtError, match='install CALVIN from its repository checkout'):
        calvin_conf(tmp_path/'elsewhere/calvin_agent/__init__.py')


def test_simpler_rotation_is_what_scipy_says():
    from scipy.spatial.transform import Rotation
    for rpy in np.random.default_rng(1).uniform(-3, 3, (50, 3)):
        np.testing.assert_allclose(euler_to_axis_angle(rpy), Rotation.from_euler('xyz', rpy).as_rotvec(), atol=1e-7)
    a = simpler_action([0.01, 0, 0, 0.1, -0.2, 0.3, -1])
    np.testing.assert_allclose(a[3:6], Rotation.from_euler('xyz', [0.1, -0.2, 0.3]).as_rotvec())
    assert a[6] == -1 and not np.allclose(a[3:6], [0.1, -0.2, 0.3])  # passed as is, it would be these
