"""CALVIN's evaluation loop in a Python that never imports emt or torch: `calvin_client.py` and `policy_client.py`
copied into a folder, a stand-in CALVIN checkout laid out as CALVIN's (tests/test_eval_external.py), and emt's policy
server answering every step. Chains stop at their first failed subtask, results resume, the summary is CALVIN's."""
import json, os, shutil, subprocess, sys, textwrap, threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from emt.serve import PolicyServer
from test_eval_external import FILES, SUBTASKS

REPO = Path(__file__).resolve().parents[1]
# the stand-in oracle: every subtask but the LED one is done at every third step, so each chain completes 1 subtask
ORACLE = '''
    class Oracle:
        def get_task_info_for_set(self, start, info, tasks):
            return tasks if info['t'] % 3 == 0 and 'led' not in next(iter(tasks)) else set()
'''
RUN = textwrap.dedent('''
    import json, runpy, sys
    sys.modules['emt'] = None  # importing emt would fail here, as in CALVIN's environment
    sys.argv = ['calvin_client.py', *sys.argv[1:]]
    runpy.run_path('calvin_client.py', run_name='__main__')
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(('emt.', 'torch')))), file=sys.stderr)
''')


class Chunks:
    "A policy of 3-step chunks of 7-dim actions; it counts the frames it was asked about."
    cfg = SimpleNamespace(action_dim=7, chunk=3)
    def __init__(self): self.frames = 0
    def predict_batch(self, images, instructions):
        self.frames += len(images)
        assert all(im[0].shape == (200, 200, 3) for im in images) and all(instructions)
        return [np.tile(np.linspace(-1, 1, 7, dtype=np.float32), (3, 1)) for _ in images]


def test_calvin_chains_against_the_served_policy(tmp_path):
    root = tmp_path/'calvin'
    files = {**FILES, 'calvin_models/calvin_agent/stand_in_oracle.py': ORACLE,  # and frames for 360-step subtasks
             'calvin_env/calvin_env/envs/play_table_env.py': FILES['calvin_env/calvin_env/envs/play_table_env.py']
             .replace('9 * self.t', '9 * self.t % 256')}
    for f, text in files.items():
        (root/f).parent.mkdir(parents=True, exist_ok=True); (root/f).write_text(textwrap.dedent(text))
    (root/'dataset/task_ABC_D/validation').mkdir(parents=True)
    work = tmp_path/'client'; work.mkdir()
    for f in ('calvin_client.py', 'policy_client.py'): shutil.copy(REPO/'emt'/f, work/f)
    (work/'run.py').write_text(RUN)
    policy = Chunks()
    server = PolicyServer(policy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, 'PYTHONPATH': f"{root/'calvin_models'}{os.pathsep}{root/'calvin_env'}"}
    def run(chains):
        r = subprocess.run([sys.executable, 'run.py', '--dataset', str(root/'dataset/task_ABC_D'), '--out', 'res.jsonl',
                            '--port', str(server.port), '--chains', str(chains)], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stderr.strip().splitlines()[-1]) == []  # neither emt nor torch was imported
        return json.loads(r.stdout)
    try:
        s = run(3)
        assert s == {'chains': 3, 'average_length': 1.0, 'success_after': {'1': 1.0, '2': 0.0, '3': 0.0, '4': 0.0, '5': 0.0}}
        rows = [json.loads(l) for l in (work/'res.jsonl').read_text().splitlines()]
        assert [r['chain'] for r in rows] == [0, 1, 2] and all(r['subtasks'] == SUBTASKS and r['completed'] == 1 for r in rows)
        per_chain = 1 + 360 // 3  # the drawer in one chunk; the LED fails after 360 steps of 3-step chunks
        assert policy.frames == 3 * per_chain
        s = run(5)  # resumes: only chains 3 and 4 run
        assert s['chains'] == 5 and policy.frames == 5 * per_chain
        assert [json.loads(l)['chain'] for l in (work/'res.jsonl').read_text().splitlines()] == [0, 1, 2, 3, 4]
        assert json.loads((work/'res.summary.json').read_text())['chains'] == 5
    finally: server.close()
