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
