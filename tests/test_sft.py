"""SFT engine: 2-process `accelerate launch` equals 1 process, kill -9 and resume, bad input, checkpoints."""
import io, json, os, signal, subprocess, sys, time
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path

import numpy as np
import pytest
import torch
torch.set_num_threads(1)  # tiny models: one thread is fastest, and the only sane choice on a shared 2-core machine
from datasets import Dataset, Features, Image as ImageFeature, Sequence, Value
from PIL import Image
from safetensors.torch import load_file

from emt.backbones import save_vlm, tiny_vlm, train_tokenizer
from emt.core import DataError, EmtError
from emt.samples import save_dataset
from emt.sft import checkpoints, train_sft
from emt.toy_projects import toy_base_vlm_project

WORDS = ['red', 'blue', 'green', 'cube', 'ball', 'left', 'right']
SIZE = dict(hidden_size=32, layers=1, heads=2, vision_hidden_size=16, vision_layers=1, image_size=16, patch_size=8)
RECIPE = dict(steps=10, global_batch=8, micro_batch=2, lr=3e-3, warmup_steps=2, max_seq_len=64, save_every=4)
FEATURES = Features({'id': Value('string'), 'source': Value('string'), 'images': Sequence(ImageFeature()),
                     'meta': Value('string'), 'messages': [{'role': Value('string'), 'content': Value('string')}]})
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1', 'EMT_PROGRESS': '0', 'OMP_NUM_THREADS': '1', 'CUDA_VISIBLE_DEVICES': ''}


def png(i, size=16):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, 'PNG')
    return buf.getvalue()


def rows(n, start=0, bad=(), long_text=()):
    out = []
    for i in range(start, start + n):
        answer = f'a {WORDS[i % 7]} {WORDS[3 + i % 2]}'
        out.append({'id': f'toy/{i:03d}', 'source': 'toy', 'meta': '{}',
                    'images': [{'bytes': b'not an image' if i in bad else png(i), 'path': None}],
                    'messages': [{'role': 'user', 'content': ('word ' * 200 if i in long_text else '') +
                                  '<image>\nWhat is it?'},
                                 {'role': 'assistant', 'content': answer}]})
    return Dataset.from_list(out, features=FEATURES)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "A tiny saved VLM and two tiny saved datasets."
    d = tmp_path_factory.mktemp('sft')
    texts = [m['content'] for r in rows(24) for m in r['messages']] * 4
    model, proc = tiny_vlm('internvl', train_tokenizer(texts, 300), seed=0, **SIZE)
    save_vlm(model, proc, d/'vlm')
    save_dataset(rows(16), d/'ds_a'); save_dataset(rows(8, start=16), d/'ds_b')
    return d


def weights(out):
    return load_file(str(Path(out)/'model/model.safetensors'))


def assert_same_weights(a, b, atol=1e-5):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa: torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=1e-4, msg=k)


def cli(setup, out, recipe=RECIPE, extra=()):
    return ['-m', 'emt.sft', str(setup/'vlm'), str(setup/'ds_a'), str(setup/'ds_b'), '--out', str(out),
            '--recipe', json.dumps(recipe), '--workers', '1', *extra]


def launch(setup, out, n):
    # `--cpu` uses accelerate's simple launcher, which starts one process whatever --num_processes says; the
    # multi-process launcher (torchrun) starts n, and the engine makes them CPU/gloo processes when no GPU is visible
    how = ['--multi_gpu'] if n > 1 else ['--cpu']
    cmd = [str(Path(sys.executable).parent/'accelerate'), 'launch', *how, '--num_processes', str(n),
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', *cli(setup, out)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((Path(out)/'report.json').read_text())


def in_process(setup, out, recipe):
    "The same run as `cli`, in this (single) process."
    from emt.backbones import load_vlm
    from emt.samples import load_dataset_dir
    return train_sft(load_vlm(setup/'vlm'), [load_dataset_dir(setup/d, 'vlm') for d in ('ds_a', 'ds_b')], recipe, out,
                     num_workers=0)


def test_two_processes_match_one(setup, tmp_path):
    one, two = in_process(setup, tmp_path/'one', RECIPE), launch(setup, tmp_path/'two', 2)
    assert (one['processes'], one['accumulation']) == (1, 4)
    assert (two['processes'], two['accumulation']) == (2, 2)
    assert two['final_loss'] < two['first_loss'] - 0.3  # it learns
    assert abs(one['final_loss'] - two['final_loss']) < 1e-4
    assert_same_weights(tmp_path/'one', tmp_path/'two')
    w0 = load_file(str(setup/'vlm/model.safetensors'))
    assert any(not torch.allclose(w0[k], v) for k, v in weights(tmp_path/'two').items())  # it trained


def test_kill_and_resume_ends_like_an_uninterrupted_run(setup, tmp_path):
    recipe = dict(RECIPE, steps=32)
    ref = in_process(setup, tmp_path/'ref', recipe)
    out = tmp_path/'killed'
    p = subprocess.Popen([sys.executable, *cli(setup, out, recipe)], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out/'checkpoints/step_000008').exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert not (out/'model').exists(), 'the run finished before it could be killed'
    done = [c.name for c in checkpoints(out)]
    assert done and done[-1] < 'step_000032'
    r = subprocess.run([sys.executable, *cli(setup, out, recipe)], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out/'report.json').read_text())
    assert report['resumed_from'] >= 8
    assert_same_weights(tmp_path/'ref', out)
    assert report['final_loss'] == pytest.approx(ref['final_loss'], abs=1e-5)


@pytest.fixture
def toy(setup):
    "A fresh copy of the tiny VLM (training changes it in place)."
    from emt.backbones import load_vlm
    return load_vlm(setup/'vlm')


def short(**kw):
    return dict(RECIPE, steps=2, save_every=0, **kw)


def test_unreadable_image_raises_or_is_skipped_and_counted(toy, tmp_path):
    ds = rows(8, bad={3})
    with pytest.raises(DataError, match='cannot be decoded') as e:
        train_sft(toy, ds, short(), tmp_path/'a', num_workers=0, save_model=False)
    assert e.value.row == 3
    rep = train_sft(toy, ds, short(), tmp_path/'b', num_workers=0, on_error='skip', save_model=False)
    assert rep['skipped'] == 2  # sample 3 is drawn once per epoch: 2 epochs of 8 in 2 steps of 8
    assert {s['row'] for s in rep['skipped_first']} == {3}


def test_over_long_sample_raises_or_is_skipped(toy, tmp_path):
    ds = rows(8, long_text={5})
    with pytest.raises(DataError, match='max_seq_len') as e:
        train_sft(toy, ds, short(max_seq_len=32), tmp_path/'a', num_workers=0, save_model=False)
    assert e.value.row == 'toy/005'
    rep = train_sft(toy, ds, short(max_seq_len=32), tmp_path/'b', num_workers=0, on_error='skip', save_model=False)
    assert rep['skipped'] == 2 and rep['skipped_first'][0]['row'] == 'toy/005'


def test_empty_dataset_and_missing_checkpoint(toy, tmp_path):
    with pytest.raises(EmtError, match='empty'):
        train_sft(toy, rows(4).select([]), short(), tmp_path/'a', num_workers=0)
    with pytest.raises(EmtError, match='does not exist'):
        train_sft(toy, rows(8), short(), tmp_path/'b', resume=tmp_path/'nope', num_workers=0)


def test_other_runs_checkpoints_are_set_aside(setup, toy, tmp_path):
    vlm = setup/'vlm'  # loaded afresh by each call: the same starting weights
    r = dict(RECIPE, steps=4, save_every=2)
    train_sft(vlm, rows(8), r, tmp_path, seed=0, num_workers=0, save_model=False)
    assert [c.name for c in checkpoints(tmp_path)] == ['step_000002']
    rep = train_sft(vlm, rows(8), r, tmp_path, seed=1, num_workers=0, save_model=False)  # another seed: start afresh
    assert rep['resumed_from'] == 0 and (tmp_path/'checkpoints.stale/step_000002').exists()
    rep = train_sft(vlm, rows(8), dict(r, steps=4), tmp_path, seed=1, num_workers=0, save_model=False)
    assert rep['resumed_from'] == 2
    train_sft(toy, rows(8), dict(r, steps=2, save_every=0), tmp_path/'other', num_workers=0, save_model=False)  # toy moves
    rep = train_sft(toy, rows(8), dict(r, steps=4), tmp_path, seed=1, num_workers=0, save_model=False)
    assert rep['resumed_from'] == 0, 'a run from other starting weights must not resume this checkpoint'


# --- the base_vlm stage ---------------------------------------------------------------------------------------------

def test_base_vlm_scratch_stage_writes_checkpoint_metrics_curve_and_figure(tmp_project):
    from emt.backbones import load_vlm
    from emt.base_vlm import run_base_vlm
    from emt.params import load_params
    base = load_params(Path(__file__).parents[1]/'params.yaml')
    P = toy_base_vlm_project(tmp_project, base)
    m = run_base_vlm(P, num_workers=0)
    assert load_vlm(tmp_project/'artifacts/base_vlm')[0].config.model_type == 'internvl'
    saved = json.loads((tmp_project/'metrics/base_vlm.json').read_text())
    assert saved['profile'] == P.profile and saved['steps'] == 6 and saved['final_loss'] < saved['first_loss']
    assert saved['sources'] == ['web_captions', 'dense_captions'] and saved['params'] == m['params'] > 0
    rows = (tmp_project/'metrics/base_vlm_loss.csv').read_text().splitlines()
    assert rows[0] == 'step,loss,lr,grad_norm,tokens_per_s' and len(rows) == 7
    assert {p.name for p in (tmp_project/'figures').iterdir()} == {'base_vlm_loss.png', 'base_vlm_loss.svg'}
    assert not (tmp_project/'artifacts/base_vlm_train').exists()  # checkpoints removed once done


def test_base_vlm_pretrained_copies_a_local_checkpoint_and_names_a_missing_one(setup, tmp_project):
    from emt.base_vlm import run_base_vlm
    from emt.core import EmtError
    from emt.params import load_params, override
    base = load_params(Path(__file__).parents[1]/'params.yaml')
    with pytest.raises(EmtError, match='set image_size'):  # the checkpoint's processor resizes to 16 px
        run_base_vlm(override(base, 'base_vlm', init='pretrained', model=str(setup/'vlm'), image_size=64))
    m = run_base_vlm(override(base, 'base_vlm', init='pretrained', model=str(setup/'vlm'), image_size=16))
    assert m['init'] == 'pretrained' and m['arch'] == 'internvl'
    a, b = load_file(str(setup/'vlm/model.safetensors')), load_file(str(tmp_project/'artifacts/base_vlm/model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_project/'metrics/base_vlm.json').read_text())['model'] == str(setup/'vlm')
    assert (tmp_project/'metrics/base_vlm_loss.csv').read_text() == 'step,loss,lr,grad_norm,tokens_per_s\n'
    assert (tmp_project/'figures/base_vlm_loss.png').exists()  # dvc.yaml outs exist whatever the init
    for hub_id in ('OpenGVLab/InternVL3_5-1B-HF', str(tmp_project/'nope')):
        with pytest.raises(EmtError, match='local HF cache'):
            run_base_vlm(override(base, 'base_vlm', init='pretrained', model=hub_id))


def test_a_step_below_a_bf16_ulp_still_changes_a_bf16_saved_model(setup, tmp_path):
    "fp32 master weights: training a checkpoint stored in bf16 keeps updates far smaller than a bf16 ulp."
    from emt.backbones import load_vlm
    model, proc = load_vlm(setup/'vlm')
    save_vlm(model.to(torch.bfloat16), proc, tmp_path/'bf16')
    before = load_file(str(tmp_path/'bf16'/'model.safetensors'))
    assert all(v.dtype == torch.bfloat16 for v in before.values() if v.is_floating_point())
    lr = 1e-6  # AdamW's first step moves each weight by about lr: 2**-20, against a bf16 ulp of 2**-14 at |w| ~ 0.02
    report = train_sft(tmp_path/'bf16', [rows(8)], {**RECIPE, 'steps': 1, 'lr': lr, 'warmup_steps': 0, 'precision': 'fp32',
                                                     'weight_decay': 0.0, 'save_every': 0}, tmp_path/'out',
                       num_workers=0)
    after = weights(tmp_path/'out')
    w = 'language_model.model.layers.0.mlp.down_proj.weight'
    a, b = after[w], before[w].float()
    assert after[w].dtype == torch.float32 and report['mixed_precision'] == 'no'
    half_ulp = torch.finfo(torch.bfloat16).eps * b.abs() / 2
    moved = (a - b).abs()
    assert (moved > 0).float().mean() > 0.9, 'most weights should move'
    assert (moved[moved > 0] < half_ulp[moved > 0]).float().mean() > 0.9, 'the moves are below half a bf16 ulp'
    # the same update applied to bf16 parameters is lost in rounding
    small = moved < half_ulp
    lost = (a.to(torch.bfloat16).float() == b)[small].float().mean()
    assert lost > 0.99, f'only {lost:.3f} of the small moves would round away in bf16'


def test_gradient_checkpointing_trains_the_same_run(setup, tmp_path, monkeypatch):
    "recipe.gradient_checkpointing recomputes activations: the same losses and weights, the same run fingerprint."
    import transformers.modeling_utils as tm
    from emt.params import Recipe
    recipe = {**RECIPE, 'steps': 4, 'save_every': 0}
    plain = in_process(setup, tmp_path/'plain', Recipe(**recipe))
    calls, real = [], tm.checkpoint  # what transformers checkpoints each layer with
    monkeypatch.setattr(tm, 'checkpoint', lambda *a, **k: calls.append(1) or real(*a, **k))
    ckpt = in_process(setup, tmp_path/'ckpt', Recipe(**recipe, gradient_checkpointing=True))
    assert len(calls) >= 4  # layers ran under checkpointing, at every training step
    assert [h['loss'] for h in ckpt['history']] == pytest.approx([h['loss'] for h in plain['history']], abs=1e-5)
    assert_same_weights(tmp_path/'plain', tmp_path/'ckpt')
    assert Recipe(**recipe).result_json() == Recipe(**recipe, gradient_checkpointing=True).result_json()
    assert Recipe(**recipe).result_json() != Recipe(**{**recipe, 'lr': 1e-3}).result_json()


def test_length_grouped_batches_train_the_same_model_with_less_padding(setup, tmp_path):
    "group_by_length on samples of very different lengths: fewer pad tokens (more tokens per second), the same model."
    from emt.backbones import load_vlm
    long_short = rows(16, long_text=range(0, 16, 2))
    recipe = dict(RECIPE, steps=4, max_seq_len=1100, save_every=0)
    plain = train_sft(load_vlm(setup/'vlm'), long_short, recipe, tmp_path/'plain', num_workers=0)
    grouped = train_sft(load_vlm(setup/'vlm'), long_short, dict(recipe, group_by_length=True), tmp_path/'grouped',
                        num_workers=0)
    assert plain['fingerprint'] == grouped['fingerprint']  # the same run: only the padding differs
    assert grouped['tokens'] == plain['tokens'] and grouped['padding'] < plain['padding'] / 2, (grouped['padding'], plain['padding'])
    assert abs(plain['final_loss'] - grouped['final_loss']) < 1e-4
    assert_same_weights(tmp_path/'plain', tmp_path/'grouped')
