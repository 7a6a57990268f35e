"""Fixtures in the paper profile's layouts: its sources, a few rows each, at the paths and in the formats it names
(LLaVA JSON and JSONL with image folders, Hugging Face datasets, LeRobot v3, LIBERO HDF5), and tiny random-weight
InternVL3.5 and Qwen3-VL checkpoints stored as the hub's are (bf16 safetensors, the real image side, chat templates
without `{% generation %}` markers), in a folder or in a Hugging Face hub cache under the hub ids the profile names.
Used by the paper smoke test and the paper rehearsal; `python tests/paper_fixtures.py DIR` writes them into a project."""
import json, sys
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
N_VLM, N_EP, T = 14, 4, 6 # rows per VLM source; VLA episodes per source, frames per episode


def _png(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _qa(name: str, i: int) -> tuple[str, str]:
    "A question and answer in the style of each source."
    if name in ('refspatial', 'robopoint'): return 'Point to the handle.', f'({0.1 * (i % 9):.2f}, 0.50)'
    if name in ('embspatial', 'vcr'): return 'Is the cup left or right?\nA. left\nB. right', 'AB'[i % 2] + '. ' + ['left', 'right'][i % 2]
    if name == 'robo2vlm': return 'Is the gripper open?', ['yes', 'no'][i % 2]
    return 'Describe the image.', f'a photo of a {["red", "blue", "green"][i % 3]} {["cube", "ball"][i % 2]} on a table'


def write_llava(spec: dict, root: Path) -> None:
    rows = []
    for i in range(N_VLM):
        q, a = _qa(spec['name'], i)
        _png(root/spec['image_root']/f'{i:03d}.png', hash(spec['name']) % 1000 + i)
        rows.append({'id': f'{spec["name"]}-{i}', 'image': f'{i:03d}.png',
                     'conversations': [{'from': 'human', 'value': f'<image>\n{q}'}, {'from': 'gpt', 'value': a}]})
    p = root/spec['path']; p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text('\n'.join(json.dumps(r) for r in rows) + '\n' if p.suffix == '.jsonl' else json.dumps(rows))


def write_hf(spec: dict, root: Path) -> None:
    from datasets import Dataset, Features, Image as HFImage, Sequence, Value
    rows = []
    for i in range(N_VLM):
        q, a = _qa(spec['name'], i)
        _png(root/'tmp'/f'{i}.png', 7 * i)
        rows.append({'id': f'{spec["name"]}-{i}', 'images': [{'bytes': (root/'tmp'/f'{i}.png').read_bytes(), 'path': None}],
                     'messages': [{'role': 'user', 'content': f'<image>\n{q}'}, {'role': 'assistant', 'content': a}]})
    feats = Features({'id': Value('string'), 'images': Sequence(HFImage()),
                      'messages': [{'role': Value('string'), 'content': Value('string')}]})
    Dataset.from_list(rows, features=feats).save_to_disk(str(root/spec['path']))


def write_lerobot(spec: dict, root: Path) -> None:
    from emt.data import write_toy_lerobot
    g = np.random.default_rng(1)
    eps = [np.concatenate([g.normal(0, 0.3, (T, 6)), (g.random((T, 1)) > 0.5).astype(float)], 1) for _ in range(N_EP)]
    write_toy_lerobot(root/spec['path'], eps, task='put the spoon on the towel', camera=spec['camera'])


def write_libero(spec: dict, root: Path, task: str) -> None:
    folder = root/spec['path']; folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(2)
    with h5py.File(folder/f'{task}_demo.hdf5', 'w') as h:
        data = h.create_group('data')
        for e in range(N_EP):
            data[f'demo_{e}/obs/agentview_rgb'] = g.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8)
            acts = np.concatenate([g.normal(0, 0.3, (T, 6)), np.sign(g.normal(size=(T, 1)))], 1)
            data[f'demo_{e}/actions'] = acts


# The image side of the real checkpoints: InternVL3.5's 448-px tile of 14-px patches (256 image tokens), Qwen3-VL's
# 16-px patches at native resolution; and chat templates as the hub's are, with no `{% generation %}` markers (Qwen's
# with its default system turn).
HUB_STYLE = {'internvl': ('InternVL3_5-tiny', dict(image_size=448, patch_size=14), None),
             'qwen3_vl': ('Qwen3-VL-tiny', dict(image_size=448, patch_size=16), 'You are a helpful assistant.')}


def tiny_checkpoints(root: Path) -> dict[str, Path]:
    "Random-weight InternVL and Qwen3-VL VLMs stored in bf16 under <root>/hub/, with the hub's image sizes and templates."
    from emt.backbones import ARCHS, hub_chat_template, save_vlm, tiny_vlm, train_tokenizer
    texts = [_qa(n, i)[0] + ' ' + _qa(n, i)[1] for n in ('a', 'refspatial', 'vcr', 'robo2vlm') for i in range(20)]
    out = {}
    for arch, (name, image, system) in HUB_STYLE.items():
        tok = train_tokenizer(texts * 5, 400, arch=arch)
        model, proc = tiny_vlm(arch, tok, hidden_size=32, layers=1, heads=2, vision_hidden_size=32, vision_layers=1,
                               **image)
        proc.chat_template = proc.tokenizer.chat_template = hub_chat_template(ARCHS[arch].image_placeholder, system)
        out[arch] = root/'hub'/name
        save_vlm(model.to(torch.bfloat16), proc, out[arch])
        assert 'generation' not in (out[arch]/'chat_template.jinja').read_text().replace('add_generation_prompt', '')
    return out


HUB_IDS = {'internvl': 'OpenGVLab/InternVL3_5-1B-HF', 'qwen3_vl': 'Qwen/Qwen3-VL-2B-Instruct'}


def hub_cache(cache: Path) -> dict[str, Path]:
    "The tiny checkpoints in a Hugging Face hub cache (`HF_HUB_CACHE`) under the hub ids of the paper's VLMs."
    out = {}
    for arch, path in tiny_checkpoints(cache/'.build').items():
        repo = cache/('models--' + HUB_IDS[arch].replace('/', '--'))
        snap = repo/'snapshots'/('0' * 40)
        snap.parent.mkdir(parents=True, exist_ok=True)
        path.rename(snap)
        (repo/'refs').mkdir(exist_ok=True); (repo/'refs'/'main').write_text('0' * 40)
        out[arch] = snap
    (cache/'.build'/'hub').rmdir(); (cache/'.build').rmdir()
    return out


def write_sources(raw: dict, root: Path) -> None:
    "Every source of the profile `raw`, a few rows each, at the path and in the format it names, under `root`."
    from emt.libero import libero_tasks
    task = libero_tasks('libero_10')[0]
    for s in raw['data']['vlm_sources']:
        (write_llava if s['format'] == 'llava' else write_hf)(s, root)
    for s in raw['data']['vla_sources']:
        if s['format'] == 'libero_hdf5': write_libero(s, root, task)
        else: write_lerobot(s, root)


if __name__ == '__main__':
    root = Path(sys.argv[1] if len(sys.argv) > 1 else '.').resolve()
    write_sources(yaml.safe_load((root/'params.yaml').read_text()), root)
    print('\n'.join(f'{a}: {p}' for a, p in hub_cache(root/'.hub-cache').items()))
