"""The release converters on fixtures written in each release's own layout (`release_fixtures.py` says where each
layout comes from): what they keep, what they leave out and count, and the errors a user meets."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emt.core import DataError, EmtError
from emt.samples import load_source, read_hf, read_lerobot
from emt.release import convert, convert_lerobot_v2
from release_fixtures import (write_embspatial, write_img2dataset, write_lerobot_v2, write_refspatial,
                              write_robo2vlm, write_vcr)


def test_img2dataset_both_layouts_give_the_same_samples(tmp_path):
    got = {}
    for fmt in ('webdataset', 'parquet'):
        out, skipped = convert('img2dataset', write_img2dataset(tmp_path/fmt, n=7, output_format=fmt, failed=2),
                               tmp_path/f'{fmt}-hf', source='cc12m')
        ds, _ = load_source({'name': 'cc12m', 'format': 'hf', 'path': str(out)}, cache_dir=tmp_path/'c')
        got[fmt] = [(s['id'], s['messages'][1]['content'], np.asarray(s['images'][0]).tobytes()) for s in ds]
        assert len(ds) == 5
    assert got['webdataset'] == got['parquet']
    assert skipped.counts == {'not downloaded': 2}  # the parquet layout keeps failed rows, with no image


def test_a_broken_shard_is_counted_not_fatal(tmp_path):
    src = write_img2dataset(tmp_path/'w', n=6, shards=2, failed=0)
    data = (src/'00001.tar').read_bytes(); (src/'00001.tar').write_bytes(data[:700])  # truncated mid-member
    out, skipped = convert('img2dataset', src, tmp_path/'hf')
    assert len(read_hf(out)[0]) == 3 and 'unreadable file' in skipped.counts
    assert str(src/'00001.tar') in skipped.to_markdown()


def test_a_conversion_that_keeps_nothing_is_an_error(tmp_path):
    src = write_img2dataset(tmp_path/'w', n=2, shards=1, failed=2, output_format='parquet')
    with pytest.raises(EmtError, match=r"no sample could be converted \(2 left out: \{'not downloaded': 2\}\)"):
        convert('img2dataset', src, tmp_path/'hf')
    assert not (tmp_path/'hf').exists()


def test_vcr_references_boxes_and_labels(tmp_path):
    root = write_vcr(tmp_path/'vcr', n=4)
    out, _ = convert('vcr', root/'train.jsonl', tmp_path/'hf', images=root/'vcr1images')
    ds, _ = read_hf(out, 'vcr')
    rows = [json.loads(l) for l in (root/'train.jsonl').read_text().splitlines()]
    for s, r in zip(ds, rows):
        q, a, why, b = (m['content'] for m in s['messages'])
        assert 'person2' in q and 'person2 [0.50, 0.12, 0.96, 0.92]' in q  # reference [1], box / (48, 48)
        assert a.startswith('ABCD'[r['answer_label']] + '. ') and b.startswith('ABCD'[r['rationale_label']] + '. ')
    (root/'vcr1images'/rows[2]['img_fn']).unlink()
    out, skipped = convert('vcr', root/'train.jsonl', tmp_path/'hf2', images=root/'vcr1images')
    assert len(read_hf(out)[0]) == 3 and sum(skipped.counts.values()) == 1
    assert 'row 2' in skipped.to_markdown() or '| 2 |' in skipped.to_markdown()


def test_refspatial_keeps_every_turn_and_drops_depth(tmp_path):
    root = write_refspatial(tmp_path/'rs', n=3)
    out, _ = convert('refspatial', root/'2D/choice_qa.json', tmp_path/'hf', images=root/'2D/image')
    ds, _ = read_hf(out, 'refspatial')
    s = ds[2]
    assert [m['role'] for m in s['messages']] == ['user', 'assistant'] * 2 and len(s['images']) == 1
    assert s['messages'][0]['content'].startswith('<image>\nPoint to the cup') and '<depth>' not in s['messages'][0]['content']
    assert s['messages'][1]['content'] == '[(0.300, 0.412)]'
    with pytest.raises(DataError, match='extract the archive parts first'):
        convert('refspatial', root/'2D/choice_qa.json', tmp_path/'hf2', images=root/'2D/missing')


def test_embspatial_and_robo2vlm(tmp_path):
    out, _ = convert('embspatial', write_embspatial(tmp_path/'es', n=4)/'embspatial_sft.json', tmp_path/'es-hf')
    ds, _ = read_hf(out, 'embspatial')
    assert [s['messages'][1]['content'] for s in ds][:2] == ['The toilet is left of the cabinet.',
                                                             'The toilet is right of the cabinet.']
    out, _ = convert('robo2vlm', write_robo2vlm(tmp_path/'r2', n=4), tmp_path/'r2-hf')
    ds, _ = read_hf(out, 'robo2vlm')
    assert [s['messages'][1]['content'] for s in ds] == ['A. yes', 'B. no'] * 2
    assert ds[0]['messages'][0]['content'] == '<image>\nIs the gripper open?\nA. yes\nB. no'


def test_lerobot_v2_videos_are_linked_and_read_back(tmp_path):
    g = np.random.default_rng(0)
    eps = [g.normal(size=(4 + e, 7)).astype(np.float32) for e in range(3)]
    src = write_lerobot_v2(tmp_path/'v2', eps, 'observation.images.image_0', tasks=('a', 'b'))
    dst = convert_lerobot_v2(src, tmp_path/'v3')
    v2 = src/'videos/chunk-000/observation.images.image_0/episode_000002.mp4'
    v3 = dst/'videos/observation.images.image_0/chunk-000/file-002.mp4'
    assert os.stat(v2).st_ino == os.stat(v3).st_ino  # linked, not re-encoded
    ds, _ = read_lerobot(dst, chunk=3, camera='observation.images.image_0')
    assert len(ds) == sum(map(len, eps)) and [s['instruction'] for s in ds][4] == 'b'
    np.testing.assert_allclose(np.array(ds[4]['actions']), eps[1][:3], rtol=1e-6)
    meta = pq.read_table(dst/'meta/episodes/chunk-000/file-000.parquet').to_pylist()
    assert [(m['dataset_from_index'], m['dataset_to_index']) for m in meta] == [(0, 4), (4, 9), (9, 15)]


def test_lerobot_v2_errors_name_the_file(tmp_path):
    eps = [np.zeros((4, 7), np.float32)] * 2
    src = write_lerobot_v2(tmp_path/'v2', eps, 'observation.images.top', video=False, version='v2.1')
    (src/'data/chunk-000/episode_000001.parquet').unlink()
    with pytest.raises(DataError, match='data file not found') as e:
        convert_lerobot_v2(src, tmp_path/'v3')
    assert 'episode_000001.parquet' in str(e.value) and not (tmp_path/'v3').exists()


def test_emt_convert_command(tmp_path):
    root = write_vcr(tmp_path/'vcr', n=2)
    emt = [str(Path(sys.executable).parent/'emt')]
    env = {**os.environ, 'EMT_PROGRESS': '0'}
    r = subprocess.run(emt + ['convert', 'vcr', str(root/'train.jsonl'), str(tmp_path/'hf')], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and 'give the image folder (--images)' in r.stderr, r.stderr
    r = subprocess.run(emt + ['convert', 'vcr', str(root/'train.jsonl'), str(tmp_path/'hf'), '--images',
                              str(root/'vcr1images')], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith(f'vcr: {tmp_path/"hf"}'), (r.stdout, r.stderr)
    assert len(read_hf(tmp_path/'hf')[0]) == 2
