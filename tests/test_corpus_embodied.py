"Embodied-oriented VLM sources: determinism, schema (also through Arrow), and answers checked against the stored ground truth."
import json, math, os, re
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np
import pytest

from emt.core import EmtError
from emt import corpus_embodied as ce

TASKS = ('pick-place-v3', 'drawer-open-v3', 'button-press-topdown-v3', 'peg-insert-side-v3')
SIZE, N = 64, 14


@pytest.fixture(scope='module')
def scenes():
    with ce.TaskScenes(SIZE, seed=0) as s: yield s


@pytest.fixture(scope='module')
def samples(scenes):
    return {name: list(fn(N, SIZE, 0, tasks=TASKS, scenes=scenes)) for name, fn in ce.EMBODIED_SOURCES.items()}


def pinhole(cam: dict, p) -> tuple[float, float, float]:
    "Independent re-implementation of the stored camera model: pixel (u, v) and depth of world point `p`."
    pos, fwd, up = (np.asarray(cam[k], float) for k in ('pos', 'forward', 'up'))
    right, d = np.cross(fwd, up), np.asarray(p, float) - pos
    f = cam['size'] / 2 / math.tan(math.radians(cam['fovy']) / 2)
    z = d @ fwd
    return cam['size'] / 2 + f * (d @ right) / z, cam['size'] / 2 - f * (d @ up) / z, z


def norm_xy(cam: dict, p) -> tuple[float, float]:
    u, v, _ = pinhole(cam, p)
    return u / cam['size'], v / cam['size']


def parse_numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r'-?\d+\.\d+', text)]


def of_kind(samples, source, *kinds):
    return [(s, json.loads(s['meta'])) for s in samples[source] if json.loads(s['meta'])['answer']['kind'] in kinds]


def test_registry_names():
    assert list(ce.EMBODIED_SOURCES) == ['spatial_refer', 'embodied_spatial_qa', 'robot_frame_vqa', 'affordance_point']


def test_schema(samples):
    for name, ss in samples.items():
        assert len(ss) == N
        assert len({s['id'] for s in ss}) == N
        for s in ss:
            assert set(s) == {'id', 'source', 'images', 'messages', 'meta'}
            assert s['source'] == name and s['id'].startswith(f'{name}/')
            assert len(s['images']) == 1 and s['images'][0].size == (SIZE, SIZE) and s['images'][0].mode == 'RGB'
            assert [m['role'] for m in s['messages']] == ['user', 'assistant']
            text = ''.join(m['content'] for m in s['messages'])
            assert text.count('<image>') == len(s['images']) and s['messages'][0]['content'].startswith('<image>')
            meta = json.loads(s['meta'])
            assert meta['task'] in TASKS and meta['camera']['size'] == SIZE


def test_arrow_roundtrip(samples):
    from datasets import Dataset, Features, Image, Sequence, Value
    feats = Features(id=Value('string'), source=Value('string'), images=Sequence(Image()),
                     messages=[{'role': Value('string'), 'content': Value('string')}], meta=Value('string'))
    rows = samples['affordance_point'][:4]
    ds = Dataset.from_list(rows, features=feats)
    assert ds[0]['id'] == rows[0]['id'] and ds[0]['messages'] == rows[0]['messages']
    assert np.array_equal(np.asarray(ds[0]['images'][0]), np.asarray(rows[0]['images'][0]))


def fingerprint(ss):
    return [(s['id'], s['images'][0].tobytes(), json.dumps(s['messages']), s['meta']) for s in ss]


def test_deterministic_fresh_and_reused_envs(samples):
    "Same seed: identical bytes, whether the envs are fresh or were used by other sources before."
    fresh = list(ce.robot_frame_vqa(N, SIZE, 0, tasks=TASKS))
    assert fingerprint(fresh) == fingerprint(samples['robot_frame_vqa'])


def test_other_seed_differs(scenes):
    a = list(ce.spatial_refer(3, SIZE, 0, tasks=TASKS[:1], scenes=scenes))
    with ce.TaskScenes(SIZE, seed=1) as other:
        b = list(ce.spatial_refer(3, SIZE, 1, tasks=TASKS[:1], scenes=other))
    assert fingerprint(a) != fingerprint(b)


def point_truth(meta: dict) -> list[float]:
    "The 3D point the answer of a point question was computed from."
    ans = meta['answer']
    if 'point' in ans: return ans['point']
    return meta['objects'][ans['target']]['anchor']


def test_points_reproject_onto_their_object(samples):
    checked = 0
    for source, kinds in (('spatial_refer', ('point', 'part', 'relation')), ('affordance_point', ('grasp', 'press', 'insert', 'free_spot'))):
        for s, meta in of_kind(samples, source, *kinds):
            x, y = ce.parse_point(s['messages'][1]['content'])
            ex, ey = norm_xy(meta['camera'], point_truth(meta))
            assert abs(x - ex) <= 0.006 and abs(y - ey) <= 0.006, (s['id'], (x, y), (ex, ey))
            if meta['answer']['kind'] != 'free_spot':
                obj = meta['objects'][meta['answer']['target']]
                xs, ys = zip(*(norm_xy(meta['camera'], c) for c in obj['corners']))
                assert min(xs) - 0.01 <= x <= max(xs) + 0.01 and min(ys) - 0.01 <= y <= max(ys) + 0.01, s['id']
                bx1, by1, bx2, by2 = ce.parse_box(obj['visible_box'])
                assert bx1 - 0.03 <= x <= bx2 + 0.03 and by1 - 0.03 <= y <= by2 + 0.03, s['id']
            else:
                assert point_truth(meta)[2] == 0.0
            checked += 1
    assert checked >= 10


def test_boxes_lie_on_their_object(samples):
    boxes = of_kind(samples, 'spatial_refer', 'box')
    assert boxes
    for s, meta in boxes:
        x1, y1, x2, y2 = ce.parse_box(s['messages'][1]['content'])
        obj = meta['objects'][meta['answer']['target']]
        xs, ys = zip(*(norm_xy(meta['camera'], c) for c in obj['corners']))
        assert min(xs) - 0.02 <= x1 < x2 <= max(xs) + 0.02 and min(ys) - 0.02 <= y1 < y2 <= max(ys) + 0.02, s['id']
        ax, ay = norm_xy(meta['camera'], obj['anchor'])
        assert x1 - 0.02 <= ax <= x2 + 0.02 and y1 - 0.02 <= ay <= y2 + 0.02, s['id']


def option(s) -> str:
    return s['messages'][1]['content'].split('. ', 1)[1]


def test_left_right_matches_projected_x(samples):
    checked = 0
    for s, meta in of_kind(samples, 'embodied_spatial_qa', 'left_right'):
        a, ref = (meta['objects'][meta['answer'][k].removeprefix('the ')]['anchor'] for k in ('subject', 'reference'))
        du = pinhole(meta['camera'], a)[0] - pinhole(meta['camera'], ref)[0]
        assert option(s) == ('right' if du > 0 else 'left'), s['id']
        checked += 1
    for s, meta in of_kind(samples, 'spatial_refer', 'relation'):
        ans = meta['answer']
        du = pinhole(meta['camera'], meta['objects'][ans['target']]['anchor'])[0] - \
             pinhole(meta['camera'], meta['objects'][ans['reference']]['anchor'])[0]
        assert (du > 0) == (ans['side'] == 'right') and f" {ans['side']} of the {ans['reference']}" in s['messages'][0]['content']
        checked += 1
    assert checked >= 3


def test_above_below_and_closer_match_geometry(samples):
    for s, meta in of_kind(samples, 'embodied_spatial_qa', 'above_below'):
        a, ref = (meta['objects'][meta['answer'][k].removeprefix('the ')]['anchor'] for k in ('subject', 'reference'))
        assert option(s) == ('above' if a[2] > ref[2] else 'below'), s['id']
        assert (pinhole(meta['camera'], a)[1] < pinhole(meta['camera'], ref)[1]) == (option(s) == 'above')
    for s, meta in of_kind(samples, 'embodied_spatial_qa', 'closer'):
        names = [o.removeprefix('the ') for o in meta['answer']['options']]
        depths = [pinhole(meta['camera'], meta['objects'][n]['anchor'])[2] for n in names]
        assert option(s) == f'the {names[int(np.argmin(depths))]}', s['id']


def test_robot_state_answers(samples):
    for s, meta in of_kind(samples, 'robot_frame_vqa', 'gripper', 'progress', 'direction'):
        ans, a = meta['answer'], s['messages'][1]['content']
        if ans['kind'] == 'gripper':
            assert a == ('open' if meta['state']['gripper_opening'] > 0.8 else 'closed')
        elif ans['kind'] == 'direction':
            (tu, tv), (gu, gv) = ans['target_uv'], ans['tcp_uv']
            du, dv = tu - gu, tv - gv
            assert a == (('right' if du > 0 else 'left') if abs(du) > abs(dv) else ('down' if dv > 0 else 'up'))
            assert abs(pinhole(meta['camera'], ans['point'])[0] - tu) < 0.01
        else:
            assert meta['state'][ans['joint']] == ans['value'] and a in ('yes', 'no')


def test_parsers_reject_bad_answers():
    for bad in ('0.5, 0.5', '(0.5)', '(a, b)', '(1.2, 0.3)'):
        with pytest.raises(ValueError): ce.parse_point(bad)
    with pytest.raises(ValueError, match='x1 > x2'): ce.parse_box('[0.6, 0.1, 0.5, 0.2]')


def test_unknown_task_and_mismatched_scenes(scenes):
    with pytest.raises(EmtError, match='no entities for task'):
        list(ce.spatial_refer(1, SIZE, 0, tasks=('hammer-v3',)))
    with pytest.raises(EmtError, match='scenes were built for'):
        list(ce.spatial_refer(1, SIZE + 32, 0, scenes=scenes))


@pytest.mark.parametrize('camera', ['corner', 'corner2', 'corner3', 'behindGripper', 'free'])
def test_views_are_upright_and_match_projection(scenes, camera):
    "The red puck's projected anchor falls on its segmentation pixels, which are red in the image; world up is image up."
    env = scenes.get('pick-place-v3')
    (_, obs), = ce.rollout_frames(env, 3, [0])
    cam = camera if camera != 'free' else dict(lookat=[0, 0.65, 0.05], distance=0.8, azimuth=70, elevation=-45)
    view = ce.render_view(env, cam)
    puck = ce.see(env.env, obs, view, ce.TASK_ENTITIES['pick-place-v3'][0])
    assert puck.pixels > 0 and puck.covers(puck.anchor_uv)
    r, g, b = view.image[puck.mask].astype(float).mean(0)
    assert r > 2 * g and r > 2 * b
    (u0, v0), (u1, v1) = ce.project(view.camera, [puck.anchor, puck.anchor + [0, 0, 0.1]])[0]
    assert v1 < v0  # up in the world is up in the image
    xs, ys = ce.project(view.camera, puck.corners)[0].T
    u1_, v1_, u2_, v2_ = puck.box()
    assert xs.min() - 1 <= u1_ and u2_ <= xs.max() + 1 and ys.min() - 1 <= v1_ and v2_ <= ys.max() + 1
