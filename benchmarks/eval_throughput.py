"""Evaluation throughput and the LIBERO harness proof.

    python benchmarks/eval_throughput.py                 # Meta-World: episodes/hour (1 vs 2 workers), steps/s, render ms
    python benchmarks/eval_throughput.py --libero        # the same for LIBERO's env step and render
    python benchmarks/eval_throughput.py --libero-proof  # scripted vs random success on the proof tasks
    python benchmarks/eval_throughput.py --vla artifacts/vla/base/metaworld/seed0/step_000200  # a VLA: 1, 2 workers, batched

Prints its numbers with the machine (cores, load average): timings on a shared machine move with its load.
"""
from __future__ import annotations
import argparse, os, tempfile, time
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('EMT_PROGRESS', '0')
from functools import partial
from pathlib import Path

import numpy as np

from emt.evaluation import RandomPolicy, evaluate
from emt.metaworld import MetaWorld, MetaWorldExpert

BASKET = 'LIVING_ROOM_SCENE1_put_both_the_alphabet_soup_and_the_cream_cheese_box_in_the_basket'


def machine() -> str:
    return f'{os.cpu_count()} cores, load average {", ".join(f"{x:.2f}" for x in os.getloadavg())}'


def episodes_per_hour(adapter, factory, trials: int, workers: int, tasks=None) -> tuple[float, dict]:
    "Episodes per hour of a full `evaluate` call (worker start-up and env builds included)."
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = evaluate(adapter, factory, Path(d), trials=trials, tasks=tasks, workers=workers)
        dt = time.perf_counter() - t0
    return res['episodes'] / dt * 3600, res


def step_and_render(env, action_dim: int, n: int = 100) -> tuple[float, float]:
    "(env steps/s including its own rendering, ms per frame of the renderer alone) of a built task env."
    rng = np.random.default_rng(0)
    env.reset(0)
    t0 = time.perf_counter()
    for _ in range(n): env.step(rng.uniform(-0.2, 0.2, action_dim))
    steps = n / (time.perf_counter() - t0)
    return steps, render_ms(env, n)


def render_ms(env, n: int) -> float:
    if hasattr(env, 'sim') and hasattr(env.sim, 'renderer'):  # Meta-World
        from emt.metaworld_sim import render
        t0 = time.perf_counter()
        for _ in range(n): render(env.sim)
    else:  # LIBERO: robosuite's offscreen camera observation
        sim, size = env.env.env.sim, env.frame().shape[0]
        t0 = time.perf_counter()
        for _ in range(n): sim.render(camera_name='agentview', height=size, width=size)
    return (time.perf_counter() - t0) / n * 1000


def metaworld(trials: int) -> None:
    print(f'# Meta-World MT10, scripted experts, {trials} trials/task; machine: {machine()}')
    for shadows in (False, True):
        env = MetaWorld(shadows=shadows).make_env('pick-place-v3')
        sps, ms = step_and_render(env, 4)
        env.close()
        print(f'  64 px, shadows+reflections {"on " if shadows else "off"}: {sps:6.1f} env steps/s (with render), '
              f'render {ms:5.2f} ms/frame')
    env = MetaWorld().make_env('pick-place-v3'); env.reset(0)
    t0 = time.perf_counter()
    for _ in range(300): env.sim.step(np.zeros(4))
    print(f'  physics only: {300 / (time.perf_counter() - t0):6.1f} steps/s'); env.close()
    rates = {}
    for w in (1, 2):
        rates[w], res = episodes_per_hour(MetaWorld(), MetaWorldExpert, trials, w)
        print(f'  {w} worker(s): {rates[w]:7.0f} episodes/hour, success {res["mean"]:.2f} '
              f'({res["successes"]}/{res["episodes"]}); load now {os.getloadavg()[0]:.2f}')
    print(f'  speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}x')
    for name, f in (('expert', MetaWorldExpert), ('random', partial(RandomPolicy, 4, 1))):
        with tempfile.TemporaryDirectory() as d:
            res = evaluate(MetaWorld(), f, Path(d), trials=trials, workers=2, policy_name=name)
        lo, hi = res['ci95']
        print(f'  {name:7s}: mean success {res["mean"]:.2f} over {res["episodes"]} episodes (95% CI {lo:.2f}-{hi:.2f})')


def vla(path: str, trials: int, max_steps: int|None, envs: tuple[int, ...] = (5, 10)) -> None:
    """Episodes/hour of a VLA checkpoint on MT10 as the default's eval stage runs it (its camera, size and episode
    length): one prediction at a time with 1 and 2 worker processes, and batched (`envs` episodes stepped together
    in one process, one batched forward per step); each episode's success compared with the 1-worker run."""
    from emt.evaluation import VLACheckpoint, make_adapter
    from emt.params import example_params
    P = example_params()
    spec = P.eval.benchmarks[0].model_copy(update={'max_steps': max_steps} if max_steps else {})
    adapter = make_adapter(spec, P)
    print(f'# VLA {path} on Meta-World MT10, {trials} trials/task of {adapter.max_steps} steps; machine: {machine()}')
    runs = [('1 worker', dict(workers=1)), ('2 workers', dict(workers=2))] + [(f'batched x{n}', dict(envs=n)) for n in envs] + \
           [(f'2 workers x batched {n}', dict(workers=2, envs=n)) for n in envs]
    rates, ref = {}, None
    for name, kw in runs:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            res = evaluate(adapter, VLACheckpoint(path), Path(d), trials=trials, seed=P.seed, **kw)
            rates[name] = res['episodes'] / (time.perf_counter() - t0) * 3600
        outcome = {(r['task'], r['trial']): (bool(r['success']), r['steps']) for r in res['records']}
        ref = ref or outcome
        same = sum(outcome[k] == ref[k] for k in ref)
        print(f'  {name:22s}: {rates[name]:7.0f} episodes/hour ({rates[name] / rates["1 worker"]:.2f}x), success '
              f'{res["successes"]}/{res["episodes"]}; episodes with the same success and length as 1 worker: '
              f'{same}/{len(ref)}; load now {os.getloadavg()[0]:.2f}', flush=True)


def libero(size: int) -> None:
    from emt.libero import Libero, libero_tasks
    task = libero_tasks('libero_object')[0]
    print(f'# LIBERO libero_object task 0 at {size} px; machine: {machine()}')
    for shadows in (True, False):
        env = Libero('libero_object', size=size, shadows=shadows).make_env(task)
        sps, ms = step_and_render(env, 7, 50)
        env.close()
        print(f'  shadows+reflections {"on " if shadows else "off"}: {sps:5.1f} env steps/s (with render), '
              f'render {ms:6.2f} ms/frame')
    rates = {}
    for w in (1, 2):
        rates[w], res = episodes_per_hour(Libero('libero_object', size=size, max_steps=100), partial(RandomPolicy, 7, 1),
                                          2, w, tasks=libero_tasks('libero_object')[:2])
        print(f'  random policy, 2 tasks x 2 trials of 100 steps, {w} worker(s): {rates[w]:6.0f} episodes/hour')
    print(f'  speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}x')


def libero_proof(trials: int, random_trials: int, size: int, out: str) -> None:
    from emt.libero import Libero, LiberoPickPlace, libero_tasks
    print(f'# LIBERO proof: scripted (privileged poses) vs random, {size} px, 2 workers; machine: {machine()}')
    for suite, task in (('libero_10', BASKET), ('libero_object', libero_tasks('libero_object')[0])):
        for name, f, n in (('scripted', LiberoPickPlace, trials), ('random', partial(RandomPolicy, 7, 1), random_trials)):
            t0 = time.perf_counter()
            res = evaluate(Libero(suite, size=size), f, Path(out)/suite/name, trials=n, tasks=[task], workers=2,
                           videos_per_task=1, policy_name=name)
            lo, hi = res['ci95']
            print(f'  {suite:13s} {name:8s}: {res["successes"]}/{res["episodes"]} = {res["mean"]:.2f} '
                  f'(95% Wilson {lo:.2f}-{hi:.2f}), {time.perf_counter() - t0:.0f} s  [{task}]', flush=True)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--libero', action='store_true', help='LIBERO step/render/worker throughput')
    ap.add_argument('--libero-proof', action='store_true', help='scripted vs random LIBERO success')
    ap.add_argument('--trials', type=int, default=2, help='trials per task (proof: scripted trials)')
    ap.add_argument('--random-trials', type=int, default=3)
    ap.add_argument('--size', type=int, default=128, help='LIBERO image size')
    ap.add_argument('--vla', help='a VLA checkpoint folder: its episodes/hour with 1 and 2 workers')
    ap.add_argument('--max-steps', type=int, default=None, help='episode length for --vla (default: the default profile\'s)')
    ap.add_argument('--envs', default='5,10', help='--vla: episodes stepped together in the batched runs')
    ap.add_argument('--out', default=tempfile.mkdtemp(prefix='libero_proof_'), help='proof results folder')
    a = ap.parse_args()
    if a.libero_proof: libero_proof(a.trials, a.random_trials, a.size, a.out)
    elif a.libero: libero(a.size)
    elif a.vla: vla(a.vla, a.trials, a.max_steps, tuple(int(n) for n in a.envs.split(',')))
    else: metaworld(a.trials)
