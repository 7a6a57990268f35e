"Broken files in their real formats: every error names the file (and the row's id and field), `on_error='skip'` drops a broken file or demo as a whole and lists it, and no temporary Arrow folder is left behind."
import io, json, os, subprocess, sys, tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, Image, List, Value

from emt.core import DataError
from emt.samples import read_hf, read_lerobot, read_libero_hdf5, read_llava

sys.path.insert(0, str(Path(__file__).parent))
from test_samples import EPISODES, LIBERO_NAME, _rewrite_data, write_libero, write_llava_files, llava_rows  # noqa: E402
from emt.fixtures import write_toy_lerobot


def truncate(path, keep=0.5):
    "Keep only the first `keep` of the file's bytes, as an interrupted download does."
    b = path.read_bytes(); path.write_bytes(b[:int(len(b) * keep)])
    return path

def zero(path, at=0.7, n=4096):
    "Overwrite `n` bytes from `at` of the file with zeros, as a bad disk block does."
    b = bytearray(path.read_bytes()); i = int(len(b) * at); b[i:i + n] = bytes(len(b[i:i + n]))
    path.write_bytes(bytes(b))
    return path

def jpeg(seed, broken=False):
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), np.uint8)).save(buf, 'JPEG')
    b = buf.getvalue()
    return b[:len(b) // 3] if broken else b


# ---------------------------------------------------------------- LIBERO HDF5

def two_files_of_one_task(tmp_path):
    "Two tasks' demo files in two folders: a good file and one to break."
    good, bad = tmp_path/'a'/'LIVING_ROOM_SCENE1_pick_up_the_bowl_demo.hdf5', tmp_path/'b'/LIBERO_NAME
    good.parent.mkdir(); bad.parent.mkdir()
    return write_libero(good), write_libero(bad)

def test_truncated_libero_file_is_named_and_skipped_as_a_whole(tmp_path):
    good, bad = two_files_of_one_task(tmp_path)
    truncate(bad)
    with pytest.raises(DataError) as e: read_libero_hdf5([good, bad], chunk=2, cache_dir=tmp_path/'c')
    assert str(bad) in str(e.value) and e.value.file == str(bad) and 'truncated' in str(e.value)
    ds, sk = read_libero_hdf5([good, bad], chunk=2, on_error='skip', cache_dir=tmp_path/'c')
    assert len(ds) == 4 + 3 + 5 + 2 and set(json.loads(m)['file'] for m in ds['meta']) == {good.name}
    assert sk.counts == {'unreadable file': 1}
    assert sk.rows[0]['file'] == str(bad) and sk.rows[0]['row'] is None and 'OSError' in sk.rows[0]['detail']

def test_zeroed_libero_region_names_the_file_and_demo(tmp_path):
    good, bad = two_files_of_one_task(tmp_path)
    zero(bad)  # hits the headers of the last demos: h5py raised a bare KeyError
    with pytest.raises(DataError) as e: read_libero_hdf5([good, bad], chunk=2, cache_dir=tmp_path/'c')
    assert e.value.file == str(bad) and str(e.value.row).startswith('data/demo_'), str(e.value)
    assert str(bad) in str(e.value) and e.value.row in str(e.value)
    ds, sk = read_libero_hdf5([good, bad], chunk=2, on_error='skip', cache_dir=tmp_path/'c')
    lengths = dict(enumerate([4, 3, 5, 2]))
    lost = {int(r['row'].split('_')[1]) for r in sk.rows}
    assert lost and all(r['file'] == str(bad) and r['reason'] == 'unreadable demo' for r in sk.rows)
    assert len(ds) == 2 * sum(lengths.values()) - sum(lengths[i] for i in lost)  # whole demos dropped, no frame more


# ---------------------------------------------------------------- HF datasets and Parquet

FEATS = Features({'id': Value('string'), 'images': List(Image()),
                  'messages': List({'role': Value('string'), 'content': Value('string')})})

def chat_rows(ids, broken=()):
    return [{'id': i, 'images': [{'bytes': jpeg(n, i in broken), 'path': None}],
             'messages': [{'role': 'user', 'content': '<image>\nWhat?'}, {'role': 'assistant', 'content': i}]}
            for n, i in enumerate(ids)]

def test_corrupt_jpeg_row_names_the_row_id(tmp_path):
    Dataset.from_list(chat_rows(['r0', 'r1', 'r2'], broken={'r1'}), features=FEATS).save_to_disk(str(tmp_path/'d'))
    with pytest.raises(DataError) as e: read_hf(tmp_path/'d', source='s', cache_dir=tmp_path/'c')
    msg = str(e.value)
    assert str(tmp_path/'d') in msg and "row 1" in msg and "field 'images'" in msg and "'s/r1'" in msg, msg
    ds, sk = read_hf(tmp_path/'d', source='s', on_error='skip', cache_dir=tmp_path/'c')
    assert ds['id'] == ['s/r0', 's/r2'] and sk.counts == {'corrupt image': 1} and sk.rows[0]['id'] == 's/r1'

def test_llava_bad_row_names_the_row_id(tmp_path):
    rows = llava_rows(3); rows[1]['conversations'][1] = {'from': 'robot', 'value': 'x'}
    f = write_llava_files(tmp_path, rows, jsonl=False)
    with pytest.raises(DataError) as e: read_llava(f, cache_dir=tmp_path/'c')
    assert e.value.row == 1 and "'r1'" in str(e.value), str(e.value)

def test_lerobot_corrupt_jpeg_names_the_frame(tmp_path):
    root = write_toy_lerobot(tmp_path/'lr', EPISODES)
    f = _rewrite_data(root, lambda rows: rows[6].__setitem__('observation.images.front',
                                                             {'bytes': jpeg(0, broken=True), 'path': None}))
    with pytest.raises(DataError) as e: read_lerobot(root, source='toy', chunk=2, cache_dir=tmp_path/'c')
    assert str(f) in str(e.value) and e.value.row == 6 and "'toy/ep001/f0001'" in str(e.value), str(e.value)

def test_broken_parquet_file_is_named_and_skipped_as_a_whole(tmp_path):
    d = tmp_path/'pq'/'data'; d.mkdir(parents=True)
    for k in range(2):
        t = Dataset.from_list(chat_rows([f'f{k}r{i}' for i in range(3)]), features=FEATS).data.table
        pq.write_table(t, d/f'train-{k:05d}.parquet')
    bad = truncate(d/'train-00001.parquet')
    with pytest.raises(DataError) as e: read_hf(tmp_path/'pq', source='s', cache_dir=tmp_path/'c')
    assert e.value.file == str(bad) and str(bad) in str(e.value)
    ds, sk = read_hf(tmp_path/'pq', source='s', on_error='skip', cache_dir=tmp_path/'c')
    assert ds['id'] == ['s/f0r0', 's/f0r1', 's/f0r2']
    assert sk.counts == {'unreadable file': 1} and sk.rows[0]['file'] == str(bad)


# ---------------------------------------------------------------- temporary Arrow folders

def arrow_dirs(d): return sorted(p.name for p in Path(d).glob('emt-arrow-*'))

def test_no_arrow_folder_left_after_an_error(tmp_path, monkeypatch):
    tmp = tmp_path/'tmp'; tmp.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp))
    rows = llava_rows(3); rows[1]['conversations'] = []
    f = write_llava_files(tmp_path/'src', rows)
    with pytest.raises(DataError): read_llava(f)  # stops part-way through writing
    assert arrow_dirs(tmp) == []
    (tmp_path/'empty.jsonl').write_text('{"id": 1}\n')
    with pytest.raises(DataError, match='empty source'): read_llava(tmp_path/'empty.jsonl', on_error='skip')
    assert arrow_dirs(tmp) == []

def test_no_arrow_folder_left_after_reading(tmp_path):
    f = write_llava_files(tmp_path/'src', llava_rows(3))
    tmp = tmp_path/'tmp'; tmp.mkdir()
    code = (f"from emt.samples import read_llava\nds, _ = read_llava({str(f)!r})\n"
            "import glob, tempfile; print(len(glob.glob(tempfile.gettempdir() + '/emt-arrow-*')), len(ds))")
    r = subprocess.run([sys.executable, '-c', code], env={**os.environ, 'TMPDIR': str(tmp)}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['1', '3']  # the data set is memory-mapped from it while the process runs
    assert arrow_dirs(tmp) == []  # and it is gone when the process ends


def test_checks_in_worker_processes_give_the_same_data_and_errors(tmp_path):
    "parallel_checks(2) (the data stage's data.num_proc): the same rows kept, the same skip report, the same error raised."
    from emt.samples import parallel_checks
    ids = [f'r{i}' for i in range(300)]
    Dataset.from_list(chat_rows(ids, broken={'r7', 'r250'}), features=FEATS).save_to_disk(str(tmp_path/'d'))
    one, sk1 = read_hf(tmp_path/'d', source='s', on_error='skip', cache_dir=tmp_path/'c1')
    with parallel_checks(2):
        two, sk2 = read_hf(tmp_path/'d', source='s', on_error='skip', cache_dir=tmp_path/'c2')
        with pytest.raises(DataError) as e: read_hf(tmp_path/'d', source='s', cache_dir=tmp_path/'c3')
    assert two['id'] == one['id'] and len(one) == 298 and sk2.rows == sk1.rows and sk1.counts == {'corrupt image': 2}
    assert e.value.row == 7 and "'s/r7'" in str(e.value)
