"""The paper rehearsal: `profiles/paper-rehearsal.yaml` (the paper profile with only its sizes changed) run as a user
runs the paper profile, in a copy of the repository: `emt params use`, then `dvc repro` with papermill, the VLMs
loaded by their hub ids from a hub cache (`HF_HUB_CACHE`, `HF_HUB_OFFLINE=1`) holding tiny checkpoints saved as the
hub's are (bf16, 448-px processors, chat templates without `{% generation %}` markers), every source at the paper's
path. It checks what a user needs: every stage ran through DVC and papermill, mid-training saw labelled tokens and
moved the weights, the mid-trained checkpoint loads in a Python that never imports emt, and `dvc status` is clean.
About five minutes on the 2-core CPU machine; EMT_SKIP_REHEARSAL=1 skips it."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest
import yaml

from paper_fixtures import REPO, prepare_rehearsal
from paper_rehearsal import render

pytestmark = pytest.mark.skipif(os.environ.get('EMT_SKIP_REHEARSAL') == '1', reason='EMT_SKIP_REHEARSAL=1')
STAGES = list(yaml.safe_load((REPO/'dvc.yaml').read_text())['stages'])


def test_the_rehearsal_profile_is_the_paper_profile_resized():
    "The committed rehearsal profile is what `python tests/paper_rehearsal.py` makes of the committed paper profile."
    assert (REPO/'profiles/paper-rehearsal.yaml').read_text() == render(), \
        'profiles/paper-rehearsal.yaml is stale: run python tests/paper_rehearsal.py'


def test_the_rehearsal_changes_only_sizes():
    "Every value the rehearsal changes is a size; the keys, sources, models, dtypes and lengths are the paper's."
    paper = yaml.safe_load((REPO/'profiles/paper.yaml').read_text())
    reh = yaml.safe_load((REPO/'profiles/paper-rehearsal.yaml').read_text())
    changed = []
    def walk(a, b, path=()):
        if isinstance(a, dict) and isinstance(b, dict):
            assert a.keys() <= b.keys(), f'{path}: keys {sorted(a.keys() - b.keys())} missing'
            for k in a: walk(a[k], b[k], path + (k,))
        elif a != b: changed.append(path)
    walk({k: v for k, v in paper.items() if k not in ('profile', 'require_gpu', 'eval')}, reh)
    assert paper['require_gpu'] and not reh['require_gpu']
    sizes = {'batch_size', 'shard_size', 'num_workers', 'per_source', 'permutations', 'tsne_perplexity', 'max_steps',
             'eval_every', 'seeds', 'distance_vla_samples', 'k', 'steps', 'global_batch', 'micro_batch', 'save_every',
             'warmup_steps', 'max_new_tokens', 'head_hidden', 'heldout_max', 'workers', 'videos_per_task',
             'processes', 'jobs'}  # the GPUs of a node (two gloo processes here) and how many runs share them
    assert changed and all(p[-1] in sizes for p in changed), [p for p in changed if p[-1] not in sizes]
    assert [b['name'] for b in reh['eval']['benchmarks']] == ['libero']


def test_real_sources_under_data_paper_stay_out_of_data_dvc():
    "`data.dvc` tracks the embedded corpus only: DVC ignores data/paper/, where the run book puts the real sources."
    dvc = Path(sys.executable).parent/'dvc'
    r = subprocess.run([str(dvc) if dvc.exists() else 'dvc', 'check-ignore', 'data/paper/laion400m/images/000.png', 'data/metaworld_mt10/x'], cwd=REPO,
                       capture_output=True, text=True)
    assert r.stdout.split() == ['data/paper/laion400m/images/000.png'], (r.returncode, r.stdout, r.stderr)


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f'{" ".join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}'
    return r


@pytest.fixture(scope='module')
def rehearsed(tmp_path_factory):
    "A copy of the repository's tracked files, switched to the rehearsal, its fixtures written, after `dvc repro`."
    d = tmp_path_factory.mktemp('rehearsal')/'emt'
    for f in subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True, check=True).stdout.split(b'\0'):
        if f and (REPO/f.decode()).is_file():
            (d/f.decode()).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(REPO/f.decode(), d/f.decode())
    env, hub = prepare_rehearsal(d)
    repro = run(['dvc', 'repro', '--pull'], d, env, timeout=1800)
    status = run(['dvc', 'status', 'dvc.yaml'], d, env)  # the pipeline (data-grounded.dvc, a profile's corpus, is not pulled here)
    return d, env, hub, repro, status


def test_every_stage_ran_through_dvc_and_papermill(rehearsed):
    d, _, _, repro, status = rehearsed
    for stage in STAGES: assert f"Running stage '{stage}'" in repro.stdout, stage
    assert (d/'data.dvc').read_text() == (REPO/'data.dvc').read_text()  # the sources under data/paper/ were not swept in
    runs = {p.stem for p in (d/'_runs').glob('*.ipynb')}
    stages = yaml.safe_load((d/'dvc.yaml').read_text())['stages']
    assert all(s['cmd'].startswith(f'emt stage {n}') for n, s in stages.items())  # emt stage runs papermill
    assert runs == {Path(d).stem for s in stages.values() for d in s['deps'] if str(d).startswith('nbs/')}, runs
    assert 'up to date' in status.stdout.lower() or not status.stdout.strip(), status.stdout


def test_midtraining_learned_from_the_hub_template(rehearsed):
    "The hub-style template's replies were found: a positive loss that falls, and weights that moved."
    d, _, hub, _, _ = rehearsed
    mid = json.loads((d/'metrics/midtrain.json').read_text())
    for m, r in mid['methods'].items():
        assert r['first_loss'] > 0 and r['final_loss'] > 0, (m, r)
        assert r['processes'] == 2, (m, r)  # under `accelerate launch`, inside `dvc repro`
    from safetensors.torch import load_file
    base = load_file(hub['internvl']/'model.safetensors')
    for m in mid['methods']:
        tuned = load_file(d/'artifacts/midtrain'/m/'model.safetensors')
        assert any((base[k].float() - tuned[k].float()).abs().max() > 0 for k in base), m


def test_every_vla_trained_on_two_processes(rehearsed):
    "processes: 2 launched each VLA run with `accelerate launch` from inside the vla stage under `dvc repro`."
    d, *_ = rehearsed
    runs = json.loads((d/'metrics/vla.json').read_text())['runs']
    assert runs and all(r['processes'] == 2 for r in runs.values()), {k: r['processes'] for k, r in runs.items()}


def test_the_midtrained_vlm_loads_without_emt(rehearsed):
    "A Python that never imports emt loads the mid-trained checkpoint (model, tokenizer, image processor) and generates."
    d, env, _, _, _ = rehearsed
    script = REPO/'tests/fixtures/plain_transformers_generate.py'
    r = run([sys.executable, str(script), str(d/'artifacts/midtrain/estimator'), '--parts'], d, env)
    out = json.loads(r.stdout)
    assert out['model'] == 'InternVLForConditionalGeneration' and not out['emt_imported']
    assert len(out['generated']) > 0 and len(out['input_ids']) > 256  # a 448-px tile: 256 image tokens


def test_the_vla_stage_trained_every_benchmark_at_448_px(rehearsed):
    d, *_ = rehearsed
    vla = json.loads((d/'metrics/vla.json').read_text())
    assert {r['benchmark'] for r in vla['runs'].values()} == {'libero', 'simpler_bridge', 'calvin'}
    ev = json.loads((d/'metrics/eval.json').read_text())
    assert any('/libero/' in k for k in ev['results'])
    # the VLAs trained on two processes wrote every held-out frame's loss, so the report compares held-out losses too
    rep = json.loads((d/'metrics/report.json').read_text())
    assert {c['benchmark'] for c in rep['comparisons'] if c['metric'] == 'held-out action loss'} == {
        'libero_libero_10', 'simpler_bridge', 'calvin'}, [(c['benchmark'], c['metric']) for c in rep['comparisons']]
