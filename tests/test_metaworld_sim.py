"Meta-World helpers (emt.metaworld_sim) and VLA demonstrations (emt.corpus_vla): projection, determinism, success, padding."
import json, os
os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco
import numpy as np
import pytest

import emt.corpus_vla as cv
from emt.core import EmtError
from emt.samples import check_sample, load_dataset_dir, samples_to_dataset, save_dataset
from emt.metaworld_sim import (CAMERAS, body_box, make_env, object_states, project, project_gl, render, scripted_policy,
                     upside_down)

CORNERS = ('corner', 'corner2', 'corner3', 'corner4')


def segmentation(env, camera):
    "Per-pixel geom id of the upright frame of `camera` (-1 where no geom), rendered with MuJoCo's segmentation."
    r = mujoco.Renderer(env.model, env.size, env.size)
    try:
        r.enable_segmentation_rendering()
        r.update_scene(env.data, camera=camera)
        seg = r.render()
    finally: r.close()
    ids = np.where(seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM, seg[..., 0], -1)
    return ids[::-1, ::-1] if upside_down(env, camera) else ids


def subtree(m, name):
    out = {m.body(name).id}
    for b in range(m.nbody):
        if m.body_parentid[b] in out: out.add(b)
    return out


def geoms_near(ids, uv, r=1):
    x, y = int(uv[0]), int(uv[1])
    return set(ids[max(y-r, 0):y+r+1, max(x-r, 0):x+r+1].ravel().tolist())


@pytest.fixture(scope='module')
def pick_env():
    env = make_env('pick-place-v3', seed=0, size=128)
    # move the gripper down near the puck, so the frame is not the reset pose
    for _ in range(15): env.step(np.array([0, 0, -1, -1], np.float32))
    yield env
    env.close()


@pytest.mark.parametrize('camera', CORNERS)
def test_projection_lands_on_the_body(pick_env, camera):
    """The projected centre of a visible geom lands on pixels that MuJoCo's segmentation gives to that body (the puck)
    or to the gripper (whose parts occlude each other)."""
    env, m = pick_env, pick_env.model
    ids = segmentation(env, camera)
    gripper = subtree(m, 'right_hand')
    for body in ('obj', 'hand', 'leftpad', 'rightpad'):
        b = m.body(body).id
        want = {b} if body == 'obj' else gripper
        geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == b and m.geom_group[g] < 3 and m.geom_rgba[g, 3] > 0]
        g = max(geoms, key=lambda g: m.geom_size[g].prod())  # its largest visible geom
        uv = project(env, env.data.geom_xpos[g][None], camera)[0]
        hit = {m.geom_bodyid[i] for i in geoms_near(ids, uv) if i >= 0}
        assert hit & want, (camera, body, uv, hit)


def test_projection_matches_mujoco_camera(pick_env):
    "`project` agrees with the frustum of MuJoCo's own GL camera for every named camera."
    pts = np.stack([object_states(pick_env)['hand'], pick_env.data.body('obj').xpos, [0, 0.6, 0.0], [0.3, 0.9, 0.4]])
    for c in CAMERAS:
        np.testing.assert_allclose(project(pick_env, pts, c), project_gl(pick_env, pts, c), atol=1e-3)


def test_frames_are_upright(pick_env):
    "In every corner camera a higher point is higher up in the image, and the render agrees with the projection."
    for c in CORNERS:
        uv = project(pick_env, [[0, 0.6, 0.0], [0, 0.6, 0.3]], c)
        assert uv[1, 1] < uv[0, 1], c
    # the puck's box is where its pixels are in the rendered frame
    ids = segmentation(pick_env, 'corner4')
    m = pick_env.model
    mask = np.isin(ids, [g for g in range(m.ngeom) if m.geom_bodyid[g] == m.body('obj').id])
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = body_box(pick_env, 'obj', 'corner4')
    assert x0 - 1 <= xs.min() and xs.max() <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() <= y1 + 1
    # and the rendered frame shows the (red) puck on those pixels: `render` is turned the same way as `project`
    img = render(pick_env, 'corner4').astype(int)
    assert img.shape == (128, 128, 3)
    r, g = img[mask][:, 0].mean(), img[mask][:, 1].mean()
    assert r > 2 * g, (r, g)


def test_bad_task_and_camera():
    with pytest.raises(EmtError, match='Unknown Meta-World task'): make_env('pick-place-v2', 0, 32)
    with pytest.raises(EmtError, match='no camera'): make_env('reach-v3', 0, 32, camera='front')


TINY = dict(tasks=['reach-v3', 'drawer-close-v3'], episodes_per_task=1, size=48, chunk=4, seed=3, max_steps=200)


@pytest.fixture(scope='module')
def tiny():
    return list(cv.generate_vla(**TINY))


def test_generator_is_deterministic(tiny):
    again = list(cv.generate_vla(**TINY))
    assert [s['id'] for s in again] == [s['id'] for s in tiny]
    for a, b in zip(tiny, again):
        assert a['actions'] == b['actions'] and a['meta'] == b['meta']
        assert np.asarray(a['images'][0]).tobytes() == np.asarray(b['images'][0]).tobytes()
    other = list(cv.generate_vla(**{**TINY, 'seed': 4, 'tasks': ['reach-v3']}))
    assert other[0]['actions'] != tiny[0]['actions']


def episodes(samples):
    out = {}
    for s in samples: out.setdefault(s['episode_index'], []).append(s)
    return out


def test_kept_episodes_succeed_on_replay(tiny):
    "Replaying the recorded actions in a fresh env succeeds exactly at the recorded success step."
    eps = episodes(tiny)
    assert sorted(eps) == [0, 1] and {e[0]['task'] for e in eps.values()} == set(TINY['tasks'])
    for frames in eps.values():
        meta = json.loads(frames[0]['meta'])
        assert [s['frame_index'] for s in frames] == list(range(meta['episode_length']))
        with make_env(frames[0]['task'], meta['seed'], 32, variation=meta['variation']) as env:
            first = None
            for t, s in enumerate(frames):
                info = env.step(np.array(s['actions'][0], np.float32))[-1]
                if info['success'] and first is None: first = t
        assert first == meta['success_step'] is not None
        assert meta['episode_length'] == meta['success_step'] + 6  # 5 extra steps after the first success


def test_chunks_and_padding(tiny):
    C = TINY['chunk']
    for frames in episodes(tiny).values():
        T = len(frames)
        acts = np.array([s['actions'][0] for s in frames])
        assert np.abs(acts).max() <= 1
        for t, s in enumerate(frames):
            a = np.array(s['actions'], np.float32)
            assert a.shape == (C, 4) and len(s['action_is_pad']) == C
            real = min(C, T - t)
            assert s['action_is_pad'] == [False] * real + [True] * (C - real)
            np.testing.assert_array_equal(a[:real], acts[t:t + real])  # the next actions, in order
            np.testing.assert_array_equal(a[real:], np.repeat(acts[-1:], C - real, 0))  # the last one repeated
        assert frames[-1]['action_is_pad'] == [False] + [True] * (C - 1)
        check_sample(frames[0], 'vla')


def test_dataset_round_trip(tiny, tmp_project):
    "The samples stream into an Arrow dataset that saves and loads with the VLA schema intact."
    path = save_dataset(samples_to_dataset(tiny, 'vla', cache_dir=tmp_project/'cache'), 'data/vla/metaworld_mt10')
    ds = load_dataset_dir(path, kind='vla')
    assert len(ds) == len(tiny) and ds[5]['id'] == tiny[5]['id']
    np.testing.assert_allclose(ds[5]['actions'], tiny[5]['actions'])
    assert np.asarray(ds[5]['images'][0]).tobytes() == np.asarray(tiny[5]['images'][0]).tobytes()


class FlakyExpert:
    "The real expert on even tries; on odd ones a policy that only opens the gripper (never succeeds)."
    def __init__(self, task, fail_all=False):
        self.expert, self.fail_all, self.resets = scripted_policy(task), fail_all, 0
    def get_action(self, obs):
        if self.fail_all or self.resets % 2: return np.array([0, 0, 0, -1], np.float32)
        return self.expert.get_action(obs)


def test_failed_episodes_are_dropped(monkeypatch):
    pol = FlakyExpert('reach-v3')
    real_rollout = cv.rollout
    def counting_rollout(env, policy, *a, **kw):
        ep = real_rollout(env, policy, *a, **kw)
        pol.resets += 1
        return ep
    monkeypatch.setattr(cv, 'scripted_policy', lambda task: pol)
    monkeypatch.setattr(cv, 'rollout', counting_rollout)
    ss = list(cv.generate_vla(['reach-v3'], 2, 32, 2, seed=0, max_steps=120, frame_stride=20))
    metas = [json.loads(s['meta']) for s in ss]
    assert pol.resets == 3 and sorted({m['variation'] for m in metas}) == [0, 2]  # variation 1 failed and was dropped
    assert all(m['success_step'] is not None for m in metas)


def test_failing_expert_is_reported(monkeypatch):
    monkeypatch.setattr(cv, 'scripted_policy', lambda task: FlakyExpert(task, fail_all=True))
    with pytest.raises(EmtError, match=r'reach-v3 failed 3 of 3 episodes'):
        list(cv.generate_vla(['reach-v3'], 5, 32, 2, seed=0, max_steps=30, frame_stride=30))
