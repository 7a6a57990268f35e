"The features stage on a real toy project: resume after SIGKILL, 2 processes, bad inputs."
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['EMT_PROGRESS'] = '0'

from emt.backbones import save_vlm, tiny_vlm, train_tokenizer
from emt.core import DataError, EmtError
from emt.samples import samples_to_dataset, save_dataset
from emt.features import load_features, read_manifest, read_shard, run_features
from emt.params import load_params, override
from emt.fixtures import toy_png_bytes

MAIN = Path(__file__).resolve().parents[1]
SOURCES = {'pics': ('vlm', 10), 'frames': ('vla', 7)}  # shard_size 4: 3 + 2 shards


def vlm_sample(i, answer='a small dog on the grass'):
    return {'id': f'pics/{i:04d}', 'source': 'pics', 'images': [{'bytes': toy_png_bytes(i, (20, 16)), 'path': None}],
            'messages': [{'role': 'user', 'content': '<image>\nWhat is in the picture?'},
                         {'role': 'assistant', 'content': answer * (1 + i % 3)}], 'meta': '{}'}


def vla_sample(i):
    return {'id': f'frames/ep000/f{i:04d}', 'source': 'frames',
            'images': [{'bytes': toy_png_bytes(100 + i), 'path': None}], 'instruction': 'pick up the red block',
            'actions': [[0.0] * 4] * 2, 'action_is_pad': [False, False], 'episode_index': 0, 'frame_index': i,
            'task': 'pick', 'meta': '{}'}


def write_params(proj: Path, names=('pics', 'frames'), **features):
    raw = yaml.safe_load((MAIN/'params.yaml').read_text())
    src = lambda n, g: {'name': n, 'format': 'hf', 'path': f'data/{n}', 'group': g}
    raw['data']['vlm_sources'] = [src(n, 'general') for n in names if SOURCES.get(n, ('vlm',))[0] == 'vlm']
    raw['data']['vla_sources'] = [src(n, 'vla') for n in names if SOURCES.get(n, ('vlm',))[0] == 'vla']
    raw['features'].update({'shard_size': 4, 'batch_size': 2, 'max_seq_len': 64, **features})
    (proj/'params.yaml').write_text(yaml.safe_dump(raw))


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    "A project with a tiny InternVL checkpoint and two stored sources."
    proj = tmp_path_factory.mktemp('proj')
    write_params(proj)
    tok = train_tokenizer(['pick up the red block', 'a small dog on the grass', 'what is in the picture?'] * 20, 400)
    model, processor = tiny_vlm('internvl', tok, hidden_size=32, layers=2, heads=2, vision_hidden_size=32,
                                vision_layers=1, image_size=32, patch_size=8)
    save_vlm(model, processor, proj/'artifacts/base_vlm')
    save_dataset(samples_to_dataset([vlm_sample(i) for i in range(10)], 'vlm'), proj/'artifacts/data/pics')
    save_dataset(samples_to_dataset([vla_sample(i) for i in range(7)], 'vla'), proj/'artifacts/data/frames')
    return proj


@pytest.fixture
def in_project(project, monkeypatch):
    monkeypatch.setenv('EMT_ROOT', str(project))
    return project


def shard_files(folder: Path) -> dict:
    return {f'{p.parent.name}/{p.name}': p for p in sorted(folder.glob('*/shard-*.safetensors'))}


def stat_key(p: Path):
    s = p.stat()
    return s.st_ino, s.st_mtime_ns


SLOW_RUN = textwrap.dedent('''
    import sys, time
    import emt.features as F
    write = F.write_shard
    def slow_write(*a, **k):  # a shard a second: time to kill the stage between two shards
        out = write(*a, **k); time.sleep(1.0); return out
    F.write_shard = slow_write
    from emt.params import load_params
    F.run_features(load_params(), out=sys.argv[1], num_workers=1)
''')


def test_resume_after_sigkill_recomputes_nothing_done(in_project, tmp_path):
    proj = in_project
    ref = run_features(load_params(), out='artifacts/ref', num_workers=1)  # uninterrupted, with a worker
    env = {**os.environ, 'EMT_ROOT': str(proj)}
    p = subprocess.Popen([sys.executable, '-c', SLOW_RUN, 'artifacts/killed'], env=env, cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = proj/'artifacts/killed'
    deadline = time.time() + 60
    while len(shard_files(out)) < 2 and p.poll() is None and time.time() < deadline: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    done = shard_files(out)
    assert 2 <= len(done) < 5, (len(done), p.stderr.read().decode()[-2000:])
    assert not any(out.glob('*/manifest.json'))  # an interrupted stage has no manifest
    before = {n: stat_key(f) for n, f in done.items()}

    m = run_features(load_params(), out='artifacts/killed', num_workers=0)
    after = shard_files(out)
    assert {n: stat_key(after[n]) for n in before} == before  # done shards were not rewritten
    n_done = sum(len(read_shard(f)[0]) for f in done.values())
    assert m['total']['computed_samples'] == 17 - n_done
    assert sorted(after) == sorted(shard_files(proj/'artifacts/ref'))
    for name in after:  # the same bytes as the uninterrupted run
        assert after[name].read_bytes() == (proj/'artifacts/ref'/name).read_bytes()
    assert not [p for p in out.rglob('.*') if p.name.endswith('.tmp')]  # leftovers of the kill are cleaned
    assert ref['total']['samples'] == m['total']['samples'] == 17


TWO_PROCS = textwrap.dedent('''
    import sys
    from emt.features import run_features
    from emt.params import load_params
    run_features(load_params(), out=sys.argv[1], num_workers=0)
''')


def test_two_processes_write_the_features_of_one(in_project, tmp_path):
    proj = in_project
    one = run_features(load_params(), out='artifacts/one', num_workers=0)
    script = tmp_path/'two.py'; script.write_text(TWO_PROCS)
    accelerate = Path(sys.executable).parent/'accelerate'
    r = subprocess.run([str(accelerate), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1',
                        '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', '29533',
                        str(script), 'artifacts/two'], env={**os.environ, 'EMT_ROOT': str(proj)},
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    two = json.loads((proj/'metrics/features.json').read_text())
    assert two['total']['computed_samples'] == 17  # both processes' samples counted
    main_shards = sum(s['computed_shards_main_process'] for s in two['sources'].values())
    assert 0 < main_shards < 5  # the work was split
    for source in SOURCES:
        ids1, x1 = load_features(source, root='artifacts/one')
        ids2, x2 = load_features(source, root='artifacts/two')
        assert ids1 == ids2
        np.testing.assert_allclose(np.asarray(x1, np.float32), np.asarray(x2, np.float32), atol=2e-3)
    assert one['total']['samples'] == 17


def test_the_stage_launches_itself_on_its_processes(in_project):
    "processes: 2 in params: the stage's own call (one process, as papermill runs it) launches itself on two."
    one = run_features(load_params(), out='artifacts/one', num_workers=0)
    P = load_params().model_copy(update={'processes': 2})
    two = run_features(P, out='artifacts/staged', num_workers=0)
    assert two['total']['computed_samples'] == 17
    assert 0 < sum(s['computed_shards_main_process'] for s in two['sources'].values()) < 5  # split over two processes
    for source in SOURCES:
        ids1, x1 = load_features(source, root='artifacts/one')
        ids2, x2 = load_features(source, root='artifacts/staged')
        assert ids1 == ids2
        np.testing.assert_allclose(np.asarray(x1, np.float32), np.asarray(x2, np.float32), atol=2e-3)
    assert one['total']['samples'] == 17


def test_features_in_dataset_order_with_dim(in_project):
    m = run_features(load_params(), out='artifacts/order', num_workers=0)
    ids, x = load_features('pics', root='artifacts/order')
    assert ids == [f'pics/{i:04d}' for i in range(10)]
    assert x.shape == (10, 32) and x.dtype == np.float16 and m['dim'] == 32
    assert np.isfinite(np.asarray(x, np.float32)).all()
    man = read_manifest('frames', root='artifacts/order')
    assert [s['rows'] for s in man['shards']] == [[0, 4], [4, 7]]


def test_missing_or_non_vlm_checkpoint_is_named(in_project):
    with pytest.raises(EmtError, match=r'needs the base VLM.*nowhere.*does not exist'):
        run_features(load_params(), model=in_project/'artifacts/nowhere')
    # a relative name under a local folder is a local path: named as missing, never looked up on the hub
    with pytest.raises(EmtError, match=r'needs the base VLM.*artifacts/nowhere.*does not exist'):
        run_features(load_params(), model='artifacts/nowhere')
    # an org/name whose first part is no local folder is taken for a hub id: the error says it is neither
    with pytest.raises(EmtError, match=r'(?s)needs the base VLM.*someorg/nowhere.*cached locally.*local checkpoint directory'):
        run_features(load_params(), model='someorg/nowhere')
    bad = in_project/'artifacts/not_a_vlm'; bad.mkdir(parents=True, exist_ok=True)
    (bad/'config.json').write_text(json.dumps({'model_type': 'bert'}))
    with pytest.raises(EmtError, match=r"not_a_vlm.*'bert'.*not supported"):
        run_features(load_params(), model='artifacts/not_a_vlm')


def test_empty_source_is_named(in_project):
    save_dataset(samples_to_dataset([], 'vlm'), in_project/'artifacts/data/empty')
    SOURCES['empty'] = ('vlm', 0)
    try:
        write_params(in_project, names=('pics', 'empty', 'frames'))
        # named by its folder; the data layer now reports the 0-row store `datasets` cannot load as unreadable
        with pytest.raises(DataError, match=r"data/empty.*(source 'empty' has no samples|unreadable file)"):
            run_features(load_params(), out='artifacts/empty_run')
    finally:
        del SOURCES['empty']; write_params(in_project)


@pytest.fixture
def broken_source(in_project):
    "A source with an unreadable image (row 2) and an over-long answer (row 3)."
    rows = [vlm_sample(i) for i in range(5)]
    rows[2]['images'] = [{'bytes': b'this is not an image', 'path': None}]
    rows[3]['messages'][1]['content'] = 'a very long answer ' * 200
    save_dataset(samples_to_dataset(rows, 'vlm'), in_project/'artifacts/data/broken')
    SOURCES['broken'] = ('vlm', 5)
    yield in_project
    del SOURCES['broken']; write_params(in_project)


def test_unreadable_image_raises_with_its_id(broken_source):
    write_params(broken_source, names=('broken', 'frames'))
    with pytest.raises(DataError, match=r"'pics/0002', field 'images'.*cannot be read"):
        run_features(load_params(), out='artifacts/broken_raise', num_workers=0)


def test_skip_counts_and_lists_bad_rows_and_truncates_long_text(broken_source):
    write_params(broken_source, names=('broken', 'frames'))
    P = override(load_params(), 'data', on_error='skip')
    m = run_features(P, out='artifacts/broken_skip', num_workers=0)
    s = m['sources']['broken']
    assert (s['samples'], s['skipped'], s['skipped_ids']) == (4, 1, ['pics/0002'])
    ids, x = load_features('broken', root='artifacts/broken_skip')
    assert ids == ['pics/0000', 'pics/0001', 'pics/0003', 'pics/0004']  # the over-long row is kept, cut to 64 tokens
    assert np.isfinite(np.asarray(x, np.float32)).all()


def test_max_seq_len_below_the_image_tokens_stops_before_any_shard(in_project):
    "A limit too short for an image stops the stage at its start, naming the key, before any shard is written."
    P = override(load_params(), 'features', max_seq_len=3)
    with pytest.raises(EmtError, match=r'features.max_seq_len=3 is too short.*Raise features.max_seq_len'):
        run_features(P, out='artifacts/short', num_workers=0)
    assert not (in_project/'artifacts/short').exists() or not shard_files(in_project/'artifacts/short')


def test_params_change_recomputes_stale_shards(in_project):
    run_features(load_params(), out='artifacts/stale', num_workers=0)
    m = run_features(override(load_params(), 'features', pooling='last'), out='artifacts/stale', num_workers=0)
    assert m['total']['computed_samples'] == 17
    assert read_manifest('pics', root='artifacts/stale')['pooling'] == 'last'
    m = run_features(override(load_params(), 'features', pooling='last', shard_size=8), out='artifacts/stale',
                     num_workers=0)
    assert len(shard_files(in_project/'artifacts/stale')) == 3  # 2 + 1 shards; the old ones removed
