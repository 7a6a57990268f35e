"""A few rows of each data release, written in the layout the release ships, for the converters' tests and the
paper rehearsal. Where each layout comes from (read in those repositories; the rows here are invented):

- img2dataset (LAION, CC-12M): rom1504/img2dataset @ 95523bc, `img2dataset/writer.py` (WebDatasetSampleWriter,
  ParquetSampleWriter), `downloader.py` (the metadata schema), `logger.py` (`_stats.json`). Webdataset shards hold
  `<key>.jpg`, `<key>.json`, `<key>.txt` for successful downloads only, beside a metadata-only `00000.parquet` with
  every input row; parquet output has the image bytes in a column named after the encode format (`jpg`), null
  for failed rows. Keys are 9 digits.
- VCR: rowanz/r2c @ 77813d9, `dataloaders/vcr.py` and the VCR readme: `train.jsonl` rows (tokens with nested
  lists of 0-based object indices), images and their `.json` metadata (`boxes` [x1, y1, x2, y2, score], `segms`,
  `width`, `height`) under `vcr1images/<movie>/`.
- RefSpatial: Zhoues/RoboRefer @ d97a995, README (training steps, json -> image folder mapping) and
  `llava/data/dataset.py`; the HF tree of JingkunAn/RefSpatial: top-level json arrays of LLaVA-like rows (`id`,
  `image` and `depth` lists of file names, several `conversations` turns), images extracted from split archives
  into `2D/image/`, points as normalised `[(x, y)]`, choices as `(A) ... (B) ...`.
- EmbSpatial-Bench: mengfeidu/EmbSpatial-Bench @ 75792fc, README: `embspatial_sft.json` is a json array whose rows
  carry a base64 JPEG `image`, a list of paraphrased `question`s and a free-text `answer`; the bench file has
  `answer_options` and an integer `answer`.
- Robo2VLM: keplerccc/Robo2VLM-1's parquet files (`id`, `question`, `choices` as a string, `correct_answer`,
  `image` as an HF image struct).
- LeRobot v2.0/v2.1 (Bridge's `IPEC-COMMUNITY/bridge_orig_lerobot`, CALVIN conversions such as
  `fywang/calvin-task-ABC-D-lerobot`): huggingface/lerobot @ e23b41e, `lerobot/common/datasets/utils.py`:
  `meta/info.json`, `meta/episodes.jsonl`, `meta/tasks.jsonl`, `data/chunk-000/episode_000000.parquet`, videos at
  `videos/chunk-000/<key>/episode_000000.mp4` (video features are not parquet columns; image features are HF
  image structs inside the parquet).
"""
import base64, io, json, tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def jpeg(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, 'JPEG')
    return buf.getvalue()


CAPTIONS = ['a red bicycle leaning on a brick wall', 'two dogs running on a beach', 'a bowl of ramen with egg',
            'a lighthouse at dusk', 'an old map on a wooden desk', 'a cat asleep on a keyboard']


def _meta(key: str, i: int, ok: bool, caption: str) -> dict:
    return {'caption': caption, 'url': f'https://example.com/{key}.jpg', 'key': key,
            'status': 'success' if ok else 'failed_to_download', 'error_message': None if ok else 'HTTP Error 404',
            'width': 32 if ok else None, 'height': 32 if ok else None, 'original_width': 640 if ok else None,
            'original_height': 480 if ok else None, 'exif': None, 'sha256': f'{i:064x}' if ok else None}


def write_img2dataset(folder: Path, n: int = 6, output_format: str = 'webdataset', failed: int = 1, shards: int = 2) -> Path:
    "`n` input rows over `shards` shards as img2dataset writes them; the last `failed` rows failed to download."
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n // shards)
    for s in range(shards):
        idx = list(range(s * per, min(n, (s + 1) * per)))
        metas = [_meta(f'{s:05d}{i - s * per:04d}', i, i < n - failed, CAPTIONS[i % len(CAPTIONS)]) for i in idx]
        if output_format == 'webdataset':
            with tarfile.open(folder/f'{s:05d}.tar', 'w') as tf:
                for i, m in zip(idx, metas):
                    if m['status'] != 'success': continue
                    for ext, data in (('jpg', jpeg(i)), ('json', json.dumps(m, indent=4).encode()), ('txt', m['caption'].encode())):
                        info = tarfile.TarInfo(f"{m['key']}.{ext}"); info.size = len(data); tf.addfile(info, io.BytesIO(data))
            pq.write_table(pa.Table.from_pylist(metas), folder/f'{s:05d}.parquet')
        else:
            rows = [m | {'jpg': jpeg(i) if m['status'] == 'success' else None} for i, m in zip(idx, metas)]
            pq.write_table(pa.Table.from_pylist(rows), folder/f'{s:05d}.parquet')
        ok = sum(m['status'] == 'success' for m in metas)
        (folder/f'{s:05d}_stats.json').write_text(json.dumps({'count': len(metas), 'successes': ok,
                                                             'failed_to_download': len(metas) - ok, 'failed_to_resize': 0}))
    return folder


def write_vcr(root: Path, n: int = 4) -> Path:
    "VCR's layout: `train.jsonl` and `vcr1images/<movie>/<image>.jpg` with its `.json` metadata."
    movie = 'lsmdc_3015_CHARLIE_ST_CLOUD'
    rows = []
    for i in range(n):
        stem = f'{movie}/3015_CHARLIE_ST_CLOUD_00.23.{i:02d}.935-00.24.00.783@0'
        (root/'vcr1images'/movie).mkdir(parents=True, exist_ok=True)
        (root/'vcr1images'/f'{stem}.jpg').write_bytes(jpeg(100 + i, 48))
        (root/'vcr1images'/f'{stem}.json').write_text(json.dumps({
            'boxes': [[2.0, 4.0, 20.0, 40.0, 0.99], [24.0, 6.0, 46.0, 44.0, 0.98]], 'width': 48, 'height': 48,
            'segms': [[[[2, 4], [20, 4], [20, 40]]], [[[24, 6], [46, 6], [46, 44]]]], 'names': ['person', 'person']}))
        rows.append({'movie': '3015_CHARLIE_ST_CLOUD', 'objects': ['person', 'person'], 'interesting_scores': [0],
                     'answer_likelihood': 'possible', 'img_fn': f'{stem}.jpg', 'metadata_fn': f'{stem}.json',
                     'question': ['Does', [1], 'feel', 'comfortable', '?'],
                     'answer_choices': [['Yes', ',', [0], 'is', 'smiling', '.'], ['No', 'she', 'does', 'not', '.'],
                                        ['Yes', ',', 'she', 'is', 'warm', '.'], ['Yes', ',', 'she', 'is', 'cold', '.']],
                     'answer_label': i % 4, 'rationale_label': (i + 1) % 4,
                     'rationale_choices': [['There', 'is', 'snow', '.'], ['She', 'has', 'her', 'arms', 'crossed', '.'],
                                           ['She', 'sits', 'rigidly', '.'], [[1], 'is', 'in', 'bed', '.']],
                     'img_id': f'train-{i}', 'question_number': 0, 'annot_id': f'train-{i}', 'match_fold': f'train-{i // 2}',
                     'match_index': i, 'answer_match_iter': [3, 0, 2, 1], 'answer_sources': [3287, 0, 10184, 2260],
                     'rationale_match_iter': [3, 0, 2, 1], 'rationale_sources': [1921, 0, 9750, 25743],
                     'question_orig': 'Does 2 feel comfortable?', 'answer_orig': 'No she does not',
                     'rationale_orig': 'She has her arms crossed'})
    (root/'train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return root


def write_refspatial(root: Path, n: int = 4) -> Path:
    "RefSpatial's `2D/choice_qa.json` with its extracted `2D/image/` (and `2D/depth/`, which emt leaves out)."
    rows = []
    for i in range(n):
        name = f'{i:016x}'
        for kind in ('image', 'depth'):
            (root/'2D'/kind).mkdir(parents=True, exist_ok=True)
            (root/'2D'/kind/f'{name}.jpg').write_bytes(jpeg(200 + i))
        rows.append({'id': str(i), 'image': [f'{name}.jpg'], 'depth': [f'{name}.jpg'], 'conversations': [
            {'from': 'human', 'value': '<image>\n<depth>\nPoint to the cup left of the laptop. Your answer should be '
                                       'formatted as a list of tuples, i.e. [(x1, y1)].'},
            {'from': 'gpt', 'value': f'[({0.1 + 0.1 * i:.3f}, 0.412)]'},
            {'from': 'human', 'value': 'Is the chair closer to the camera than the table? (A) yes (B) no'},
            {'from': 'gpt', 'value': '(A) yes' if i % 2 else '(B) no'}]})
    (root/'2D'/'choice_qa.json').write_text(json.dumps(rows))
    return root


def write_embspatial(root: Path, n: int = 4) -> Path:
    "EmbSpatial-Bench's `embspatial_sft.json`: base64 JPEGs, paraphrased questions, free-text answers."
    root.mkdir(parents=True, exist_ok=True)
    rows = [{'data_source': 'mp3d', 'question_id': f'mp3d_sft_{i}', 'relation': ['left', 'right'][i % 2],
             'question': ['How are the toilet and the cabinet positioned?', 'Where is the toilet relative to the cabinet?'],
             'image': base64.b64encode(jpeg(300 + i)).decode(), 'answer': f"The toilet is {['left', 'right'][i % 2]} of the cabinet.",
             'objects': [{'name': 'toilet', 'bbox': [10, 10, 8, 8]}, {'name': 'cabinet', 'bbox': [2, 3, 6, 9]}]}
            for i in range(n)]
    (root/'embspatial_sft.json').write_text(json.dumps(rows))
    return root


def write_robo2vlm(root: Path, n: int = 4) -> Path:
    "Robo2VLM-1's parquet shard: `id`, `question`, `choices` (a list as a string), `correct_answer`, `image` struct."
    (root/'data').mkdir(parents=True, exist_ok=True)
    rows = [{'id': f'r2v-{i}', 'question': 'Is the gripper open?', 'choices': "['yes', 'no']", 'correct_answer': i % 2,
             'image': {'bytes': jpeg(400 + i), 'path': None}} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), root/'data'/'train-00000-of-00001.parquet')
    return root


def _video(path: Path, frames: int, fps: int, size: int = 16) -> None:
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), 'w') as c:
        s = c.add_stream('mpeg4', rate=fps); s.width = s.height = size; s.pix_fmt = 'yuv420p'; s.options = {'qscale': '1'}
        for t in range(frames):
            fr = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 + 25 * t, np.uint8), format='rgb24')
            for p in s.encode(fr): c.mux(p)
        for p in s.encode(): c.mux(p)


def write_lerobot_v2(root: Path, episodes: list[np.ndarray], camera: str, video: bool = True,
                     tasks: tuple[str, ...] = ('put the spoon on the towel',), fps: int = 5,
                     extra_action: str|None = None, version: str = 'v2.0') -> Path:
    """A LeRobot v2.x data set: `episodes` are (T, D) actions; the camera is a video (Bridge) or an image column
    (CALVIN conversions); `extra_action` adds a second action column (its values: the actions times 10)."""
    D = episodes[0].shape[1]
    vec = lambda d: {'dtype': 'float32', 'shape': [d], 'names': None}
    feats = {camera: {'dtype': 'video' if video else 'image', 'shape': [16, 16, 3], 'names': ['height', 'width', 'channel']},
             'observation.state': vec(D + 1), 'action': vec(D), **({extra_action: vec(D)} if extra_action else {}),
             'timestamp': {'dtype': 'float32', 'shape': [1], 'names': None},
             **{k: {'dtype': 'int64', 'shape': [1], 'names': None} for k in ('frame_index', 'episode_index', 'index', 'task_index')}}
    info = {'codebase_version': version, 'robot_type': 'widowx', 'total_episodes': len(episodes),
            'total_frames': sum(map(len, episodes)), 'total_tasks': len(tasks), 'total_videos': len(episodes) if video else 0,
            'total_chunks': 1, 'chunks_size': 1000, 'fps': fps, 'splits': {'train': f'0:{len(episodes)}'},
            'data_path': 'data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet',
            'video_path': 'videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4' if video else None,
            'features': feats}
    (root/'meta').mkdir(parents=True, exist_ok=True)
    (root/'meta'/'info.json').write_text(json.dumps(info, indent=4))
    (root/'meta'/'tasks.jsonl').write_text(''.join(json.dumps({'task_index': i, 'task': t}) + '\n' for i, t in enumerate(tasks)))
    (root/'meta'/'episodes.jsonl').write_text(''.join(
        json.dumps({'episode_index': e, 'tasks': [tasks[e % len(tasks)]], 'length': len(a)}) + '\n' for e, a in enumerate(episodes)))
    n = 0
    for e, acts in enumerate(episodes):
        rows = []
        for t, a in enumerate(acts):
            r = {'observation.state': [0.0] * (D + 1), 'action': list(map(float, a)), 'timestamp': t / fps,
                 'frame_index': t, 'episode_index': e, 'index': n, 'task_index': e % len(tasks)}
            if extra_action: r[extra_action] = [10 * float(x) for x in a]
            if not video: r[camera] = {'bytes': jpeg(e * 100 + t, 16), 'path': None}
            rows.append(r); n += 1
        (root/'data'/'chunk-000').mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root/'data'/'chunk-000'/f'episode_{e:06d}.parquet')
        if video: _video(root/'videos'/'chunk-000'/camera/f'episode_{e:06d}.mp4', len(acts), fps)
    return root
