"""VLA fine-tuning: it learns, checkpoints reload in a fresh process, every backbone, 2 processes, resume, bad input."""
import json, os, signal, subprocess, sys, textwrap, time
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['EMT_PROGRESS'] = '0'
from pathlib import Path

import numpy as np
import pytest
import torch
torch.set_num_threads(1)  # tiny models: one thread is fastest, and the only sane choice on a shared 2-core machine

from emt.backbones import ARCHS, save_vlm
from emt.core import DataError, EmtError
from emt.samples import save_dataset
from emt.policy import VLAConfig, action_stats, build_vla, load_policy, save_vla
from emt.vla import frame_table, train_vla
from emt.fixtures import tiny_backbone, toy_frames
from emt.toy_projects import toy_vla_project

RECIPE = dict(steps=8, global_batch=8, micro_batch=4, lr=3e-3, warmup_steps=1, max_seq_len=48, save_every=4)
CFG = dict(action_dim=4, chunk=4, head_hidden=32)
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'EMT_PROGRESS': '0', 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "A tiny saved InternVL and a saved toy VLA dataset."
    d = tmp_path_factory.mktemp('vla')
    save_vlm(*tiny_backbone(), d/'vlm')
    save_dataset(toy_frames(6), d/'toy')
    return d


def frames(n=3):
    ds = toy_frames(2)
    return [np.asarray(ds[i]['images'][0]) for i in range(n)], [ds[i]['instruction'] for i in range(n)]


def test_loss_falls_and_checkpoints_have_heldout_loss(setup, tmp_path):
    from emt.samples import load_dataset_dir
    recipe = dict(RECIPE, steps=80, micro_batch=8, save_every=20, lr=1e-2, schedule='constant')
    rep = train_vla(setup/'vlm', load_dataset_dir(setup/'toy', 'vla'), VLAConfig(**CFG), recipe, tmp_path,
                    heldout_fraction=0.2, num_workers=0)
    first, last = np.mean([h['loss'] for h in rep['history'][:10]]), np.mean([h['loss'] for h in rep['history'][-10:]])
    assert last < 0.9 * first, (first, last)
    held = [h['loss'] for h in rep['heldout']]
    assert [h['step'] for h in rep['heldout']] == [20, 40, 60, 80] and held[-1] < 0.7 * held[0], held
    assert rep['heldout_frames'] == 8 and rep['train_frames'] == 40  # one episode of 8 frames held out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['heldout_frames.json', 'log.json', 'report.json', 'step_000020', 'step_000040',
                                                          'step_000060', 'step_000080']
    info = json.loads((tmp_path/'step_000040/training.json').read_text())
    assert info['step'] == 40 and info['heldout']['loss'] == held[1]


def test_reload_in_a_fresh_process_predicts_identical_actions(setup, tmp_path):
    from emt.samples import load_dataset_dir
    train_vla(setup/'vlm', load_dataset_dir(setup/'toy', 'vla'), VLAConfig(**CFG), dict(RECIPE, steps=4, save_every=0),
              tmp_path/'run', num_workers=0)
    ck = tmp_path/'run/step_000004'
    ims, texts = frames()
    here = load_policy(ck, 'cpu').predict_batch([[im] for im in ims], texts)
    np.save(tmp_path/'frames.npy', np.stack(ims))
    code = textwrap.dedent(f'''
        import json, numpy as np, torch
        torch.set_num_threads(1)
        from emt.policy import load_policy
        pol = load_policy({str(ck)!r})
        ims = np.load({str(tmp_path/'frames.npy')!r})
        out = pol.predict_batch([[im] for im in ims], {texts!r})
        np.save({str(tmp_path/'there.npy')!r}, out)''')
    r = subprocess.run([sys.executable, '-c', code], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    there = np.load(tmp_path/'there.npy')
    assert here.shape == (3, 4, 4) and there.dtype == np.float32
    np.testing.assert_array_equal(here, there)
    assert set(np.unique(there[..., 3])) <= {-1.0, 1.0}


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_every_backbone_builds_trains_and_predicts(arch, tmp_path):
    vlm, proc = tiny_backbone(arch)
    ds = toy_frames(2)
    rep = train_vla((vlm, proc), ds, VLAConfig(**CFG, action_queries=2), dict(RECIPE, steps=1, save_every=0),
                    tmp_path, heldout_fraction=0.0, num_workers=0)
    assert rep['config']['arch'] == ARCHS[arch].model_type and np.isfinite(rep['final_loss'])
    pol = load_policy(tmp_path/'step_000001', 'cpu')
    ims, texts = frames(2)
    a = pol.predict([ims[0]], texts[0])
    assert a.shape == (4, 4) and np.isfinite(a).all()
    np.testing.assert_allclose(pol.predict_batch([[im] for im in ims], texts)[0], a, atol=1e-5)  # batching changes nothing


def test_lora_and_freeze_train_the_right_parts_and_save_merged(tmp_path):
    ds = toy_frames(2)
    vlm, proc = tiny_backbone()
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    rep = train_vla((vlm, proc), ds, VLAConfig(**CFG, freeze='vision', lora_rank=4), dict(RECIPE, steps=3, save_every=0),
                    tmp_path, heldout_fraction=0.0, num_workers=0)
    assert rep['trainable'] < rep['params'] / 2
    from safetensors.torch import load_file
    from emt.backbones import load_vlm
    assert not any('lora_' in k or 'base_layer' in k for k in load_file(str(tmp_path/'step_000003/vlm/model.safetensors')))
    saved = load_vlm(tmp_path/'step_000003/vlm')[0].state_dict()  # a plain VLM, the Hugging Face names
    vis = [k for k in saved if 'vision_tower' in k]
    assert vis and all(torch.equal(saved[k], before[k]) for k in vis)  # frozen
    q = [k for k in saved if 'language_model' in k and 'q_proj.weight' in k]
    assert q and any(not torch.equal(saved[k], before[k]) for k in q)  # LoRA merged into the weights
    assert load_policy(tmp_path/'step_000003', 'cpu').predict([frames(1)[0][0]], 'push the block').shape == (4, 4)


def test_two_process_launch_trains_and_writes_a_checkpoint(setup, tmp_path):
    cmd = [str(Path(sys.executable).parent/'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2',
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', '-m', 'emt.vla',
           str(setup/'vlm'), str(setup/'toy'), '--out', str(tmp_path), '--config', json.dumps(CFG),
           '--recipe', json.dumps(RECIPE), '--workers', '0']
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path/'report.json').read_text())
    assert (rep['processes'], rep['accumulation']) == (2, 1)
    assert [h['step'] for h in rep['heldout']] == [4, 8] and rep['heldout'][-1]['loss'] is not None
    assert not (tmp_path/'checkpoints').exists()  # the training state is gone once the run ends
    assert load_policy(tmp_path/'step_000008', 'cpu').predict([frames(1)[0][0]], 'pick the block').shape == (4, 4)
    # every held-out frame's final loss, gathered from both processes in the order one process writes them
    two = json.loads((tmp_path/'heldout_frames.json').read_text())
    one_dir = tmp_path.parent/(tmp_path.name + '-one')
    from emt.samples import load_dataset_dir
    train_vla(str(setup/'vlm'), {'toy': load_dataset_dir(setup/'toy', 'vla')}, VLAConfig(**CFG), RECIPE, one_dir, num_workers=0)
    one = json.loads((one_dir/'heldout_frames.json').read_text())
    assert two['ids'] == one['ids'] and len(two['loss']) == rep['heldout'][-1]['frames'] and None not in two['loss']
    np.testing.assert_allclose(two['loss'], one['loss'], rtol=1e-3, atol=1e-5)



def test_the_stage_launches_each_run_on_two_processes(setup, tmp_path, monkeypatch):
    "`processes: 2`: `train_vlas` runs each VLA under `accelerate launch` on two processes; the report, the heldout loss and the checkpoint match one process."
    from emt.samples import load_dataset_dir
    from emt.vla import train_vlas
    monkeypatch.setenv('EMT_ROOT', str(setup)); (setup/'params.yaml').touch()
    monkeypatch.setenv('OMP_NUM_THREADS', '1'); monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    kw = lambda out: dict(vlm=setup/'vlm', datasets={'toy': load_dataset_dir(setup/'toy', 'vla')}, cfg=VLAConfig(**CFG),
                          recipe=RECIPE, out_dir=out, seed=0, num_workers=0)
    one = train_vlas({'a': kw(tmp_path/'one')})['a']
    two = train_vlas({'a': kw(tmp_path/'two')}, processes=2)['a']
    assert (one['processes'], two['processes']) == (1, 2) and len(two['history']) == len(one['history'])
    assert abs(one['heldout'][-1]['loss'] - two['heldout'][-1]['loss']) < 1e-3, (one['heldout'], two['heldout'])
    assert not list((tmp_path/'two').glob('*.pkl')) and not list(setup.rglob('launch-*.pkl'))  # gone with the run
    a = load_policy(tmp_path/'one'/'step_000008', 'cpu').predict([frames(1)[0][0]], 'pick the block')
    b = load_policy(tmp_path/'two'/'step_000008', 'cpu').predict([frames(1)[0][0]], 'pick the block')
    np.testing.assert_allclose(a, b, atol=1e-3)
    again = train_vlas({'a': kw(tmp_path/'one')}, processes=2)['a']  # the 1-process run, asked for on 2: adopted
    assert again.get('reused') and again['history'] == one['history'], again.get('reused')

SLOW = textwrap.dedent('''
    import sys, time
    import emt.vla as V
    save = V.save_vla
    def slow_save(*a, **k):  # a second per checkpoint: time to kill the run between two of them
        out = save(*a, **k); time.sleep(1.0); return out
    V.save_vla = slow_save
    V.main(sys.argv[1:])
''')


def test_kill_and_resume_ends_like_an_uninterrupted_run(setup, tmp_path):
    from emt.samples import load_dataset_dir
    recipe = dict(RECIPE, steps=16, save_every=4)
    ref = train_vla(setup/'vlm', {'toy': load_dataset_dir(setup/'toy', 'vla')}, VLAConfig(**CFG), recipe, tmp_path/'ref',
                    num_workers=0)
    out = tmp_path/'killed'
    args = [str(setup/'vlm'), str(setup/'toy'), '--out', str(out), '--config', json.dumps(CFG), '--recipe',
            json.dumps(recipe), '--workers', '0']
    p = subprocess.Popen([sys.executable, '-c', SLOW, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out/'checkpoints/step_000004').exists() and p.poll() is None and time.time() < deadline: time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not (out/'step_000016').exists(), 'the run finished before it could be killed'
    r = subprocess.run([sys.executable, '-m', 'emt.vla', *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((out/'report.json').read_text())
    assert rep['resumed_from'] in (4, 8, 12)
    assert rep['final_loss'] == pytest.approx(ref['final_loss'], abs=1e-5)
    ims, texts = frames()
    np.testing.assert_allclose(load_policy(out/'step_000016', 'cpu').predict_batch([[i] for i in ims], texts),
                               load_policy(tmp_path/'ref/step_000016', 'cpu').predict_batch([[i] for i in ims], texts),
                               atol=1e-4)


def test_bad_inputs_raise_clear_errors(setup, tmp_path):
    from emt.samples import load_dataset_dir
    ds = load_dataset_dir(setup/'toy', 'vla')
    short = dict(RECIPE, steps=1, save_every=0)
    def run(data, **cfg): return train_vla(setup/'vlm', data, VLAConfig(**{**CFG, **cfg}), short, tmp_path, num_workers=0)
    with pytest.raises(DataError, match='7-dim') as e: run(ds, action_dim=7)
    assert (e.value.field, e.value.row, Path(e.value.file)) == ('actions', 'toy/ep000/f0000', setup/'toy')
    with pytest.raises(DataError, match='fewer than vla.chunk'): run(ds, chunk=5)
    bad = ds.map(lambda r, i: {'actions': [[float('nan')] * 4] * 4 if i == 9 else r['actions']}, with_indices=True)
    with pytest.raises(DataError, match='NaN') as e: run(bad)
    assert (e.value.row, e.value.field) == ('toy/ep001/f0001', 'actions')
    bad = ds.map(lambda r, i: {'instruction': '  ' if i == 2 else r['instruction']}, with_indices=True)
    with pytest.raises(DataError, match='instruction') as e: run(bad)
    assert (e.value.row, e.value.field) == ('toy/ep000/f0002', 'instruction')
    (tmp_path/'llava').mkdir()
    (tmp_path/'llava/config.json').write_text(json.dumps({'model_type': 'llava'}))
    with pytest.raises(EmtError, match=r"'llava' is not a supported VLA backbone; supported: \['internvl'"):
        train_vla(tmp_path/'llava', ds, VLAConfig(**CFG), short, tmp_path/'x', num_workers=0)
    with pytest.raises(EmtError, match='lora_rank'): VLAConfig(**CFG, freeze='vlm', lora_rank=2)
    vlm, proc = tiny_backbone()
    t = frame_table(ds, 4)
    save_vla(build_vla(vlm, proc, VLAConfig(**CFG)), proc, action_stats(t['actions'], t['pad'], [3]), tmp_path/'pol')
    with pytest.raises(EmtError, match='empty instruction'):
        load_policy(tmp_path/'pol', 'cpu').predict([frames(1)[0][0]], '')


def test_vla_stage_on_a_toy_project(tmp_project):
    from emt.evaluation import vla_policies
    from emt.params import load_params
    from emt.vla import run_vla
    P = toy_vla_project(tmp_project, load_params(Path(__file__).parents[1]/'params.yaml'))
    (tmp_project/'artifacts/vla/old_method/any/seed0/step_000001').mkdir(parents=True)  # from a run with other methods
    (tmp_project/'artifacts/vla/base/step_000001').mkdir(parents=True)  # the layout before the grid
    m = run_vla(P, num_workers=0)
    assert sorted(vla_policies(tmp_project/'artifacts/vla')) == [
        'base/any/seed0/step_000004', 'base/any/seed0/step_000008', 'estimator/any/seed0/step_000004',
        'estimator/any/seed0/step_000008']
    assert not (tmp_project/'artifacts/vla/old_method').exists() and not (tmp_project/'artifacts/vla/base/step_000001').exists()
    saved = json.loads((tmp_project/'metrics/vla.json').read_text())
    assert set(saved['runs']) == {'base/any/seed0', 'estimator/any/seed0'} and saved['configs']['any']['action_dim'] == 4
    b = saved['runs']['base/any/seed0']
    assert b['heldout'] == m['runs']['base/any/seed0']['heldout'] and len(b['heldout']) == 2 and b['samples_per_s'] > 0
    rows = (tmp_project/'metrics/vla_loss.csv').read_text().splitlines()
    assert rows[0] == 'init,benchmark,seed,step,split,loss' and len(rows) == 1 + 2 * (8 + 2)
    frames = (tmp_project/'metrics/vla_heldout_frames.csv').read_text().splitlines()
    assert frames[0] == 'init,benchmark,seed,episode,frame,loss' and len(frames) == 1 + 2 * b['heldout_frames']
    assert {p.name for p in (tmp_project/'figures').iterdir()} == {'fig3_loss.png', 'fig3_loss.svg'}
    with pytest.raises(EmtError, match='unknown initialisations'): run_vla(P, inits=['nope'])


def test_a_stage_run_launched_by_hand_is_adopted_by_the_stage(tmp_project):
    "`accelerate launch -m emt.vla --stage-run <run>` on two processes trains the stage's run into its folder; the stage adopts it and trains only the others."
    import yaml
    from emt.launch import free_port
    from emt.params import load_params
    from emt.vla import run_vla
    P = toy_vla_project(tmp_project, load_params(Path(__file__).parents[1]/'params.yaml'))
    (tmp_project/'params.yaml').write_text(yaml.safe_dump(P.model_dump(mode='json'), sort_keys=False))
    accelerate = Path(sys.executable).parent/'accelerate'
    launch = [str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--main_process_port',
              str(free_port()), '--mixed_precision', 'no', '--dynamo_backend', 'no', '-m', 'emt.vla']
    bad = subprocess.run(launch[:2] + ['--num_processes', '1'] + launch[-2:] + ['--stage-run', 'estimator/any/seed9'],
                         cwd=tmp_project, env=ENV, capture_output=True, text=True, timeout=600)
    assert bad.returncode and 'not a run of the vla stage' in bad.stderr and "'estimator/any/seed0'" in bad.stderr
    subprocess.run(launch + ['--stage-run', 'estimator/any/seed0', '--workers', '0'], cwd=tmp_project, env=ENV,
                   check=True, timeout=600)
    run = tmp_project/'artifacts/vla/estimator/any/seed0'
    by_hand = json.loads((run/'report.json').read_text())
    assert by_hand['processes'] == 2 and by_hand['resumed_from'] == 0
    m = run_vla(P, num_workers=0)['runs']
    assert m['estimator/any/seed0']['reused'] and m['estimator/any/seed0']['processes'] == 2  # adopted, not retrained
    assert not m['base/any/seed0']['reused'] and m['base/any/seed0']['processes'] == 1
    assert m['estimator/any/seed0']['heldout'] == {f"step_{h['step']:06d}": h['loss'] for h in by_hand['heldout']}
