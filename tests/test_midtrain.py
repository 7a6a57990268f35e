"""midtrain stage: a toy project gives one plain HF checkpoint per method; a missing mixture is named."""
import json, os
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['EMT_PROGRESS'] = '0'
from pathlib import Path

import pytest
import torch
torch.set_num_threads(1)
from safetensors.torch import load_file

from emt.core import EmtError
from emt.midtrain import run_midtrain
from emt.params import load_params, override
from emt.toy_projects import toy_midtrain_project

MAIN = Path(__file__).resolve().parents[1]


def test_run_midtrain_writes_auto_loadable_checkpoints_metrics_and_curve(tmp_project):
    P = toy_midtrain_project(tmp_project, load_params(MAIN/'params.yaml'))
    m = run_midtrain(P, num_workers=0)
    from transformers import AutoModelForImageTextToText, AutoProcessor
    base = load_file(str(tmp_project/'artifacts/base_vlm/model.safetensors'))
    for method in ('estimator', 'random'):
        d = tmp_project/'artifacts/midtrain'/method
        model = AutoModelForImageTextToText.from_pretrained(d)
        proc = AutoProcessor.from_pretrained(d)
        assert model.config.model_type == 'internvl' and proc.tokenizer.chat_template
        assert not list(d.glob('checkpoints*')) and not (d/'optimizer.bin').exists()
        w = load_file(str(d/'model.safetensors'))
        assert any(not torch.equal(base[k], w[k]) for k in base)  # it trained
    assert not (tmp_project/'artifacts/midtrain_train').exists()  # resume state removed once done
    saved = json.loads((tmp_project/'metrics/midtrain.json').read_text())
    assert saved['methods']['estimator']['mixture_size'] == 6 and saved['methods']['random']['steps'] == 4
    assert saved['methods']['estimator']['final_loss'] == m['methods']['estimator']['final_loss']
    assert saved['methods']['estimator']['tokens_per_s'] > 0
    rows = (tmp_project/'metrics/midtrain_loss.csv').read_text().splitlines()
    assert rows[0] == 'method,step,loss' and len(rows) == 1 + 2 * 4
    assert {p.name for p in (tmp_project/'figures').glob('midtrain_loss.*')} == {'midtrain_loss.png', 'midtrain_loss.svg'}


def test_missing_mixture_names_the_stage_and_what_exists(tmp_project):
    P = toy_midtrain_project(tmp_project, load_params(MAIN/'params.yaml'))
    P = override(P, 'midtrain', methods=['estimator', 'vla_ppl'])
    with pytest.raises(EmtError, match=r"'vla_ppl'.*dvc repro select.*\['estimator', 'random'\]"):
        run_midtrain(P, num_workers=0)
    assert not (tmp_project/'artifacts/midtrain').exists()  # checked before any training


def test_two_processes_under_accelerate_launch_train_the_same_model(tmp_project):
    "With `processes: 2` each mixture is trained by `accelerate launch` on two (gloo) processes: the same run, and the stage's outputs as with one."
    P = toy_midtrain_project(tmp_project, load_params(MAIN/'params.yaml'))
    P = override(P, 'midtrain', methods=['estimator'])
    one = run_midtrain(P, num_workers=0)['methods']['estimator']
    w1 = load_file(str(tmp_project/'artifacts/midtrain/estimator/model.safetensors'))
    two = run_midtrain(P.model_copy(update={'processes': 2}), num_workers=0)['methods']['estimator']
    w2 = load_file(str(tmp_project/'artifacts/midtrain/estimator/model.safetensors'))
    assert (one['processes'], two['processes']) == (1, 2) and one['steps'] == two['steps']
    assert abs(one['final_loss'] - two['final_loss']) < 1e-4, (one['final_loss'], two['final_loss'])
    for k in w1: torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4, msg=k)
    assert not (tmp_project/'artifacts/midtrain_train').exists()
    assert len((tmp_project/'metrics/midtrain_loss.csv').read_text().splitlines()) == 1 + two['steps']


def test_a_run_launched_by_hand_is_adopted_by_the_stage(tmp_project):
    "The run book's command line, on two processes into the stage's working folder, trains the run; the stage (one process) then takes it over without a step."
    import subprocess, sys
    from emt.launch import free_port
    P = toy_midtrain_project(tmp_project, load_params(MAIN/'params.yaml'))
    P = override(P, 'midtrain', methods=['estimator'])
    work = tmp_project/'artifacts/midtrain_train/estimator'
    accelerate = Path(sys.executable).parent/'accelerate'
    cmd = [str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
           '--main_process_port', str(free_port()), '--mixed_precision', 'no', '--dynamo_backend', 'no',
           '-m', 'emt.sft', 'artifacts/base_vlm', 'artifacts/select/estimator/hf', '--out', str(work.relative_to(tmp_project)),
           '--recipe', P.midtrain.recipe.model_dump_json(), '--seed', str(P.seed), '--on-error', 'skip', '--workers', '0']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    subprocess.run(cmd, cwd=tmp_project, env=env, check=True, timeout=600)
    by_hand = json.loads((work/'report.json').read_text())
    assert by_hand['processes'] == 2 and by_hand['resumed_from'] == 0 and len(by_hand['history']) == by_hand['steps']
    w_hand = load_file(str(work/'model/model.safetensors'))
    m = run_midtrain(P, num_workers=0)['methods']['estimator']
    assert m['resumed_from'] == m['steps'] == by_hand['steps']  # adopted: not a step trained
    assert m['final_loss'] == by_hand['final_loss']
    w = load_file(str(tmp_project/'artifacts/midtrain/estimator/model.safetensors'))
    assert w.keys() == w_hand.keys() and all(torch.equal(w[k], w_hand[k]) for k in w)
    assert not work.exists()
    rows = (tmp_project/'metrics/midtrain_loss.csv').read_text().splitlines()
    assert len(rows) == 1 + m['steps']  # the hand run's loss log is the stage's


def test_a_finished_run_of_other_inputs_is_trained_again(tmp_project):
    "A finished run in the working folder that another recipe made is not adopted: the stage trains its own."
    P = toy_midtrain_project(tmp_project, load_params(MAIN/'params.yaml'))
    P = override(P, 'midtrain', methods=['estimator'])
    work = tmp_project/'artifacts/midtrain_train/estimator'
    from emt.sft import train_sft
    from emt.samples import load_dataset_dir
    other = P.midtrain.recipe.model_copy(update={'lr': P.midtrain.recipe.lr / 2})
    train_sft(str(tmp_project/'artifacts/base_vlm'), load_dataset_dir(tmp_project/'artifacts/select/estimator/hf', 'vlm'),
              other, work, seed=P.seed, num_workers=0)
    assert (work/'report.json').is_file()
    m = run_midtrain(P, num_workers=0)['methods']['estimator']
    assert m['resumed_from'] == 0 and m['steps'] == P.midtrain.recipe.steps


def test_replay_adds_a_general_draw_to_every_mixture(tmp_project):
    P = toy_midtrain_project(tmp_project, load_params(MAIN/'params.yaml'))
    P = override(P, 'midtrain', replay=1.0, recipe={**P.midtrain.recipe.model_dump(mode='json'), 'steps': 2})
    m = run_midtrain(P, num_workers=0)['methods']
    assert m['estimator']['mixture_size'] == m['random']['mixture_size'] == 12 and m['estimator']['replay'] == 1.0
    assert m['estimator']['steps'] == 2
