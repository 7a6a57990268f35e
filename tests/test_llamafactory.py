"""Mid-training handed to LLaMA-Factory: the config emt writes is accepted by LLaMA-Factory's own argument parser,
and the whole path (write, launch, adopt) runs with a stand-in for `llamafactory-cli` that reads what emt wrote
and saves a VLM as LLaMA-Factory does; the adopted VLM loads with emt and with plain transformers."""
import json, os, subprocess, sys, textwrap
from pathlib import Path

import pytest

from emt.backbones import load_vlm, save_vlm
from emt.core import EmtError
from emt.samples import samples_to_dataset
from emt.llamafactory import adopt_lf_checkpoint, lf_config, run_lf, write_lf_run
from emt.params import Recipe
from emt.fixtures import tiny_backbone, toy_png_bytes
from emt.toy_projects import toy_midtrain_project

REPO = Path(__file__).resolve().parents[1]
RECIPE = Recipe(steps=10, global_batch=8, micro_batch=2, lr=1e-4, warmup_ratio=0.1, max_seq_len=512, precision='bf16')
STAND_IN = textwrap.dedent('''\
    #!{python}
    """llamafactory-cli train CONFIG, as far as emt relies on it: read the config and the sharegpt data it names,
    then save the trained VLM (here: the base with one weight moved) with its processor files in output_dir."""
    import json, os, shutil, sys
    from pathlib import Path
    import yaml
    from safetensors.torch import load_file, save_file
    assert sys.argv[1] == 'train', sys.argv
    cfg = yaml.safe_load(Path(sys.argv[2]).read_text())
    info = json.loads((Path(cfg['dataset_dir'])/'dataset_info.json').read_text())[cfg['dataset']]
    rows = json.loads((Path(cfg['dataset_dir'])/info['file_name']).read_text())
    for r in rows:
        for im in r['images']: assert (Path(cfg['dataset_dir'])/im).is_file(), im
    out = Path(cfg['output_dir']); shutil.copytree(cfg['model_name_or_path'], out, dirs_exist_ok=True)
    w = load_file(out/'model.safetensors'); k = sorted(w)[0]; w[k] = w[k] + 0.01; save_file(w, out/'model.safetensors')
    (out/'trainer_log.jsonl').write_text(json.dumps({{'rows': len(rows), 'nproc': os.environ.get('NPROC_PER_NODE'),
                                                     'torchrun': os.environ.get('FORCE_TORCHRUN')}}) + '\\n')
    assert 'emt' not in sys.modules
''')


def mixture(n=4):
    return samples_to_dataset([{'id': f'demo/{i}', 'source': 'demo', 'images': [{'bytes': toy_png_bytes(i), 'path': None}],
                                'messages': [{'role': 'user', 'content': '<image>\nWhat is this?'},
                                             {'role': 'assistant', 'content': f'Object {i}.'}], 'meta': '{}'}
                               for i in range(n)], 'vlm')


def test_write_launch_and_adopt(tmp_path, monkeypatch):
    base = save_vlm(*tiny_backbone('internvl'), tmp_path/'base')
    bin_dir = tmp_path/'bin'; bin_dir.mkdir()
    (bin_dir/'llamafactory-cli').write_text(STAND_IN.format(python=sys.executable)); (bin_dir/'llamafactory-cli').chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    config = write_lf_run(mixture(), RECIPE, str(base), 'internvl', tmp_path/'lf', processes=2)
    out = run_lf(config, processes=2)
    log = json.loads((out/'trainer_log.jsonl').read_text())
    assert log == {'rows': 4, 'nproc': '2', 'torchrun': '1'}
    dest = adopt_lf_checkpoint(out, tmp_path/'artifacts/midtrain/estimator')
    assert not (dest/'trainer_log.jsonl').exists()
    model, _ = load_vlm(dest)
    base_model, _ = load_vlm(base)
    assert any((p - q).abs().max() > 0 for p, q in zip(model.parameters(), base_model.parameters()))
    r = subprocess.run([sys.executable, str(REPO/'tests/fixtures/plain_transformers_generate.py'), str(dest), '--parts'],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not json.loads(r.stdout)['emt_imported'], r.stderr[-2000:]


def test_a_failed_run_shows_its_log(tmp_path, monkeypatch):
    bin_dir = tmp_path/'bin'; bin_dir.mkdir()
    (bin_dir/'llamafactory-cli').write_text('#!/bin/sh\necho "CUDA out of memory" >&2\nexit 3\n'); (bin_dir/'llamafactory-cli').chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    config = write_lf_run(mixture(2), RECIPE, 'm', 'qwen3_vl', tmp_path/'lf')
    with pytest.raises(EmtError, match=r'(?s)LLaMA-Factory failed \(exit 3\).*CUDA out of memory'):
        run_lf(config)


@pytest.mark.interop
def test_llamafactorys_own_parser_takes_the_config(tmp_path):
    """LLaMA-Factory 0.9.5's HfArgumentParser-based `get_train_args` accepts every key emt writes (its version check
    off: its transformers pin is not emt's)."""
    pytest.importorskip('llamafactory')
    cfg = lf_config(RECIPE.model_copy(update={'precision': 'fp32', 'group_by_length': True}), 'OpenGVLab/InternVL3_5-1B-HF', 'internvl',
                    'emt_mixture', tmp_path, tmp_path/'out', processes=1)
    code = ('import json, sys; from llamafactory.hparams import get_train_args\n'
            'm, d, t, f, g = get_train_args(json.loads(sys.argv[1]))\n'
            'print(json.dumps([t.max_steps, t.gradient_accumulation_steps, d.cutoff_len, d.template, f.finetuning_type,\n'
            '                  t.train_sampling_strategy]))')
    r = subprocess.run([sys.executable, '-c', code, json.dumps(cfg)], capture_output=True, text=True,
                       env={**os.environ, 'DISABLE_VERSION_CHECK': '1', 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [10, 4, 512, 'intern_vl', 'full', 'group_by_length']


STAGE_STAND_IN = STAND_IN.split("(out/'trainer_log.jsonl')")[0] + textwrap.dedent('''\
    (out/'trainer_log.jsonl').write_text(''.join(json.dumps({{'current_steps': s, 'loss': 2.0 / s}}) + '\\n'
                                                 for s in range(1, cfg['max_steps'] + 1)))
    print('prefix:', os.environ.get('STAND_IN_PREFIX'))
    assert 'emt' not in sys.modules
''')


def test_the_midtrain_stage_on_llamafactory(tmp_project, monkeypatch):
    "midtrain.engine: llamafactory: the stage writes each run, launches the CLI under the prefix, adopts the VLM and reads its log."
    from emt.midtrain import run_midtrain
    from emt.params import load_params, override
    assert 'current_steps' in STAGE_STAND_IN
    P = toy_midtrain_project(tmp_project, load_params(REPO/'params.yaml'))
    P = override(P, 'midtrain', engine='llamafactory', llamafactory={'command_prefix': 'env STAND_IN_PREFIX=used'})
    bin_dir = tmp_project/'bin'; bin_dir.mkdir()
    (bin_dir/'llamafactory-cli').write_text(STAGE_STAND_IN.format(python=sys.executable)); (bin_dir/'llamafactory-cli').chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    m = run_midtrain(P)
    base, _ = load_vlm(tmp_project/'artifacts/base_vlm')
    for method in ('estimator', 'random'):
        d = tmp_project/'artifacts/midtrain'/method
        assert 'prefix: used' in (d/'llamafactory.log').read_text()
        model, _ = load_vlm(d)
        assert any((p - q).abs().max() > 0 for p, q in zip(model.parameters(), base.parameters()))
        rep = m['methods'][method]
        assert rep['steps'] == P.midtrain.recipe.steps and rep['first_loss'] == 2.0 and rep['final_loss'] == 0.5
    assert not (tmp_project/'artifacts/midtrain_train').exists()
    rows = (tmp_project/'metrics/midtrain_loss.csv').read_text().splitlines()
    assert len(rows) == 1 + 2 * P.midtrain.recipe.steps


def test_a_run_without_a_loss_log_is_an_error(tmp_path):
    from emt.llamafactory import lf_report
    (tmp_path/'trainer_log.jsonl').write_text('{"current_steps": 1}\n')
    with pytest.raises(EmtError, match='no loss rows'): lf_report(tmp_path, RECIPE, 1, 1.0)
