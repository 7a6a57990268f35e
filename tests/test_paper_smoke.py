"""The paper profile's code paths, end to end, on tiny inputs.

`profiles/paper.yaml` is run stage by stage (data, base_vlm, features, gap, estimator, ppl, select, midtrain,
ability, vla, eval, report) in a throwaway project:

- its eleven sources are written, a few rows each, at the paths the profile names and in the formats it names
  (LLaVA JSON and JSONL with image folders, Hugging Face datasets, LeRobot v3, LIBERO HDF5);
- tiny random-weight InternVL3.5 (`internvl`) and Qwen3-VL checkpoints are stored in bf16, as the hub's are; the
  selection runs in the InternVL feature space (`features.model`) and the Qwen3-VL is the base VLM that is
  mid-trained and fine-tuned (the paper's cross-backbone rows);
- one VLA per benchmark (LIBERO, SimplerEnv-Bridge, CALVIN), with each benchmark's chunk and gripper convention;
- LIBERO is evaluated for a few steps; SimplerEnv and CALVIN stop with the error that says what to install;
- every key the profile sets is read by the run, but `corpus.vla`: it is set because the eval stage tracks it,
  and only a metaworld benchmark reads it.

Only sizes are overridden (steps, batches, K, trials): the keys, formats, models' architectures and dtypes are the
profile's. About two minutes on the 2-core CPU machine."""
import json, os
from pathlib import Path

import pytest
import torch
import yaml

from paper_fixtures import REPO, tiny_checkpoints, write_sources


def weights_moved(a: Path, b: Path) -> bool:
    "Whether two checkpoints' weights differ (read with safetensors alone)."
    from safetensors.torch import load_file
    wa, wb = load_file(a/'model.safetensors'), load_file(b/'model.safetensors')
    return wa.keys() == wb.keys() and any(not torch.equal(wa[k].float(), wb[k].float()) for k in wa)


def profile_keys(raw: dict, model=None, prefix=()) -> set[tuple[str, str]]:
    "(section class, field) of every key `raw` sets, walking the params schema."
    from typing import get_args, get_origin
    from emt.params import Params, Section
    model = model or Params
    out = set()
    for k, v in raw.items():
        out.add((model.__name__, k))
        ann = model.model_fields[k].annotation
        cands = [a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, Section)]
        if isinstance(v, dict) and cands: out |= profile_keys(v, cands[0], prefix + (k,))
        if isinstance(v, list) and get_origin(ann) is list:
            inner = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, Section)]
            for item in v:
                if isinstance(item, dict) and inner: out |= profile_keys(item, inner[0], prefix + (k,))
    return out


@pytest.fixture()
def read_keys(monkeypatch):
    "(section class, field) of every params field the code reads, by attribute or by dumping a source or benchmark."
    from emt import params as pm
    seen = set()
    get = pm.Section.__getattribute__
    def getattribute(self, name):
        if not name.startswith('_') and name in type(self).model_fields: seen.add((type(self).__name__, name))
        return get(self, name)
    monkeypatch.setattr(pm.Section, '__getattribute__', getattribute)
    for cls in (pm.Source, pm.Benchmark):
        for meth in ('model_dump', 'model_dump_json'):
            orig = getattr(cls, meth)
            def dump(self, *a, _orig=orig, **k):
                seen.update((type(self).__name__, f) for f in type(self).model_fields)
                return _orig(self, *a, **k)
            monkeypatch.setattr(cls, meth, dump)
    return seen


def paper_project(d: Path) -> tuple[Path, dict]:
    "The paper profile with tiny sizes, its sources written where it names them, and tiny bf16 checkpoints."
    from emt.libero import libero_tasks
    raw = yaml.safe_load((REPO/'profiles/paper.yaml').read_text())
    task = libero_tasks('libero_10')[0]
    write_sources(raw, d)
    ck = tiny_checkpoints(d)
    recipe = lambda r, **k: {**r, 'steps': 2, 'global_batch': 4, 'micro_batch': 2,  # the profile's max_seq_len
                             'save_every': 1, **({'warmup_steps': 1} if 'warmup_steps' in r else {}), **k}
    raw['offline'] = True
    raw['require_gpu'] = False  # the paper's code paths on a CPU
    raw['processes'] = 1  # in the stage's own process (the rehearsal launches two processes under dvc repro)
    raw['vla'].update(jobs=1, processes=None)  # the VLAs too, one after another (the rehearsal runs two at once)
    raw['base_vlm'].update(model=str(ck['qwen3_vl']), arch='qwen3_vl')  # mid-trained, fine-tuned: Qwen3-VL ...
    raw['features']['model'] = str(ck['internvl'])   # ... on the mixture selected in InternVL's feature space
    raw['features'].update(batch_size=8, shard_size=8, num_workers=0)
    raw['gap'].update(per_source=6, permutations=5, tsne_perplexity=3.0)
    raw['estimator'].update(max_steps=10, batch_size=8, eval_every=2, seeds=2, distance_vla_samples=20)
    raw['ppl']['steps'] = 1
    raw['select']['k'] = 20
    raw['midtrain']['recipe'] = recipe(raw['midtrain']['recipe'])
    raw['ability'].update(per_source=2, max_new_tokens=4)
    raw['vla'].update(head_hidden=16, heldout_max=8, recipe=recipe(raw['vla']['recipe']))
    raw['eval'].update(workers=1, videos_per_task=1)
    for b in raw['eval']['benchmarks']:
        b.update(trials=1, max_steps=3, image_size=32, **({'tasks': [task]} if b['name'] == 'libero' else {}))
    (d/'params.yaml').write_text(yaml.safe_dump(raw, sort_keys=False))
    return d/'params.yaml', raw


@pytest.mark.skipif(os.environ.get('EMT_SKIP_PAPER_SMOKE') == '1', reason='EMT_SKIP_PAPER_SMOKE=1')
def test_paper_profile_runs_every_stage_on_tiny_inputs(tmp_path, read_keys, monkeypatch):
    from emt.core import EmtError, project_at
    from emt.params import load_params
    path, raw = paper_project(tmp_path)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with project_at(tmp_path):
        read_keys.clear()  # from here on: what loading and the stages read
        P = load_params(path)
        from emt.data import run_data
        from emt.base_vlm import run_base_vlm
        from emt.features import run_features
        from emt.gap import run_gap
        from emt.estimator import run_estimator
        from emt.ppl import run_ppl
        from emt.select import run_select
        from emt.midtrain import run_midtrain
        from emt.ability import run_ability
        from emt.vla import run_vla
        from emt.evaluation import run_eval
        from emt.report import run_report
        data = run_data(P)
        assert set(data['sources']) == {s['name'] for s in raw['data']['vlm_sources'] + raw['data']['vla_sources']}
        base = run_base_vlm(P, num_workers=0)
        assert base['arch'] == 'qwen3_vl'
        run_features(P)
        assert json.loads((tmp_path/'artifacts/features/laion400m/manifest.json').read_text())['model'].endswith('InternVL3_5-tiny')
        run_gap(P)
        est = run_estimator(P)
        assert est['topk_jaccard']['seeds'] == 2
        run_ppl(P, num_workers=0)
        sel = run_select(P)
        assert set(sel['methods']) == set(raw['select']['methods'])
        assert (tmp_path/'artifacts/select/estimator/sharegpt').is_dir()
        mid = run_midtrain(P, num_workers=0)
        assert set(mid['methods']) == set(raw['midtrain']['methods'])
        cfg = json.loads((tmp_path/'artifacts/midtrain/estimator/config.json').read_text())
        assert cfg['model_type'] == 'qwen3_vl'
        for m, r in mid['methods'].items():  # the hub-style template's replies were found and trained on
            assert r['first_loss'] > 0 and r['final_loss'] > 0, (m, r)
        assert weights_moved(Path(raw['base_vlm']['model']), tmp_path/'artifacts/midtrain/estimator')
        ab = run_ability(P)
        assert list(ab['scores']) == ['base', *raw['midtrain']['methods']]
        assert all(v in ab['table'][0] for v in ab['scores']) and set(ab['priors']) == set(ab['questions'])
        vla = run_vla(P, inits=['base', 'estimator'], num_workers=0)
        runs = {(r['benchmark'], r['init']): r for r in vla['runs'].values()}
        assert {b for b, _ in runs} == {'libero', 'simpler_bridge', 'calvin'}
        assert vla['configs']['calvin']['chunk'] == 10 and vla['configs']['libero']['chunk'] == 4
        assert {b: runs[(b, 'base')]['gripper'] for b in ('libero', 'simpler_bridge', 'calvin')} == \
            {'libero': 'close_positive', 'simpler_bridge': 'bridge', 'calvin': 'open_positive'}
        by_bench = lambda bench: override_eval(P, bench)
        ev = run_eval(by_bench('libero'))
        libero = [k for k in ev['results'] if '/libero/' in k]
        assert libero and all(ev['results'][k]['libero_libero_10']['episodes'] == 1 for k in libero)
        assert not any('/calvin/' in k or '/simpler_bridge/' in k for k in ev['results'])  # each VLA on its own benchmark
        for bench, hint in (('simpler_bridge', 'simpler'), ('calvin', 'calvin')):
            with pytest.raises(EmtError, match=f'(?i)install.*{hint}|{hint}.*install'): run_eval(by_bench(bench))
        rep = run_report(P)
        assert rep['verdicts'] and (tmp_path/'tables/report_findings.md').is_file()
    missing = sorted(profile_keys(raw) - read_keys - {('Corpus', 'vla')})
    assert not missing, f'keys of profiles/paper.yaml that no stage read: {missing}'


def override_eval(P, bench: str):
    "P with only `bench` among eval.benchmarks (each VLA is evaluated on its own benchmark)."
    from emt.params import override
    return override(P, 'eval', benchmarks=[b.model_dump() for b in P.eval.benchmarks if b.name == bench])
