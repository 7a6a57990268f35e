"""params.yaml schema: every kind of mistake stops with a message naming the key; profiles switch in one command."""
import os, shutil, subprocess, sys
from pathlib import Path

import pytest
import yaml

from emt.params import ParamsError, load_params, parse_params, use_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    "A copy of the project's params and profiles in a temp dir, set as the emt root."
    shutil.copy(ROOT/'params.yaml', tmp_path/'params.yaml')
    shutil.copytree(ROOT/'profiles', tmp_path/'profiles')
    monkeypatch.setenv('EMT_ROOT', str(tmp_path))
    return tmp_path


def _raw():
    return yaml.safe_load((ROOT/'params.yaml').read_text())


def _message(raw):
    with pytest.raises(ParamsError) as e: parse_params(raw)
    return str(e.value)


def test_shipped_files_validate(project):
    assert load_params().profile == 'embedded'
    assert load_params('profiles/embedded.yaml') == load_params()
    paper = load_params('profiles/paper.yaml')
    assert paper.select.k == 1_200_000 and paper.midtrain.recipe.lr == 5e-5 and paper.midtrain.recipe.steps == 5000
    assert paper.vla.recipe.steps == 16000 and paper.vla.recipe.warmup_steps == 500
    assert paper.estimator.batch_size == 128 and paper.estimator.target_val_acc == 0.9


def test_embedded_full_differs_from_the_default_only_in_the_methods_it_mid_trains(project):
    "So that after a default run it reuses every stage up to select and the default's VLAs."
    full, default = load_params('profiles/embedded-full.yaml').model_dump(), load_params().model_dump()
    assert full['midtrain']['methods'] == default['select']['methods'] == [
        'estimator', 'random', 'feature_distance', 'vla_ppl', 'delta_ppl']
    assert set(default['midtrain']['methods']) < set(full['midtrain']['methods'])
    for d in (full, default): d.pop('profile'); d['midtrain'].pop('methods')
    assert full == default


def test_embedded_libero_adds_libero_to_the_default_and_nothing_else(project):
    """The corpus, the VLM side and the recipes are the default's: only LIBERO's sources and benchmarks, one mid-trained
    VLM and one VLA seed differ."""
    lib, default = load_params('profiles/embedded-libero.yaml').model_dump(), load_params().model_dump()
    added = lib['data']['vla_sources'][len(default['data']['vla_sources']):]
    assert lib['data']['vla_sources'][:1] == default['data']['vla_sources']
    assert {s['format'] for s in added} == {'libero_hdf5'} and {s['benchmark'] for s in added} == {'libero'}
    assert {b['name'] for b in lib['eval']['benchmarks']} == {'metaworld', 'libero'}
    assert lib['midtrain']['methods'] == ['estimator'] and lib['vla']['seeds'] == [0]
    assert 'expert' in lib['eval']['references']
    for d in (lib, default):
        for k in ('profile',): d.pop(k)
        d['data'].pop('vla_sources'); d['eval'].pop('benchmarks'); d['midtrain'].pop('methods'); d['vla'].pop('seeds')
    assert lib == default


def test_embedded_qwen_changes_only_the_backbone_and_the_feature_space(project):
    "The Qwen3-VL base VLM is pretrained as the default's, and the pool scored in the default's InternVL space."
    qwen, default = load_params('profiles/embedded-qwen.yaml').model_dump(), load_params().model_dump()
    assert (qwen['base_vlm']['arch'], qwen['base_vlm']['selector']) == ('qwen3_vl', default['base_vlm']['arch'])
    assert qwen['features']['model'] == 'artifacts/base_vlm/selector' and qwen['midtrain']['methods'] == ['estimator']
    for d in (qwen, default):
        d.pop('profile'); d['base_vlm'].pop('arch'); d['base_vlm'].pop('selector'); d['features'].pop('model')
        d['midtrain'].pop('methods')
    assert qwen == default


def test_embedded_long_changes_only_the_vla_budget(project):
    "The base VLA's success must be able to move: only the VLA steps differ from the default."
    long, default = load_params('profiles/embedded-long.yaml').model_dump(), load_params().model_dump()
    assert long['vla']['recipe']['steps'] == 3 * default['vla']['recipe']['steps'] == 600
    assert long['vla']['seeds'] == default['vla']['seeds'] == [0, 1, 2]
    for d in (long, default): d.pop('profile'); d['vla']['recipe'].pop('steps')
    assert long == default


def test_a_selector_vlm_needs_a_scratch_base(project):
    raw = _raw(); raw['base_vlm'].update(init='pretrained', model='some/vlm', selector='internvl')
    assert 'a second VLM is pretrained only with init: scratch' in _message(raw)


def test_libero_evaluation_states_must_not_be_the_demonstrations(project):
    raw = yaml.safe_load((project/'profiles/embedded-libero.yaml').read_text())
    parse_params(raw)  # as shipped: states 0-9 evaluated, demonstrations from 20 on
    raw['vla']['seeds'] = [0, 1, 2]  # 3 seeds x 10 trials: states 0-29 reach the demonstrations' 20-49
    msg = _message(raw)
    assert 'start from initial states 0-29' in msg and 'corpus.libero.first_state to 30' in msg
    raw['corpus']['libero']['first_state'] = 30
    parse_params(raw)
    raw['data']['vla_sources'] = raw['data']['vla_sources'][:1]  # no VLA trained on the demonstrations: no conflict
    raw['corpus']['libero']['first_state'] = 0
    parse_params(raw)


def test_unknown_key_named():
    raw = _raw(); raw['gap']['perplexity'] = 5
    assert 'gap.perplexity: unknown key' in _message(raw)


def test_unknown_section_named():
    raw = _raw(); raw['selection'] = {'k': 1}
    assert 'selection: unknown key' in _message(raw)


def test_wrong_type_named():
    raw = _raw(); raw['features']['batch_size'] = '32'
    msg = _message(raw)
    assert 'features.batch_size: Input should be a valid integer' in msg and "got '32'" in msg


def test_union_errors_name_the_key_once_without_validator_internals():
    raw = _raw(); raw['select']['k'] = -1  # k is an int (samples) or a float (a fraction): two branches fail
    msg = _message(raw)
    assert msg.count('select.k') == 1 and 'select.k: Input should be greater than 0 (got -1)' in msg, msg
    assert 'constrained' not in msg and 'int]' not in msg, msg


def test_missing_value_named():
    raw = _raw(); del raw['midtrain']['recipe']
    assert 'midtrain.recipe: missing value' in _message(raw)


def test_nested_source_error_named():
    raw = _raw(); raw['data']['vlm_sources'][2]['format'] = 'csv'
    assert 'data.vlm_sources.2.format' in _message(raw)


def test_cross_field_rule():
    raw = _raw(); raw['base_vlm']['init'] = 'pretrained'; raw['base_vlm'].pop('model', None)
    assert 'needs `model`' in _message(raw)
    raw = _raw(); raw['data']['vla_sources'].append(dict(raw['data']['vla_sources'][0]))
    assert "duplicate source names ['metaworld_mt10']" in _message(raw)


def test_yaml_exponent_hint(project):
    text = (project/'params.yaml').read_text().replace('lr: 1.0e-3', 'lr: 1e-3', 1)
    (project/'params.yaml').write_text(text)
    with pytest.raises(ParamsError, match='write 1.0e-3'): load_params()


def test_use_profile(project):
    use_profile('paper')
    assert load_params().profile == 'paper'
    with pytest.raises(ParamsError, match="no profile 'tiny'"): use_profile('tiny')


def _emt(*args, cwd):
    env = {**os.environ, 'EMT_ROOT': str(cwd)}
    return subprocess.run([sys.executable, '-c', 'import sys; from emt.cli import main; sys.exit(main())', *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_cli_check_use_and_errors(project):
    r = _emt('params', 'check', cwd=project)
    assert r.returncode == 0 and "valid (profile 'embedded')" in r.stdout
    r = _emt('params', 'use', 'paper', cwd=project)
    assert r.returncode == 0 and load_params().profile == 'paper'
    (project/'params.yaml').write_text((project/'params.yaml').read_text().replace('trials: 24', 'trials: many'))
    r = _emt('params', 'check', cwd=project)
    assert r.returncode == 2 and 'eval.benchmarks.1.trials: Input should be a valid integer' in r.stderr
    assert 'Traceback' not in r.stderr


# ---------------------------------------------------------------- no network at run time

def _unreachable_env():
    "The test environment with the hub's offline switch removed and every request sent to a closed port."
    env = {k: v for k, v in os.environ.items() if k not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'EMT_ROOT')}
    return {**env, 'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': '',
            'EMT_PROGRESS': '0'}


def test_embedded_params_turn_the_hub_off():
    "With the embedded params loaded, a hub lookup fails at once: no request, no retry."
    import subprocess, sys
    code = ('from emt.params import load_params\nP = load_params()\nassert P.offline\n'
            'from transformers import AutoConfig\n'
            'try: AutoConfig.from_pretrained("someorg/not-cached-here")\n'
            'except OSError as e: print("refused:", type(e).__name__)\n')
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=_unreachable_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'refused: OSError' in r.stdout
    assert 'Retrying' not in r.stderr and 'huggingface.co' not in r.stderr, r.stderr[-2000:]


def test_features_notebook_runs_with_the_network_unreachable():
    "The features notebook (its examples ask for a checkpoint that does not exist) makes no hub request."
    import subprocess, sys
    nbdev_test = Path(sys.executable).parent/'nbdev-test'
    r = subprocess.run([str(nbdev_test), 'nbs/07_features.ipynb'], cwd=ROOT, env=_unreachable_env(),
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'Retrying' not in out and 'huggingface.co' not in out, out[-3000:]
