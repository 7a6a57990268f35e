"Readers and writers of emt.samples on files in their real formats, round trips, and every bad-input case."
import io, json, os, re, sys
from pathlib import Path

import h5py
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from emt.core import DataError, EmtError
from emt.samples import (load_dataset_dir, load_source, read_hf, read_lerobot, read_libero_hdf5, read_llava,
                      samples_to_dataset, save_dataset, Skipped, validate, write_hf, write_llava, write_sharegpt)
from emt.fixtures import write_toy_lerobot

os.environ['HF_HUB_OFFLINE'] = '1'


# ---------------------------------------------------------------- helpers: real files in the real formats

def rgb(seed, w=8, h=6):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)

def save_img(path, arr, fmt='PNG'):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(arr).save(path, format=fmt)
    return path

def pixels(img):
    return np.asarray(img.convert('RGB'))

def turn(frm, value): return {'from': frm, 'value': value}

def llava_rows(n=3):
    "n LLaVA rows: an image row, a text-only row, a two-image row, ..."
    rows = []
    for i in range(n):
        if i % 3 == 0: rows.append({'id': f'r{i}', 'image': f'img/{i}.png',
                                    'conversations': [turn('human', '<image>\nWhat is shown?'), turn('gpt', f'A{i}')]})
        elif i % 3 == 1: rows.append({'id': f'r{i}', 'conversations': [turn('system', 'Be brief.'),
                                                                        turn('human', 'Hi?'), turn('gpt', f'A{i}')]})
        else: rows.append({'id': f'r{i}', 'images': [f'img/{i}a.png', f'img/{i}b.png'], 'box': [1, 2, 3, 4],
                           'conversations': [turn('human', '<image><image>\nSame?'), turn('gpt', f'A{i}')]})
    return rows

def write_llava_files(d, rows, jsonl=True, name='chat'):
    "Write rows (JSONL or JSON list) and every image they reference; return the data file."
    for r in rows:
        for rel in ([r['image']] if 'image' in r else r.get('images', [])):
            save_img(d/rel, rgb(hash(rel) % 1000))
    if jsonl:
        f = d/f'{name}.jsonl'
        f.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    else:
        f = d/f'{name}.json'
        f.write_text(json.dumps(rows, indent=1))
    return f

def assert_located(e, file, row, field):
    "The error names the file, the row (or key) and the field."
    msg = str(e.value)
    assert str(file) in msg, msg
    assert str(row) in msg, msg
    assert f"field '{field}'" in msg, msg
    assert e.value.row == row and e.value.field == field


# ---------------------------------------------------------------- LLaVA

def test_llava_jsonl_and_json_read_every_row_kind(tmp_path):
    rows = llava_rows(3)
    for jsonl in (True, False):
        f = write_llava_files(tmp_path, rows, jsonl=jsonl)
        ds, sk = read_llava(f, source='chat', cache_dir=tmp_path/'cache')
        assert ds['id'] == ['chat/r0', 'chat/r1', 'chat/r2'] and len(sk) == 0
        assert [len(x) for x in ds['images']] == [1, 0, 2]
        assert ds[1]['messages'][0] == {'role': 'system', 'content': 'Be brief.'}
        assert ds[0]['messages'][1] == {'role': 'assistant', 'content': 'A0'}
        assert json.loads(ds[2]['meta']) == {'box': [1, 2, 3, 4]}
        np.testing.assert_array_equal(pixels(ds[2]['images'][1]), np.asarray(PIL.Image.open(tmp_path/'img/2b.png')))

def test_llava_relative_paths_resolve_from_project_root(tmp_project):
    write_llava_files(tmp_project/'data', llava_rows(1))
    ds, _ = read_llava('data/chat.jsonl', image_root='data', cache_dir=tmp_project/'cache')
    assert ds['source'] == ['chat']

@pytest.mark.parametrize('case', ['missing_file', 'corrupt', 'malformed', 'no_conversations', 'duplicate'])
def test_llava_bad_rows_raise_located_or_are_skipped(tmp_path, case):
    rows = llava_rows(4)  # r0 image, r1 text, r2 two images, r3 image
    f = write_llava_files(tmp_path, rows)
    lines = f.read_text().splitlines()
    if case == 'missing_file':
        (tmp_path/'img/3.png').unlink(); row, field, reason = 'line 4', 'image', 'missing image file'
    elif case == 'corrupt':
        (tmp_path/'img/2b.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated'); row, field, reason = 'line 3', 'images', 'corrupt image'
    elif case == 'malformed':
        lines[1] = lines[1][:-5]; row, field, reason = 'line 2', 'json', 'malformed JSON line'
    elif case == 'no_conversations':
        lines[1] = json.dumps({'id': 'r1', 'image': 'img/0.png'}); row, field, reason = 'line 2', 'conversations', 'missing field'
    else:
        lines[2] = json.dumps({**rows[2], 'id': 'r0'}); row, field, reason = 'line 3', 'id', 'duplicate id'
    f.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataError) as e: read_llava(f, cache_dir=tmp_path/'c')
    assert_located(e, f, row, field)
    ds, sk = read_llava(f, on_error='skip', cache_dir=tmp_path/'c')
    assert len(ds) == 3 and len(sk) == 1
    assert sk.counts == {reason: 1}
    assert sk.rows[0]['row'] == row and sk.rows[0]['field'] == field and sk.rows[0]['file'] == str(f)
    assert sk.to_dict()['by_reason'] == {reason: 1} and reason in sk.to_markdown()

def test_llava_json_list_errors_name_the_index(tmp_path):
    rows = llava_rows(3); del rows[1]['conversations']
    f = write_llava_files(tmp_path, rows, jsonl=False)
    with pytest.raises(DataError) as e: read_llava(f, cache_dir=tmp_path/'c')
    assert_located(e, f, 1, 'conversations')
    f.write_text(f.read_text()[:-3])
    with pytest.raises(DataError, match='malformed JSON') as e: read_llava(f, cache_dir=tmp_path/'c')
    assert str(f) in str(e.value) and e.value.field == 'json'

def test_empty_source_is_an_error_with_either_policy(tmp_path):
    f = tmp_path/'empty.jsonl'; f.write_text('\n')
    for policy in ('raise', 'skip'):
        with pytest.raises(DataError, match="source 'empty'.*no rows") as e:
            read_llava(f, on_error=policy, cache_dir=tmp_path/'c')
        assert str(f) in str(e.value)
    f.write_text('{"id": 1}\n{"id": 2}\n')  # every row bad
    with pytest.raises(DataError, match=r"all 2 rows were bad \({'missing field': 2}\)"):
        read_llava(f, on_error='skip', cache_dir=tmp_path/'c')


# ---------------------------------------------------------------- writers and round trips

@pytest.fixture
def mixture(tmp_path):
    "A VLM mixture from two sources, with a JPEG, PNGs, a text-only and a two-image sample."
    f = write_llava_files(tmp_path/'src', llava_rows(3))
    ds, _ = read_llava(f, source='web', cache_dir=tmp_path/'cache')
    save_img(tmp_path/'src'/'j.jpg', rgb(7, 16, 16), 'JPEG')
    (tmp_path/'src'/'robo.jsonl').write_text(json.dumps(
        {'id': 'p1', 'image': 'j.jpg', 'conversations': [turn('human', 'Point at the cup. <image>'), turn('gpt', '(3, 4)')]}))
    ds2, _ = read_llava(tmp_path/'src'/'robo.jsonl', source='robopoint', cache_dir=tmp_path/'cache')
    return samples_to_dataset([*ds, *ds2], 'vlm', tmp_path/'cache')

def assert_same_mixture(a, b):
    assert a['id'] == b['id'] and a['source'] == b['source'] and a['messages'] == b['messages']
    assert a['meta'] == b['meta']
    for x, y in zip(a['images'], b['images']):
        assert len(x) == len(y)
        for i, j in zip(x, y): np.testing.assert_array_equal(pixels(i), pixels(j))

def test_write_llava_round_trip(tmp_path, mixture):
    "LLaVA-1.5 rows: one image a row (a two-image row stops the writer or is skipped, counted), no system turn."
    two = next(s['id'] for s in mixture if len(s['images']) == 2)
    with pytest.raises(DataError, match=f"row '{two}', field 'images': 2 images"): write_llava(mixture, tmp_path/'x')
    assert not (tmp_path/'x').exists()
    sk = Skipped()
    out = write_llava(mixture, tmp_path/'llava', multi_image='skip', skipped=sk)
    assert sk.counts == {'several images': 1} and sk.rows[0]['row'] == two
    rows = json.loads((out/'data.json').read_text())
    assert rows[0]['conversations'][0]['from'] == 'human' and rows[0]['image'].startswith('images/')
    assert all('images' not in r and {t['from'] for t in r['conversations']} <= {'human', 'gpt'} for r in rows)
    assert (out/'images'/'robopoint__p1_0.jpg').exists()  # JPEG bytes kept as they were
    back, sk = read_llava(out/'data.json', source='mix', cache_dir=tmp_path/'cache')
    assert len(sk) == 0
    kept = mixture.filter(lambda s: len(s['images']) <= 1)
    folded = [[{'role': 'user', 'content': 'Be brief.\n\nHi?'}, m[2]] if m[0]['role'] == 'system' else m
              for m in kept['messages']]
    assert back['messages'] == folded and any(m[0]['role'] == 'system' for m in kept['messages'])
    assert_same_mixture(kept.remove_columns('messages').add_column('messages', folded), back)

def test_write_hf_round_trip_and_parquet_dir(tmp_path, mixture):
    out = write_hf(mixture, tmp_path/'hf')
    back, _ = read_hf(out, cache_dir=tmp_path/'cache')
    assert_same_mixture(mixture, back)
    assert_same_mixture(mixture, load_dataset_dir(out, 'vlm'))
    (tmp_path/'pq'/'data').mkdir(parents=True)
    mixture.to_parquet(str(tmp_path/'pq'/'data'/'train-00000.parquet'))
    back, _ = read_hf(tmp_path/'pq', cache_dir=tmp_path/'cache')
    assert_same_mixture(mixture, back)

def test_read_hf_converts_trl_content_parts(tmp_path):
    ds = Dataset.from_dict({'messages': [
        [{'role': 'user', 'content': [{'type': 'image', 'text': None}, {'type': 'text', 'text': 'Colour?'}]},
         {'role': 'assistant', 'content': [{'type': 'text', 'text': 'Grey.'}]}],
        [{'role': 'user', 'content': [{'type': 'text', 'text': 'Hi'}]}, {'role': 'assistant', 'content': [{'type': 'text', 'text': 'Yo'}]}]],
        'images': [[PIL.Image.fromarray(rgb(1))], []]})
    pq.write_table(ds.data.table, tmp_path/'x.parquet')
    (tmp_path/'trl').mkdir(); (tmp_path/'x.parquet').rename(tmp_path/'trl'/'x.parquet')
    back, _ = read_hf(tmp_path/'trl', source='trl', cache_dir=tmp_path/'cache')
    assert back['id'] == ['trl/000000', 'trl/000001']
    assert back[0]['messages'] == [{'role': 'user', 'content': '<image>\nColour?'}, {'role': 'assistant', 'content': 'Grey.'}]
    np.testing.assert_array_equal(pixels(back[0]['images'][0]), rgb(1))

def test_read_hf_bad_rows(tmp_path):
    good = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Yo'}]
    ds = Dataset.from_dict({'id': ['a', 'b', 'a', 'c'], 'messages': [good, good, good, [good[0]]]})
    ds.save_to_disk(str(tmp_path/'d'))
    with pytest.raises(DataError) as e: read_hf(tmp_path/'d', cache_dir=tmp_path/'c')
    assert_located(e, tmp_path/'d', 2, 'id')
    back, sk = read_hf(tmp_path/'d', on_error='skip', cache_dir=tmp_path/'c')
    assert back['id'] == ['d/a', 'd/b'] and sk.counts == {'duplicate id': 1, 'no assistant turn': 1}
    Dataset.from_dict({'text': ['x']}).save_to_disk(str(tmp_path/'t'))
    with pytest.raises(DataError, match='no messages column'): read_hf(tmp_path/'t', cache_dir=tmp_path/'c')

def test_write_sharegpt_merges_dataset_info(tmp_path, mixture):
    lf = tmp_path/'lf'; lf.mkdir()
    (lf/'dataset_info.json').write_text(json.dumps({'alpaca_en': {'file_name': 'alpaca_en.json'}}))
    f = write_sharegpt(mixture, lf, 'emt_mix')
    info = json.loads((lf/'dataset_info.json').read_text())
    assert info['alpaca_en'] == {'file_name': 'alpaca_en.json'}
    assert info['emt_mix'] == {'file_name': 'emt_mix.json', 'formatting': 'sharegpt',
                               'columns': {'messages': 'messages', 'images': 'images'},
                               'tags': {'role_tag': 'role', 'content_tag': 'content', 'user_tag': 'user',
                                        'assistant_tag': 'assistant', 'system_tag': 'system'}}
    rows = json.loads(f.read_text())
    assert [r['messages'] for r in rows] == mixture['messages']
    for r, imgs in zip(rows, mixture['images']):
        assert len(r['images']) == len(imgs) == sum(m['content'].count('<image>') for m in r['messages'])
        for p, img in zip(r['images'], imgs): np.testing.assert_array_equal(pixels(PIL.Image.open(lf/p)), pixels(img))
    write_sharegpt(mixture, lf, 'emt_mix2')
    assert set(json.loads((lf/'dataset_info.json').read_text())) == {'alpaca_en', 'emt_mix', 'emt_mix2'}

def test_save_dataset_is_atomic(tmp_path, mixture, monkeypatch):
    out = save_dataset(mixture, tmp_path/'pool')
    def boom(self, path, **kw):
        os.makedirs(path); open(os.path.join(path, 'half'), 'w').close(); raise KeyboardInterrupt
    monkeypatch.setattr(Dataset, 'save_to_disk', boom)
    with pytest.raises(KeyboardInterrupt): save_dataset(mixture.select([0]), out)
    assert len(load_dataset_dir(out)) == len(mixture)
    assert sorted(p.name for p in tmp_path.iterdir() if 'pool' in p.name) == ['pool']

def test_validate_dataset_skips_and_locates(tmp_path, mixture):
    rows = list(mixture)
    rows[1] = {**rows[1], 'messages': [{'role': 'user', 'content': 'only a question'}]}
    ds = samples_to_dataset(rows, 'vlm', tmp_path/'c')
    with pytest.raises(DataError) as e: validate(ds, 'vlm', 'pool.arrow')
    assert_located(e, 'pool.arrow', 1, 'messages')
    kept, sk = validate(ds, 'vlm', 'pool.arrow', on_error='skip')
    assert kept['id'] == [r['id'] for i, r in enumerate(rows) if i != 1] and sk.counts == {'no assistant turn': 1}


# ---------------------------------------------------------------- LIBERO HDF5

LIBERO_NAME = 'KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it_demo.hdf5'

def write_libero(path, lengths=(4, 3, 5, 2), problem_info=True, bad=None):
    "A LIBERO-like demo file; `bad` = (demo, 'length'|'nan') breaks one demo."
    with h5py.File(path, 'w') as h:
        data = h.create_group('data')
        if problem_info:
            data.attrs['problem_info'] = json.dumps({'problem_name': 'x', 'language_instruction': 'turn on the stove'})
            data.attrs['env_args'] = json.dumps({'env_name': 'x'})
        for i, T in enumerate(lengths):
            obs = np.stack([rgb(100 * i + t) for t in range(T)])
            acts = np.random.default_rng(i).normal(size=(T, 7))
            if bad and bad[0] == i and bad[1] == 'length': acts = acts[:-1]
            if bad and bad[0] == i and bad[1] == 'nan': acts[1, 2] = np.nan
            data[f'demo_{i}/obs/agentview_rgb'] = obs
            data[f'demo_{i}/actions'] = acts
    return path

def test_libero_reads_chunks_flips_and_instruction(tmp_path):
    f = write_libero(tmp_path/LIBERO_NAME)
    ds, sk = read_libero_hdf5(f, chunk=3, cache_dir=tmp_path/'c')
    assert len(ds) == 14 and len(sk) == 0
    assert set(ds['instruction']) == {'turn on the stove and put the moka pot on it'}  # the file name's, not problem_info's
    assert json.loads(ds[0]['meta'])['bddl_language'] == 'turn on the stove'
    assert ds[0]['id'] == 'libero/KITCHEN_SCENE3_turn_on_the_stove_and_put_the_moka_pot_on_it/ep000/f0000'
    with h5py.File(f) as h: acts, obs = h['data/demo_1/actions'][()], h['data/demo_1/obs/agentview_rgb'][()]
    r = ds[4 + 2]  # demo_1, frame 2 (its last)
    assert (r['episode_index'], r['frame_index']) == (1, 2)
    np.testing.assert_allclose(r['actions'], np.stack([acts[2]] * 3).astype(np.float32))
    assert r['action_is_pad'] == [False, True, True]
    np.testing.assert_array_equal(pixels(r['images'][0]), obs[2][::-1])  # upright: flipped vertically
    ds180, _ = read_libero_hdf5(f, chunk=3, flip='rotate180', cache_dir=tmp_path/'c')
    np.testing.assert_array_equal(pixels(ds180[6]['images'][0]), obs[2][::-1, ::-1])

def test_libero_instruction_from_file_name_and_folder(tmp_path):
    (tmp_path/'suite').mkdir()
    write_libero(tmp_path/'suite'/LIBERO_NAME, (2,), problem_info=False)
    write_libero(tmp_path/'suite'/'pick_up_the_black_bowl_demo.hdf5', (2,), problem_info=False)
    ds, _ = load_source({'name': 'libero_10', 'format': 'libero_hdf5', 'path': str(tmp_path/'suite')}, chunk=2,
                        cache_dir=tmp_path/'c')
    assert ds['instruction'] == ['turn on the stove and put the moka pot on it'] * 2 + ['pick up the black bowl'] * 2
    assert ds['episode_index'] == [0, 0, 1, 1] and ds['source'] == ['libero_10'] * 4

def write_official_libero(folder, task, T=3):
    "A demo file in the layout of LIBERO's released data sets (its create_dataset script), for a benchmark task."
    from libero.libero import get_libero_path
    bddl = Path(get_libero_path('bddl_files'))/task.problem_folder/task.bddl_file
    text = bddl.read_text()
    language = re.search(r'\(:language\s+([^)]*)\)', text).group(1).strip()
    path = Path(folder)/f'{task.name}_demo.hdf5'
    with h5py.File(path, 'w') as h:
        data = h.create_group('data')
        data.attrs.update(env_name='Libero_Tabletop_Manipulation', macros_image_convention='opengl', num_demos=1,
                          total=T, bddl_file_name=str(bddl), bddl_file_content=text,
                          problem_info=json.dumps({'problem_name': 'libero_tabletop_manipulation',
                                                   'domain_name': 'robosuite', 'language_instruction': language}),
                          env_args=json.dumps({'type': 1, 'env_name': 'Libero_Tabletop_Manipulation'}))
        demo = data.create_group('demo_0')
        demo.attrs.update(num_samples=T, model_file='<mujoco/>', init_state=np.zeros(10))
        for cam in ('agentview_rgb', 'eye_in_hand_rgb'):
            demo[f'obs/{cam}'] = np.stack([rgb(t) for t in range(T)])
        for k, d in (('gripper_states', 2), ('joint_states', 7), ('ee_states', 6), ('ee_pos', 3), ('ee_ori', 3)):
            demo[f'obs/{k}'] = np.zeros((T, d))
        demo['actions'] = np.zeros((T, 7)); demo['states'] = np.zeros((T, 10)); demo['robot_states'] = np.zeros((T, 9))
        demo['rewards'] = np.zeros(T, np.uint8); demo['dones'] = np.eye(T, dtype=np.uint8)[-1]
    return path, language

def test_libero_instruction_is_the_benchmark_tasks_language(tmp_path):
    "Training reads the text that evaluation prompts with (the task's `language`), not the BDDL's problem_info."
    from emt.libero import libero_suite
    task = libero_suite('libero_object').get_task(0)
    f, bddl_text = write_official_libero(tmp_path, task)
    assert bddl_text != task.language  # the case that used to diverge
    ds, _ = load_source({'name': 'libero_object', 'format': 'libero_hdf5', 'path': str(f)}, chunk=2,
                        cache_dir=tmp_path/'c')
    assert set(ds['instruction']) == {task.language} and len(ds) == 3
    assert json.loads(ds[0]['meta'])['bddl_language'] == bddl_text

@pytest.mark.parametrize('bad,reason', [((3, 'length'), 'length mismatch'), ((1, 'nan'), 'non-finite action')])
def test_libero_bad_demo_raises_located_or_is_skipped(tmp_path, bad, reason):
    f = write_libero(tmp_path/LIBERO_NAME, bad=bad)
    with pytest.raises(DataError) as e: read_libero_hdf5(f, chunk=2, cache_dir=tmp_path/'c')
    assert_located(e, f, f'data/demo_{bad[0]}', 'actions')
    ds, sk = read_libero_hdf5(f, chunk=2, on_error='skip', cache_dir=tmp_path/'c')
    lengths = [4, 3, 5, 2]
    assert len(ds) == sum(lengths) - lengths[bad[0]]
    assert sk.counts == {reason: 1} and sk.rows[0]['row'] == f'data/demo_{bad[0]}'


# ---------------------------------------------------------------- LeRobot v3

EPISODES = [np.arange(10, dtype=np.float32).reshape(5, 2), np.full((3, 2), 9, np.float32)]

def test_lerobot_image_dataset(tmp_path):
    root = write_toy_lerobot(tmp_path/'lr', EPISODES, task='push the block')
    ds, sk = read_lerobot(root, source='toy', chunk=4, camera='front', cache_dir=tmp_path/'c')
    assert len(ds) == 8 and len(sk) == 0
    r = ds[3]
    assert r['id'] == 'toy/ep000/f0003' and r['instruction'] == r['task'] == 'push the block'
    assert r['actions'] == [[6, 7], [8, 9], [8, 9], [8, 9]] and r['action_is_pad'] == [False, False, True, True]
    stored = pq.read_table(root/'data/chunk-000/file-000.parquet').to_pylist()[3]['observation.images.front']['bytes']
    np.testing.assert_array_equal(pixels(r['images'][0]), pixels(PIL.Image.open(io.BytesIO(stored))))
    with pytest.raises(DataError, match="camera 'wrist' not found"): read_lerobot(root, chunk=1, camera='wrist')

def _rewrite_data(root, edit):
    f = root/'data/chunk-000/file-000.parquet'
    t = pq.read_table(f); rows = t.to_pylist(); edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), f)
    return f

def test_lerobot_nan_action_skips_the_episode(tmp_path):
    root = write_toy_lerobot(tmp_path/'lr', EPISODES)
    f = _rewrite_data(root, lambda rows: rows[6]['action'].__setitem__(0, float('nan')))
    with pytest.raises(DataError) as e: read_lerobot(root, chunk=2, cache_dir=tmp_path/'c')
    assert_located(e, f, 'episode 1', 'action')
    ds, sk = read_lerobot(root, chunk=2, on_error='skip', cache_dir=tmp_path/'c')
    assert set(ds['episode_index']) == {0} and sk.counts == {'non-finite action': 1}

def test_lerobot_corrupt_image_row(tmp_path):
    root = write_toy_lerobot(tmp_path/'lr', EPISODES)
    f = _rewrite_data(root, lambda rows: rows[2].__setitem__('observation.images.front', {'bytes': b'junk', 'path': None}))
    with pytest.raises(DataError) as e: read_lerobot(root, chunk=2, cache_dir=tmp_path/'c')
    assert_located(e, f, 2, 'images')
    ds, sk = read_lerobot(root, chunk=2, on_error='skip', cache_dir=tmp_path/'c')
    assert len(ds) == 7 and sk.counts == {'corrupt image': 1}

def write_video_lerobot(root, av=None):
    "The toy data set plus a video camera: both episodes in one mp4 (written with PyAV when given)."
    root = write_toy_lerobot(root, EPISODES)
    key = 'observation.images.wrist'
    info = json.loads((root/'meta/info.json').read_text())
    info['features'] = {key: {'dtype': 'video', 'shape': [16, 16, 3], 'names': ['height', 'width', 'channel']},
                        **info['features']}
    (root/'meta/info.json').write_text(json.dumps(info))
    ep_file = root/'meta/episodes/chunk-000/file-000.parquet'
    eps = pq.read_table(ep_file).to_pylist()
    t0 = 0.0
    for e in eps:
        e.update({f'videos/{key}/chunk_index': 0, f'videos/{key}/file_index': 0,
                  f'videos/{key}/from_timestamp': t0, f'videos/{key}/to_timestamp': t0 + e['length'] / 10})
        t0 += e['length'] / 10
    pq.write_table(pa.Table.from_pylist(eps), ep_file)
    video = root/'videos'/key/'chunk-000'/'file-000.mp4'
    video.parent.mkdir(parents=True)
    if av is None: video.write_bytes(b'not decoded in this test'); return root, video
    with av.open(str(video), 'w') as c:
        s = c.add_stream('mpeg4', rate=10); s.width = s.height = 16; s.pix_fmt = 'yuv420p'; s.options = {'qscale': '1'}
        for n in range(8):
            fr = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 20 + 25 * n, np.uint8), format='rgb24')
            for p in s.encode(fr): c.mux(p)
        for p in s.encode(): c.mux(p)
    return root, video

def test_lerobot_video_without_decoder_says_pip_install_av(tmp_path, monkeypatch):
    root, video = write_video_lerobot(tmp_path/'lr')
    monkeypatch.setitem(sys.modules, 'av', None)  # `import av` now raises ImportError
    for policy in ('raise', 'skip'):  # a missing decoder is never a row to skip
        with pytest.raises(EmtError, match='pip install av') as e:
            read_lerobot(root, chunk=2, camera='wrist', on_error=policy, cache_dir=tmp_path/'c')
        assert_located(e, video, 'episode 0', 'observation.images.wrist')

def test_lerobot_video_decodes_with_pyav(tmp_path):
    av = pytest.importorskip('av')
    root, _ = write_video_lerobot(tmp_path/'lr', av)
    ds, _ = read_lerobot(root, chunk=2, camera='observation.images.wrist', cache_dir=tmp_path/'c')
    means = [float(pixels(im[0]).mean()) for im in ds['images']]
    np.testing.assert_allclose(means, [20 + 25 * n for n in range(8)], atol=4)


# ---------------------------------------------------------------- load_source

def test_load_source_dispatch_and_errors(tmp_project):
    write_llava_files(tmp_project/'data', llava_rows(2))
    ds, _ = load_source({'name': 'web', 'format': 'llava', 'path': 'data/chat.jsonl', 'image_root': 'data',
                         'kind': 'vlm'}, cache_dir=tmp_project/'c')
    assert ds['id'] == ['web/r0', 'web/r1']
    write_toy_lerobot(tmp_project/'data'/'lr', EPISODES)
    ds, _ = load_source({'name': 'robot', 'format': 'lerobot', 'path': 'data/lr', 'kind': 'vla', 'chunk': 3},
                        cache_dir=tmp_project/'c')
    assert len(ds['actions'][0]) == 3
    with pytest.raises(EmtError, match='known formats: hf, llava, lerobot, libero_hdf5'):
        load_source({'name': 'x', 'format': 'rlds', 'path': 'x'})
    with pytest.raises(EmtError, match='needs a chunk length'):
        load_source({'name': 'robot', 'format': 'lerobot', 'path': 'data/lr'})
    with pytest.raises(EmtError, match="has no 'path'"):
        load_source({'name': 'robot', 'format': 'lerobot'})


# ---------------------------------------------------------------- schema checks through validate

def vla_frame(i, actions=((0.1, 0.2), (0.3, 0.4)), pad=(False, False)):
    buf = io.BytesIO(); PIL.Image.fromarray(rgb(i)).save(buf, 'PNG')
    return {'id': f'toy/ep000/f{i:04d}', 'source': 'toy', 'images': [{'bytes': buf.getvalue(), 'path': None}],
            'instruction': 'pick', 'task': 'pick', 'episode_index': 0, 'frame_index': i, 'meta': '{}',
            'actions': [list(a) for a in actions], 'action_is_pad': list(pad)}

@pytest.mark.parametrize('bad,field,reason', [
    (dict(actions=((0.1, float('nan')), (0.3, 0.4))), 'actions', 'non-finite action'),
    (dict(actions=((0.1, float('inf')), (0.3, 0.4))), 'actions', 'non-finite action'),
    (dict(actions=((0.1, 0.2, 0.3), (0.3, 0.4, 0.5))), 'actions', 'chunk shape mismatch'),
    (dict(pad=(False,)), 'action_is_pad', 'bad action_is_pad')])
def test_validate_vla_rows(tmp_path, bad, field, reason):
    rows = [vla_frame(0), vla_frame(1, **bad), vla_frame(2)]
    with pytest.raises(DataError) as e: validate(rows, 'vla', 'frames.arrow')
    assert_located(e, 'frames.arrow', 1, field)
    kept, sk = validate(rows, 'vla', 'frames.arrow', on_error='skip')
    assert [r['id'] for r in kept] == ['toy/ep000/f0000', 'toy/ep000/f0002'] and sk.counts == {reason: 1}
    ds = samples_to_dataset(kept, 'vla', tmp_path/'c')
    assert ds.features['actions'].feature.feature.dtype == 'float32'

def test_llava_image_without_placeholder_is_bad(tmp_path):
    rows = llava_rows(1); rows[0]['conversations'][0]['value'] = 'What is shown?'
    f = write_llava_files(tmp_path, rows + llava_rows(2)[1:])
    with pytest.raises(DataError, match='0 <image> placeholders but 1 images') as e: read_llava(f, cache_dir=tmp_path/'c')
    assert_located(e, f, 'line 1', 'messages')
    ds, sk = read_llava(f, on_error='skip', cache_dir=tmp_path/'c')
    assert len(ds) == 1 and sk.counts == {'image count mismatch': 1}
