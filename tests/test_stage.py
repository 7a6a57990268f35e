"""A failed stage loses nothing, under `dvc repro` on a fresh clone: each failure a careless user makes (a typo'd key in
any section, a source path that does not exist, a changed corpus, a broken file the stage itself trips on) stops the
stage with a message that names the key, path or file, and every output of the previous run is still there, byte for
byte, git-tracked and DVC-cached alike. A successful run writes the stage's summary metrics."""
import hashlib, json, os, subprocess, sys
from pathlib import Path

import pytest
import yaml

from emt.stage import leaves, stage_spec

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'PATH': f"{BIN}:{os.environ['PATH']}", 'HF_HUB_OFFLINE': '1', 'EMT_PROGRESS': '0'}
ENV.pop('EMT_ROOT', None)


def sh(cmd, cwd, ok=True, env=None, timeout=900):
    r = subprocess.run(cmd, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout,
                       shell=True)
    if ok: assert r.returncode == 0, f'{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r


def snapshot(d: Path) -> dict[str, str]:
    "md5 of every file of every output the data stage declares."
    out = {}
    for o in stage_spec('data').outs:
        p = d/o
        if not p.exists(): continue
        files = sorted(f for f in p.rglob('*') if f.is_file()) if p.is_dir() else [p]
        for f in files: out[f.relative_to(d).as_posix()] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope='module')
def ran(tmp_path_factory):
    "A fresh clone whose data stage ran once through `dvc repro`, and the md5 of its outputs."
    if not (ROOT/'.git').exists(): pytest.skip('not a git checkout')
    d = tmp_path_factory.mktemp('stage')/'emt'
    sh(f'git clone -q --no-hardlinks "{ROOT}" "{d}"', ROOT)
    sh('dvc repro --pull data', d)
    before = snapshot(d)
    assert len(before) > 10 and 'metrics/summary/data.json' in before, sorted(before)
    return d, before


def edit_params(d: Path, fn) -> str:
    old = (d/'params.yaml').read_text()
    p = yaml.safe_load(old); fn(p)
    (d/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    return old


def failed_untouched(d: Path, before: dict, r) -> str:
    "The run failed, and every output of the previous run is as it was; the run's message."
    assert r.returncode != 0, r.stdout[-2000:]
    assert snapshot(d) == before
    assert not (d/'.emt'/'backup'/'data').exists()
    return r.stdout + r.stderr


def test_summary_metrics_are_small(ran):
    d, _ = ran
    s = json.loads((d/'metrics/summary/data.json').read_text())
    record = json.loads((d/'metrics/data.json').read_text())
    assert s == {'samples_vlm': sum(v['samples'] for v in record['sources'].values() if v['group'] != 'vla'),
                 'samples_vla': record['sources']['metaworld_mt10']['samples'], 'skipped': 0}, s
    shown = json.loads(sh('dvc metrics show --json', d).stdout)
    files = next(iter(shown.values()))['data']
    assert all(f.startswith('metrics/summary/') for f in files), set(files)  # full records are plain outputs
    assert len(leaves(files['metrics/summary/data.json']['data'])) == 3


def test_a_typo_in_any_section_stops_before_anything(ran):
    d, before = ran
    old = edit_params(d, lambda p: p['gap'].update(permutatons=10))
    try: out = failed_untouched(d, before, sh('dvc repro -f data', d, ok=False))
    finally: (d/'params.yaml').write_text(old)
    assert 'permutatons' in out and 'gap' in out, out[-2000:]
    assert not (d/'_runs'/'failed').exists()  # nothing ran
    assert 'up to date' in sh('dvc status data', d).stdout.lower()


def test_a_missing_source_path_is_named(ran):
    d, before = ran
    old = edit_params(d, lambda p: p['data']['vlm_sources'][1].update(path='data/vlm/no_such_source'))
    try: out = failed_untouched(d, before, sh('dvc repro data', d, ok=False))
    finally: (d/'params.yaml').write_text(old)
    assert 'data.vlm_sources[1]' in out and 'data/vlm/no_such_source' in out, out[-2000:]


def test_a_changed_corpus_is_refused_and_restorable(ran):
    d, before = ran
    f = d/'data'/'vlm'/'dense_captions'/'data-00000-of-00001.arrow'
    f.write_bytes(f.read_bytes()[:len(f.read_bytes())//2])  # a truncated file, as a failed copy leaves it
    out = failed_untouched(d, before, sh('dvc repro data', d, ok=False))
    assert 'data/vlm/dense_captions/data-00000-of-00001.arrow' in out and 'git checkout data.dvc' in out, out[-2000:]
    # the stage itself trips on the file when told the change is wanted; the previous outputs still survive
    out = failed_untouched(d, before, sh('dvc repro data', d, ok=False, env={'EMT_CORPUS_CHANGE': '1'}))
    assert 'dense_captions' in out and (d/'_runs'/'failed'/'02b_data.ipynb').exists(), out[-2000:]
    sh('git checkout data.dvc && dvc checkout --force data.dvc', d)  # the restore the message gives
    assert 'up to date' in sh('dvc status data', d).stdout.lower()
    assert snapshot(d) == before


def test_a_run_killed_midway_is_undone_by_the_next(ran):
    "Outputs a killed run left in .emt/backup are put back by the next run of the stage, before its checks."
    d, before = ran
    killed = ("import os, signal; from emt.stage import outputs_kept, stage_spec\n"
              "cm = outputs_kept(stage_spec('data')); cm.__enter__()\n"  # outputs moved aside, a file half written, then kill -9
              "open('metrics/data.json', 'w').write('{\"half\": true}'); os.kill(os.getpid(), signal.SIGKILL)")
    assert sh(f'python -c "{killed}"', d, ok=False).returncode in (-9, 137)  # shell: 128 + SIGKILL
    assert (d/'.emt'/'backup'/'data').is_dir()
    assert snapshot(d) != before
    old = edit_params(d, lambda p: p['gap'].update(permutatons=10))
    try: out = failed_untouched(d, before, sh('dvc repro -f data', d, ok=False))
    finally: (d/'params.yaml').write_text(old)
    assert 'putting back' in out and 'permutatons' in out, out[-2000:]


def test_dvc_metrics_show_of_the_committed_run_is_readable(ran):
    "`dvc metrics show` on the committed outputs: every stage's summary, tens of numbers in all."
    d, _ = ran
    shown = json.loads(sh('dvc metrics show --json', d).stdout)
    files = next(iter(shown.values()))['data']
    assert {f'metrics/summary/{s}.json' for s in yaml.safe_load((ROOT/'dvc.yaml').read_text())['stages']} == set(files)
    n = sum(len(leaves(v['data'])) for v in files.values())
    assert 30 <= n <= 100, n
    text = sh('dvc metrics show', d).stdout  # one row per stage (918 KB and 1,280 numbers with the full records)
    assert len(text) < 20_000 and len(text.splitlines()) == len(files) + 1, len(text)
