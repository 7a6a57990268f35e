"""A training stage killed with `kill -9` under `dvc repro` resumes on the rerun from its last complete checkpoint,
counts no step twice, and ends with the weights of an uninterrupted run, bit for bit on CPU. The stage here trains a
tiny VLA through `python -m emt.vla` with the output declaration of the project's own `vla` stage (its `persist`);
without `persist`, DVC deletes the output, checkpoints included, before the rerun, which then starts from step 0."""
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from emt.backbones import save_vlm
from emt.samples import save_dataset
from emt.fixtures import tiny_backbone, toy_frames

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'EMT_PROGRESS': '0', 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': '',
       'PATH': f"{BIN}:{os.environ['PATH']}"}
ENV.pop('EMT_ROOT', None)
RECIPE = dict(steps=12, global_batch=8, micro_batch=4, lr=3e-3, warmup_steps=1, max_seq_len=48, save_every=4)
CFG = dict(action_dim=4, chunk=4, head_hidden=32)
SLOW = textwrap.dedent('''
    import sys, time
    import emt.vla as V
    save = V.save_vla
    def slow_save(*a, **k):  # a pause after each checkpoint: time to kill the run between two of them
        out = save(*a, **k); time.sleep(1.5); return out
    V.save_vla = slow_save
    V.main(sys.argv[1:])
''')


def project_vla_out() -> dict:
    "The declaration of artifacts/vla in the project's dvc.yaml."
    outs = yaml.safe_load((ROOT/'dvc.yaml').read_text())['stages']['vla']['outs']
    spec = next(o for o in outs if (o if isinstance(o, str) else next(iter(o))) == 'artifacts/vla')
    return {} if isinstance(spec, str) else spec['artifacts/vla']


def run(cmd, cwd, timeout=600):
    r = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, shell=True)
    assert r.returncode == 0, f'{cmd}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}'
    return r.stdout + r.stderr


def toy_project(d: Path, persist: bool) -> Path:
    "A DVC project with one stage that trains a tiny VLA from a tiny VLM on toy frames."
    d.mkdir(parents=True)
    save_vlm(*tiny_backbone(), d/'vlm'); save_dataset(toy_frames(6), d/'toy')
    (d/'slow_vla.py').write_text(SLOW)
    args = (f"vlm toy --out artifacts/vla/base --config '{json.dumps(CFG)}' --recipe '{json.dumps(RECIPE)}' "
            '--workers 0')
    stage = {'cmd': f'python slow_vla.py {args}', 'deps': ['vlm', 'toy', 'slow_vla.py'],
             'outs': [{'artifacts/vla': {'persist': True}} if persist else 'artifacts/vla']}
    (d/'dvc.yaml').write_text(yaml.safe_dump({'stages': {'vla': stage}}))
    run('git init -q && dvc init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm toy', d)
    return d


def kill_during_training(d: Path) -> None:
    "Start `dvc repro` and kill -9 its whole process group once a checkpoint past step 0 is complete."
    p = subprocess.Popen([str(BIN/'dvc'), 'repro'], cwd=d, env=ENV, start_new_session=True,  # dvc itself: reaped below
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck, deadline = d/'artifacts/vla/base/checkpoints/step_000004', time.time() + 300
    while not ck.exists() and p.poll() is None and time.time() < deadline: time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert ck.exists() and not (d/'artifacts/vla/base/step_000012').exists(), 'not killed mid-training'


def weights(folder: Path) -> dict:
    return {f.relative_to(folder).as_posix(): load_file(str(f)) for f in sorted(folder.rglob('*.safetensors'))}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    d = toy_project(tmp_path_factory.mktemp('ref')/'p', persist=True)
    run('dvc repro', d)
    return d


def test_killed_vla_stage_resumes_under_dvc_and_ends_bit_for_bit(uninterrupted, tmp_path):
    assert project_vla_out().get('persist') is True, "dvc.yaml: the vla stage's artifacts/vla must be persist: true"
    d = toy_project(tmp_path/'p', persist=project_vla_out().get('persist', False))
    kill_during_training(d)
    run('dvc repro', d)
    rep = json.loads((d/'artifacts/vla/base/report.json').read_text())
    assert rep['resumed_from'] in (4, 8)
    ref = json.loads((uninterrupted/'artifacts/vla/base/report.json').read_text())
    assert [h['step'] for h in rep['heldout']] == [4, 8, 12]  # each checkpoint counted once
    assert rep['heldout'] == ref['heldout'] and rep['final_loss'] == ref['final_loss']
    got, want = weights(d/'artifacts/vla/base'), weights(uninterrupted/'artifacts/vla/base')
    assert got.keys() == want.keys() and {k.split('/')[0] for k in got} == {'step_000004', 'step_000008', 'step_000012'}
    for name in want:
        for k in want[name]: assert got[name][k].equal(want[name][k]), f'{name}:{k} differs'
    assert 'dvc.lock' in os.listdir(d) and 'up to date' in run('dvc status', d).lower()


def test_without_persist_the_rerun_starts_from_step_0(tmp_path):
    "The failure the declaration prevents: DVC removes a non-persistent output, checkpoints and all."
    d = toy_project(tmp_path/'p', persist=False)
    kill_during_training(d)
    run('dvc repro', d)
    assert json.loads((d/'artifacts/vla/base/report.json').read_text())['resumed_from'] == 0
