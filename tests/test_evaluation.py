"""Evaluation harness: SIGKILL and resume, parallel determinism, worker failures, Meta-World and LIBERO through the
harness, the eval stage's files, and the external adapters' install errors."""
import json, os, signal, subprocess, sys, textwrap, time
from functools import partial
from pathlib import Path

os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np
import pytest

from emt.core import EmtError
from emt.evaluation import RandomPolicy, ResultsLog, evaluate, make_adapter, run_eval
from emt.metaworld import MetaWorldExpert
from emt.fixtures import LineBench, LineEnv, push_right

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f'/proc/{pid}/stat').read_text().split(') ')[1][0] != 'Z'
    except FileNotFoundError: return False


def test_sigkill_then_resume_counts_every_episode_once(tmp_path):
    out = tmp_path/'run'
    script = textwrap.dedent(f'''
        from emt.evaluation import evaluate; from emt.fixtures import LineBench, push_right
        evaluate(LineBench(step_delay=0.03), push_right, {str(out)!r}, trials=15, workers=2)
    ''')
    env = {**os.environ, 'EMT_ROOT': str(REPO), 'EMT_PROGRESS': '0'}
    proc = subprocess.Popen([sys.executable, '-c', script], env=env)
    log = ResultsLog(out/'results.jsonl')
    deadline = time.time() + 60
    while time.time() < deadline and len(log.records()) < 4: time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    before = log.records()
    assert 4 <= len(before) < 30, 'episodes must be logged as they finish, and the kill must come mid-run'
    workers = {r['pid'] for r in before}
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in workers): time.sleep(0.2)
    assert not any(_alive(p) for p in workers), 'orphaned workers must stop when the evaluation is killed'
    res = evaluate(LineBench(step_delay=0.03), push_right, out, trials=15, workers=2)
    after = ResultsLog(out/'results.jsonl').records()
    keys = [(r['task'], r['trial']) for r in after]
    assert len(keys) == len(set(keys)) == 30 and res['episodes'] == 30
    assert after[:len(before)] == before, 'episodes finished before the kill are kept, not redone'


def test_partial_last_line_is_dropped_and_rerun(tmp_path):
    evaluate(LineBench(), push_right, tmp_path, trials=3)
    p = tmp_path/'results.jsonl'
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b''.join(lines[:-1]) + lines[-1][:10])  # killed while writing the last record
    res = evaluate(LineBench(), push_right, tmp_path, trials=3)
    assert res['episodes'] == 6 and len(p.read_text().splitlines()) == 6


def test_two_workers_give_the_same_episodes_as_one(tmp_path):
    pol = partial(RandomPolicy, 1, 3)
    bench = LineBench(step_delay=0.08)  # slow enough that both workers get a task
    one = evaluate(bench, pol, tmp_path/'one', trials=4, workers=1)
    two = evaluate(bench, pol, tmp_path/'two', trials=4, workers=2)
    strip = lambda d: sorted((r['task'], r['trial'], r['seed'], r['success'], r['steps'])
                             for r in ResultsLog(d/'results.jsonl').records())
    assert strip(tmp_path/'one') == strip(tmp_path/'two')
    assert one['tasks'] == two['tasks']
    assert len({r['pid'] for r in ResultsLog(tmp_path/'two'/'results.jsonl').records()}) == 2


def _broken_policy():
    raise RuntimeError('checkpoint is corrupt')


def test_worker_failure_names_the_cause(tmp_path):
    with pytest.raises(EmtError, match='checkpoint is corrupt'):
        evaluate(LineBench(), _broken_policy, tmp_path, trials=2, workers=2)


def test_metaworld_eval_sees_the_corpus_view_and_experts_solve_mt10(tmp_path):
    from emt.params import load_params
    from emt.metaworld_sim import make_env, render
    P = load_params(REPO/'params.yaml')
    adapter = make_adapter(P.eval.benchmarks[0], P)
    assert (adapter.camera, adapter.size) == (P.corpus.vla.camera, P.corpus.vla.image_size)
    env = adapter.make_env('pick-place-v3')
    frame = env.reset(3)
    ref = make_env('pick-place-v3', env.sim.seed, adapter.size, adapter.camera, variation=3)
    assert np.array_equal(frame, render(ref)), 'same camera, size, orientation and variation as emt.metaworld_sim'
    ref.close(); env.close()
    res = evaluate(adapter, MetaWorldExpert, tmp_path, trials=1, workers=2)
    assert res['mean'] >= 0.9, res['tasks']


def test_run_eval_writes_metrics_table_figure_and_videos(tmp_project):
    from emt.params import load_params, override
    P = load_params(REPO/'params.yaml')
    P = override(P, 'eval', workers=1, videos_per_task=1, references=['expert'], benchmarks=[
        {'name': 'metaworld', 'tasks': ['reach-v3'], 'trials': 2, 'max_steps': 150, 'image_size': 64}])
    m = run_eval(P, policies={'scripted/step0': MetaWorldExpert, 'random/step0': partial(RandomPolicy, 4, 1)})
    saved = json.loads((tmp_project/'metrics/eval.json').read_text())
    assert saved['profile'] == P.profile
    assert set(saved['results']) == {'scripted/step0', 'random/step0', 'reference/expert'}
    assert saved['results']['reference/expert']['metaworld']['mean'] == 1.0  # the same episodes as the policies
    r = saved['results']['scripted/step0']['metaworld']
    assert r['mean'] == 1.0 and r['protocol']['camera'] == P.corpus.vla.camera and r['protocol']['trials_per_task'] == 2
    assert 'reach-v3' in (tmp_project/'tables/eval_success.md').read_text()
    assert (tmp_project/'figures/fig3_success.png').stat().st_size > 0
    assert len(list((tmp_project/'artifacts/eval').rglob('*.mp4'))) == 2
    assert m['results']['random/step0']['metaworld']['episodes'] == 2
    eps = (tmp_project/'metrics/eval_episodes.csv').read_text().splitlines()
    assert eps[0] == 'policy,init,benchmark,seed,step,task,trial,success,steps' and len(eps) == 1 + 3 * 2


def test_run_eval_pairs_seeds_on_disjoint_blocks_of_the_same_initial_states(tmp_project):
    "Seed k of every initialisation runs initial states k*trials..; references run all of them; VLAs only their benchmark."
    from emt.params import load_params, override
    P = override(load_params(REPO/'params.yaml'), 'eval', workers=1, videos_per_task=0, references=['random'],
                 benchmarks=[{'name': 'metaworld', 'tasks': ['reach-v3'], 'trials': 2, 'max_steps': 5, 'image_size': 64}])
    P = override(P, 'vla', seeds=[3, 7])  # seed k's block is its place in vla.seeds
    pols = {f'{i}/{b}/seed{s}/step_000010': partial(RandomPolicy, 4, 1) for i in ('base', 'estimator') for s in (3, 7)
            for b in ('metaworld', 'calvin')}
    m = run_eval(P, policies=pols)
    assert not any('calvin' in k for k in m['results'])  # a CALVIN VLA is not run on Meta-World
    trials = {k: sorted(int(t.split('/')[1]) for t in ResultsLog(tmp_project/'artifacts/eval'/k/'metaworld'/'results.jsonl').done())
              for k in m['results']}
    assert trials['base/metaworld/seed3/step_000010'] == trials['estimator/metaworld/seed3/step_000010'] == [0, 1]
    assert trials['base/metaworld/seed7/step_000010'] == [2, 3] and trials['reference/random'] == [0, 1, 2, 3]
    pooled = m['pooled']
    assert pooled['base/step_000010']['metaworld']['episodes'] == 4 and pooled['base/step_000010']['metaworld']['seeds'] == 2
    with pytest.raises(EmtError, match='no VLA is fine-tuned for a benchmark'):
        run_eval(P, policies={'base/calvin/seed0/step_000001': partial(RandomPolicy, 7, 1)})


def test_run_eval_keeps_a_seeds_block_when_seeds_are_added_and_refuses_more_trials_than_initial_states(tmp_project):
    from emt.params import load_params, override
    P = override(load_params(REPO/'params.yaml'), 'eval', workers=1, videos_per_task=0, references=[],
                 benchmarks=[{'name': 'metaworld', 'tasks': ['reach-v3'], 'trials': 1, 'max_steps': 3, 'image_size': 64}])
    P = override(P, 'vla', seeds=[0, 1, 2])
    m = run_eval(P, policies={'base/metaworld/seed2/step_000001': partial(RandomPolicy, 4, 1)})  # seeds 0, 1 not run
    done = ResultsLog(tmp_project/'artifacts/eval/base/metaworld/seed2/step_000001/metaworld/results.jsonl').done()
    assert done == {'reach-v3/0002'} and m['seeds'] == [2]
    L = override(P, 'eval', benchmarks=[{'name': 'libero', 'suite': 'libero_10', 'trials': 20, 'max_steps': 3}])
    pols = {f'base/libero/seed{s}/step_000001': partial(RandomPolicy, 7, 1) for s in (0, 1, 2)}
    with pytest.raises(EmtError, match='3 VLA seeds x 20 trials need 60 initial states per task, and it has 50'):
        run_eval(L, policies=pols)  # before any episode runs
    assert not (tmp_project/'artifacts/eval/base/libero').exists()


def test_reference_policies_random_binds_the_action_size_expert_only_where_one_exists():
    from emt.evaluation import reference_policies, run_episode
    from emt.libero import LiberoPickPlace
    refs = reference_policies(['random', 'expert'], 'metaworld')
    assert set(refs) == {'reference/random', 'reference/expert'}
    assert reference_policies(['random', 'expert'], 'libero')['reference/expert'] is LiberoPickPlace
    assert set(reference_policies(['random', 'expert'], 'calvin')) == {'reference/random'}
    pol = refs['reference/random']()
    ep = run_episode(LineEnv(max_steps=5), pol, trial=0, seed=3)
    assert pol.action_dim == LineEnv.action_dim and ep['steps'] >= 1
    with pytest.raises(EmtError, match="unknown reference policy 'oracle'"):
        reference_policies(['oracle'], 'metaworld')


def test_libero_imports_offline_without_prompt_or_home_config(tmp_path):
    env = {**os.environ, 'HOME': str(tmp_path/'home'), 'EMT_ROOT': str(tmp_path)}
    env.pop('LIBERO_CONFIG_PATH', None)
    (tmp_path/'params.yaml').write_text('')
    code = 'from emt.libero import libero_tasks; print(len(libero_tasks("libero_10")))'
    out = subprocess.run([sys.executable, '-c', code], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith('10')
    assert (tmp_path/'.libero'/'config.yaml').exists() and not (tmp_path/'home').exists()


def test_libero_scripted_policy_solves_a_libero_object_task_random_does_not():
    from emt.evaluation import run_episode
    from emt.libero import Libero, LiberoPickPlace, libero_tasks
    adapter = Libero('libero_object', size=64)
    assert adapter.protocol()['max_steps'] == 280
    env = adapter.make_env(libero_tasks('libero_object')[0])  # pick up the alphabet soup and place it in the basket
    try:
        assert run_episode(env, LiberoPickPlace(), trial=0)['success']
        env.max_steps = 60  # random actions: a short episode is enough to show no spurious success
        assert not run_episode(env, RandomPolicy(7), trial=1, seed=1)['success']
    finally: env.close()


def test_libero_scripted_expert_refuses_a_task_that_is_not_pick_and_place():
    from emt.libero import Libero, LiberoPickPlace, libero_tasks
    task = next(t for t in libero_tasks('libero_goal') if t.startswith('open_'))  # an articulated-object goal
    env = Libero('libero_goal', size=32).make_env(task)
    try:
        env.reset(0)
        with pytest.raises(EmtError, match='not a pick-and-place task'): LiberoPickPlace().bind(env)
    finally: env.close()


@pytest.mark.parametrize('name,msg', [('simpler_bridge', 'pip install -e SimplerEnv'),
                                      ('calvin', 'github.com/mees/calvin')])
def test_external_adapters_say_what_to_install(name, msg, tmp_path):
    from emt.params import Benchmark, load_params
    P = load_params(REPO/'params.yaml')
    adapter = make_adapter(Benchmark(name=name, trials=1), P)
    with pytest.raises(EmtError, match=msg): adapter.make_env(adapter.tasks()[0])


# ---------------------------------------------------------------- batched evaluation

class FrameDrivenPolicy:
    "Pushes right by an amount read from the frame (so each episode's chunk depends on its own observation); counts batches."
    calls: list = []
    def predict_batch(self, images, instructions):
        FrameDrivenPolicy.calls.append(len(images))
        return np.stack([np.full((2, 1), 0.3 + 0.7 * float(ims[0].mean()) / 255, np.float32) for ims in images])
    def predict(self, images, instruction): return self.predict_batch([images], [instruction])[0]


class BatchFactory:
    batchable = True
    def __call__(self): return FrameDrivenPolicy()


def test_batched_episodes_match_one_at_a_time(tmp_path):
    "envs > 1: episodes stepped together, one predict_batch per step, each episode as it is when run alone."
    one = evaluate(LineBench(), BatchFactory(), tmp_path/'one', trials=6)
    FrameDrivenPolicy.calls.clear()
    many = evaluate(LineBench(), BatchFactory(), tmp_path/'many', trials=6, envs=4, videos_per_task=1)
    key = lambda res: sorted((r['task'], r['trial'], r['success'], r['steps']) for r in res['records'])
    assert key(one) == key(many) and 0 < one['successes'] < one['episodes']  # some succeed, some fail
    assert max(FrameDrivenPolicy.calls) == 4 and len(FrameDrivenPolicy.calls) < sum(r['steps'] for r in many['records']) / 2
    assert len(list((tmp_path/'many/videos').rglob('*.mp4'))) == 2  # one per task, as unbatched
    par = evaluate(LineBench(), BatchFactory(), tmp_path/'par', trials=6, envs=3, workers=2)
    assert key(par) == key(one) and os.getpid() not in {r['pid'] for r in par['records']}  # in the worker processes


def test_batched_falls_back_for_policies_with_episode_state(tmp_path):
    "A factory that does not declare itself batchable (here: a seeded random policy) runs one episode at a time."
    a = evaluate(LineBench(), partial(RandomPolicy, 1, 1), tmp_path/'a', trials=3, envs=4)
    b = evaluate(LineBench(), partial(RandomPolicy, 1, 1), tmp_path/'b', trials=3)
    assert [(r['success'], r['steps']) for r in a['records']] == [(r['success'], r['steps']) for r in b['records']]
