"""The grounded design of the embodied sources (`corpus.embodied`): answers re-derived from the stored ground truth in
the robot's frame, balanced answers, frames from the VLA's camera, no free-spot questions, disjoint scene variations;
and the default design still makes the committed corpus."""
import collections, json, math, os
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ.setdefault('MUJOCO_GL', 'egl')
from pathlib import Path

import numpy as np
import pytest

from emt.core import EmtError
from emt import corpus_embodied as ce

ROOT = Path(__file__).resolve().parents[1]
TASKS = ('pick-place-v3', 'drawer-open-v3', 'button-press-topdown-v3', 'peg-insert-side-v3', 'window-close-v3')
N = 48
GROUNDED = ce.Design(vla_camera_share=0.5, balance=True, task_questions=True, free_spot=False, lookat_jitter=0.12)


@pytest.fixture(scope='module')
def grounded():
    with ce.TaskScenes(96, seed=0) as sc:
        return {name: list(fn(N, 96, 0, tasks=TASKS, scenes=sc, design=GROUNDED)) for name, fn in ce.EMBODIED_SOURCES.items()}


def meta(s) -> dict: return json.loads(s['meta'])
def answer(s) -> str: return s['messages'][1]['content']
def kind(s) -> str: return meta(s)['answer']['kind']


def target_point(m: dict) -> np.ndarray:
    "The world point of the task's target, read from the stored objects (not from the answer's own record)."
    ent, part = ce.TASK_TARGETS[m['task']]
    o = m['objects'][ent]
    return np.asarray(o['anchor'] if part is None else o['parts'][part]['point'], float)


def pixel(m: dict, p) -> tuple[float, float]:
    "Normalised image position of world point `p` by the stored pinhole camera (an independent projection)."
    cam = m['camera']
    pos, fwd, up = (np.asarray(cam[k], float) for k in ('pos', 'forward', 'up'))
    right, d = np.cross(fwd, up), np.asarray(p, float) - pos
    f = cam['size'] / 2 / math.tan(math.radians(cam['fovy']) / 2)
    z = d @ fwd
    return (cam['size'] / 2 + f * (d @ right) / z) / cam['size'], (cam['size'] / 2 - f * (d @ up) / z) / cam['size']


def test_every_source_asks_about_the_task(grounded):
    want = {'spatial_refer': 'task_target', 'robot_frame_vqa': 'robot_direction', 'affordance_point': 'task_reach'}
    for src, k in want.items(): assert any(kind(s) == k for s in grounded[src]), src
    assert {'robot_side', 'robot_reach', 'robot_height'} & {kind(s) for s in grounded['embodied_spatial_qa']}
    for ss in grounded.values():
        for s in ss:
            if kind(s).startswith(('task_', 'robot_')): assert "The robot's task: " in s['messages'][0]['content']


def test_directions_in_the_robot_frame(grounded):
    seen = 0
    for s in grounded['robot_frame_vqa']:
        if kind(s) != 'robot_direction': continue
        m = meta(s)
        d = target_point(m) - np.asarray(m['state']['tcp'])
        i = int(np.argmax(np.abs(d)))
        word = [('left', 'right'), ('backward', 'forward'), ('down', 'up')][i][int(d[i] > 0)]
        assert answer(s) == word and abs(d[i]) >= 0.04 and abs(d[i]) >= 1.5 * sorted(np.abs(d))[-2], (answer(s), d)
        seen += 1
    assert seen >= 5
    for s in grounded['embodied_spatial_qa']:
        if kind(s) not in ('robot_side', 'robot_reach', 'robot_height'): continue
        m = meta(s)
        d = target_point(m) - np.asarray(m['state']['tcp'])
        text = answer(s)[3:]
        expect = {'robot_side': 'right' if d[0] > 0 else 'left', 'robot_reach': 'farther' if d[1] > 0 else 'closer',
                  'robot_height': 'above' if d[2] > 0 else 'below'}[kind(s)]
        assert text == expect, (kind(s), text, d)


def test_target_points_reproject(grounded):
    n = 0
    for src, k in (('spatial_refer', 'task_target'), ('affordance_point', 'task_reach')):
        for s in grounded[src]:
            if kind(s) != k: continue
            m = meta(s)
            x, y = ce.parse_point(answer(s))
            u, v = pixel(m, target_point(m))
            assert abs(x - u) <= 0.006 and abs(y - v) <= 0.006, (src, answer(s), u, v)
            n += 1
    assert n >= 10


def test_answers_balanced(grounded):
    for src, ss in grounded.items():
        by_kind = collections.defaultdict(list)
        for s in ss: by_kind[kind(s)].append(s)
        for k, group in by_kind.items():
            letters = collections.Counter(answer(s)[0] for s in group if ce._OPT.match(answer(s)))
            if letters: assert max(letters.values()) - min(letters.get(l, 0) for l in 'AB') <= 1, (src, k, letters)
            labels = collections.Counter(ce.answer_label(answer(s)) for s in group)
            if None in labels or len(group) < 8: continue
            if len(labels) == 2: assert max(labels.values()) <= 0.6 * len(group) + 1, (src, k, labels)


def test_frames_from_the_vla_camera(grounded):
    frames = [s for ss in grounded.values() for s in ss]
    vla = [s for s in frames if meta(s)['camera_name'] == 'corner4' and s['images'][0].size == (64, 64)]
    assert 0.3 < len(vla) / len(frames) < 0.7
    assert all(s['images'][0].size in ((64, 64), (96, 96)) for s in frames)


def test_no_free_spots(grounded):
    assert not any(kind(s) == 'free_spot' for ss in grounded.values() for s in ss)


def test_balancer_holds_back_a_label_always_on_offer():
    "yes is on offer in every frame and no in a quarter of them: balancing still ends near 50:50, not 3:1."
    b, r = ce.Balancer(), np.random.default_rng(0)
    yes, no = ('Open?', 'yes', dict(kind='progress')), ('Open?', 'no', dict(kind='progress'))
    taken = []
    for i in range(40):
        offered = [yes] if i % 4 else [yes, no]  # yes on offer in every frame, no in a quarter of them
        if ok := b.eligible(offered): taken.append(b.take(ok[0] if ok[0][1] == 'no' or len(ok) == 1 else ok[1], r)[1])
    c = collections.Counter(taken)
    assert c['no'] == 10 and c['yes'] <= 0.6 * (c['yes'] + c['no']) + 1, c


def test_disjoint_variations_raises_on_shared_seed(monkeypatch):
    import emt.corpus_vla as cv
    monkeypatch.setattr(cv, 'variation_seed', lambda seed, task, draw: seed)
    with pytest.raises(EmtError, match='share placements with the VLA data'):
        ce.check_disjoint_variations(0, ('push-v3',))


def test_disjoint_variations_holds_for_the_corpus_seed():
    assert ce.check_disjoint_variations(0, ('push-v3', 'drawer-open-v3')) == 2 * 2 * 50 * 50


@pytest.mark.skipif(not (ROOT/'data/vlm/spatial_refer').exists(), reason='the committed corpus is not pulled')
def test_default_design_is_the_committed_corpus():
    """The default Design renders the committed embedded corpus: the first rows of its first embodied source (built on
    fresh environments, as `emt corpus` builds it; later sources depend on the shared environments' history)."""
    from emt.samples import load_dataset_dir
    stored = load_dataset_dir(ROOT/'data/vlm/spatial_refer', 'vlm')
    with ce.TaskScenes(96, seed=0) as sc: fresh = list(ce.spatial_refer(5, 96, 0, scenes=sc, design=ce.Design()))
    for i, s in enumerate(fresh):
        assert stored[i]['messages'] == s['messages'], i
        assert json.loads(stored[i]['meta'])['answer'] == meta(s)['answer']
        assert json.loads(stored[i]['meta'])['camera'] == meta(s)['camera']


def test_grid_answers_name_the_cell_of_the_reprojected_target():
    "`point_answer='grid'`: point questions name the 3 x 3 cell of the target's pixel (by an independent projection), no box or (x, y) answer is left, and the cells are balanced."
    design = ce.Design(**{**GROUNDED.__dict__, 'point_answer': 'grid'})
    with ce.TaskScenes(96, seed=0) as sc:
        got = {n: list(ce.EMBODIED_SOURCES[n](N, 96, 0, tasks=TASKS, scenes=sc, design=design))
               for n in ('spatial_refer', 'affordance_point')}
    checked, cells = 0, collections.Counter()  # (kind, cell) -> answers
    for ss in got.values():
        for s in ss:
            a, q = answer(s), s['messages'][0]['content']
            assert kind(s) != 'box' and not a.startswith(('(', '[')) and 'normalised' not in q, (a, q)
            assert a in {c for row in ce.CELLS for c in row} and 'one word: northwest' in q, a
            cells[kind(s), a] += 1
            if kind(s) != 'task_target': continue
            x, y = pixel(meta(s), target_point(meta(s)))
            if min(abs(v * 3 - round(v * 3)) for v in (x, y)) < 0.03: continue  # on a cell border: rounding decides
            assert a == ce.CELLS[min(int(y * 3), 2)][min(int(x * 3), 2)], (a, x, y)
            checked += 1
    assert checked >= 5, checked
    for k in {k for k, _ in cells}:  # balanced: no cell above 2.5 times the mean of its kind's cells (or 3), plus the last one taken
        n = [v for (k_, _), v in cells.items() if k_ == k]
        assert max(n) <= max(3, 2.5 * sum(n) / len(n)) + 1, (k, n)
