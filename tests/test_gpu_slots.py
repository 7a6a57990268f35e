"""Independent runs spread over GPUs: the assignment logic on fake device lists, processes that keep their own GPUs,
and the VLA stage's launches, each on its own group, never two on one GPU at once."""
import os, threading, time
os.environ['HF_HUB_OFFLINE'] = '1'

import pytest

from emt.core import EmtError
import emt.launch as L
from emt.vla import train_vlas


@pytest.mark.parametrize('env,want', [('0,3,5', ['0', '3', '5']), ('', []), ('-1', []), ('GPU-a1, GPU-b2', ['GPU-a1', 'GPU-b2'])])
def test_visible_gpus_reads_cuda_visible_devices(monkeypatch, env, want):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', env)
    assert L.visible_gpus() == want


def test_slots_on_fake_nodes():
    eight = [str(i) for i in range(8)]
    assert L.gpu_slots(eight, 8) == [[g] for g in eight]
    assert L.gpu_slots(eight, 3) == [['0', '1'], ['2', '3'], ['4', '5']]
    assert L.gpu_slots(eight, 2, per_job=4) == [eight[:4], eight[4:]]
    assert L.gpu_slots(eight, 1, per_job=8) == [eight]
    assert L.gpu_slots([], 4) == [[], [], [], []]
    every = [g for s in L.gpu_slots(eight, 4) for g in s]
    assert len(every) == len(set(every)) == 8
    with pytest.raises(EmtError, match='need 9 GPUs'): L.gpu_slots(eight, 9)
    with pytest.raises(EmtError, match='need 12 GPUs'): L.gpu_slots(eight, 3, per_job=4)


def test_pool_processes_keep_their_own_gpus():
    seen = L.run_pool(L.whoami, {f'run{i}': {} for i in range(6)}, jobs=3, devices=['4', '6', '7'])
    assert list(seen) == [f'run{i}' for i in range(6)]
    by_pid = {}
    for r in seen.values(): by_pid.setdefault(r['pid'], set()).add(r['gpus'])
    assert all(len(g) == 1 for g in by_pid.values())  # a process never changes GPU
    held = [next(iter(g)) for g in by_pid.values()]
    assert len(held) == len(set(held)) and set(held) <= {'4', '6', '7'}  # and no two share one
    assert os.getpid() not in by_pid


def test_vla_launches_each_on_its_own_group(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1,2,3,4')
    lock, running, log = threading.Lock(), {}, []
    def fake_launched(fn, kwargs, processes, work, devices=None, threads=None):
        with lock:
            assert not any(set(devices) & set(d) for d in running.values()), (devices, running)
            running[kwargs['name']] = devices
            log.append((kwargs['name'], tuple(devices), processes))
        time.sleep(0.05)
        with lock: del running[kwargs['name']]
        return {'run': kwargs['name'], 'fn': fn}
    monkeypatch.setattr(L, 'launched', fake_launched)
    calls = {f'base/metaworld/seed{i}': {'name': i} for i in range(6)}
    out = train_vlas(calls, jobs=2, processes=2)
    assert list(out) == list(calls) and [r['run'] for r in out.values()] == list(range(6))
    assert {d for _, d, _ in log} <= {('0', '1'), ('2', '3')} and len(log) == 6  # GPU 4 idles: 2 x 2 of 5
    assert all(p == 2 and fn == 'emt.vla:train_vla' for (_, _, p), fn in zip(log, [r['fn'] for r in out.values()]))


def test_vla_refuses_more_launches_than_gpus(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1,2,3')
    monkeypatch.setattr(L, 'launched', lambda *a, **k: pytest.fail('nothing may start'))
    with pytest.raises(EmtError, match='need 6 GPUs'):
        train_vlas({f'r{i}': {} for i in range(3)}, jobs=3, processes=2)
