"""Fixtures in the paper profile's layouts: its sources, a few rows each, as their releases ship them (LLaVA-665k and
RoboPoint as LLaVA JSON with image folders, LIBERO as HDF5; the others in their own layouts under data/paper/raw/,
written by `release_fixtures` and converted by the profile's own `profiles/paper-sources.sh`), and tiny random-weight
InternVL3.5 and Qwen3-VL checkpoints stored as the hub's are (bf16 safetensors, the real image side, chat templates
without `{% generation %}` markers), in a folder or in a Hugging Face hub cache under the hub ids the profile names.
Used by the paper smoke test and the paper rehearsal; `python tests/paper_fixtures.py DIR` writes them into a project."""
import json, os, sys
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


def write_releases(root: Path) -> None:
    "The releases `profiles/paper-sources.sh` converts, a few rows each, in their own layouts under data/paper/raw/."
    import release_fixtures as rf
    raw = root/'data/paper/raw'
    rf.write_img2dataset(raw/'laion400m', n=N_VLM + 1, output_format='webdataset')  # one failed download each
    rf.write_img2dataset(raw/'cc12m', n=N_VLM + 1, output_format='parquet')
    rf.write_vcr(raw/'vcr1', N_VLM); rf.write_refspatial(raw/'refspatial', N_VLM)
    rf.write_embspatial(raw/'embspatial', N_VLM); rf.write_robo2vlm(raw/'robo2vlm', N_VLM)
    g = np.random.default_rng(1)
    eps = [np.concatenate([g.normal(0, 0.3, (T, 6)), (g.random((T, 1)) > 0.5).astype(float)], 1) for _ in range(N_EP)]
    rf.write_lerobot_v2(raw/'bridge_orig_lerobot', eps, 'observation.images.image_0', video=True, version='v2.0')
    rf.write_lerobot_v2(raw/'calvin_abc_lerobot', eps, 'observation.images.top', video=False, version='v2.1', fps=10,
                        tasks=('open the drawer',))


def write_sources(raw: dict, root: Path) -> None:
    """Every source of the profile `raw` under `root`, as a user has it after the run book's downloads and
    `profiles/paper-sources.sh`: LLaVA JSON and LIBERO HDF5 as released, the other releases converted."""
    import subprocess
    from emt.libero import libero_tasks
    task = libero_tasks('libero_10')[0]
    for s in raw['data']['vlm_sources']:
        if s['format'] == 'llava': write_llava(s, root)
    for s in raw['data']['vla_sources']:
        if s['format'] == 'libero_hdf5': write_libero(s, root, task)
    write_releases(root)
    if not (root/'params.yaml').exists():  # `emt convert` runs inside a project: the profile, as `emt params use` leaves it
        (root/'params.yaml').write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}', 'EMT_PROGRESS': '0',
           'EMT_ROOT': str(root)}
    r = subprocess.run(['bash', str(REPO/'profiles/paper-sources.sh')], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f'paper-sources.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    missing = [s['path'] for s in raw['data']['vlm_sources'] + raw['data']['vla_sources'] if not (root/s['path']).exists()]
    assert not missing, f'not written: {missing}'


if __name__ == '__main__':
    root = Path(sys.argv[1] if len(sys.argv) > 1 else '.').resolve()
    write_sources(yaml.safe_load((root/'params.yaml').read_text()), root)
    print('\n'.join(f'{a}: {p}' for a, p in hub_cache(root/'.hub-cache').items()))


def prepare_rehearsal(d: Path, edit=None) -> tuple[dict, dict[str, Path]]:
    """Make the copy of the repository at `d` a rehearsal project as a user would: a git repository, `emt params use
    paper-rehearsal`, `edit(raw params)` if given, the sources and the hub cache written. Its environment (offline,
    its own hub cache, this Python's tools first) and the stand-in checkpoints."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != 'EMT_ROOT'}
    env.update(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(d/'.hub-cache'), EMT_PROGRESS='0',
               PATH=f'{Path(sys.executable).parent}{os.pathsep}{env.get("PATH", "")}')
    git = ['git', '-c', 'user.email=r@r', '-c', 'user.name=r']
    for cmd in (['git', 'init', '-q'], git + ['add', '-A'], git + ['commit', '-qm', 'copy'],
                ['emt', 'params', 'use', 'paper-rehearsal']):
        r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True)
        if r.returncode: raise RuntimeError(f'{" ".join(cmd)} failed in {d}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}')
    raw = yaml.safe_load((d/'params.yaml').read_text())
    if edit is not None:
        edit(raw); (d/'params.yaml').write_text(yaml.safe_dump(raw, sort_keys=False, width=120))
    write_sources(raw, d)
    return env, hub_cache(d/'.hub-cache')
