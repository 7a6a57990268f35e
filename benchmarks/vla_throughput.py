"""VLA training throughput of `emt.vla.train_vla` against a plain PyTorch loop, and VLA inference latency per chunk.

Training: both train the same VLA (the embedded-default InternVL-architecture VLM unless --small, or the checkpoint
given with --vlm, with the VLM4VLA head) on the same frames in the same order, with the same batches
(`emt.policy.frame_batch`), global batch, micro-batch and accumulation, AdamW, warmup + cosine, gradient clipping, fp32.
The plain loop encodes its micro-batches in the training process; `train_vla` in a DataLoader worker (--workers).
samples/s = steps x global batch / training seconds (model building and the held-out evaluation excluded: the plain
loop has none, so train_vla runs with no held-out episodes). Runs alternate (ours, plain, ours, plain, ...) and the best
of each is reported, to damp the noise of a shared machine.

Inference: `load_policy(...).predict` on one 64x64 frame (one action chunk), median and p90 over --predict runs after a
warm-up, on the CPU, or on CUDA with --gpu (when a GPU is visible); and `predict_batch` per frame for a batch of 16.

--grid times the vla stage's ways of training a grid of runs on this CPU: one run at a time on 1 thread (1 DataLoader
worker), one at a time on all cores, and `vla.jobs` = 2 runs at once in processes of their own (cores/2 threads each,
encoding in-process); each as seconds per optimiser step of the whole grid (wall time / runs / steps).

Usage: python benchmarks/vla_throughput.py [--steps 6] [--repeats 2] [--workers 1] [--threads 1] [--small] [--gpu]
       python benchmarks/vla_throughput.py --grid --vlm artifacts/base_vlm --data artifacts/data/metaworld_mt10 --steps 20
"""
import argparse, os, shutil, statistics, tempfile, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('EMT_PROGRESS', '0')

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from emt.backbones import load_vlm, n_params, save_vlm, tiny_vlm, train_tokenizer
from emt.params import Recipe
from emt.sft import optimizer_and_schedule
from emt.policy import VLAConfig, build_vla, frame_batch, load_policy, save_vla
from emt.vla import BalancedFrames, _prepare_data, action_loss_sums, train_vla
from emt.fixtures import toy_frames


def backbone(a):
    "The VLM to turn into a VLA: a checkpoint, or a random one of the embedded (or --small) sizes."
    if a.vlm: return load_vlm(a.vlm)
    sizes = (dict(hidden_size=64, layers=1, heads=2, vision_hidden_size=32, vision_layers=1, image_size=32)
             if a.small else dict(hidden_size=256, layers=4, heads=4, vision_hidden_size=192, vision_layers=4,
                                  image_size=96))
    tok = train_tokenizer(['push the block to the goal', 'pick the block and place it'] * 50, 400)
    return tiny_vlm('internvl', tok, seed=0, **sizes)


def ours(a, ds, cfg, recipe) -> float:
    out = tempfile.mkdtemp(prefix='bench-vla-ours-')
    try: rep = train_vla(backbone(a), ds, VLAConfig(**vars(cfg)), recipe, out, heldout_fraction=0.0, resume=False,
                         num_workers=a.workers)
    finally: shutil.rmtree(out, ignore_errors=True)
    return rep['seconds']


def plain(a, ds, cfg, recipe) -> float:
    "The same training as plain PyTorch: same model, frames, batches, AdamW and schedule; encoding in-process."
    vlm, proc = backbone(a)
    cfg = VLAConfig(**vars(cfg))
    splits, stats = _prepare_data({'data': ds}, cfg, 0.0, 0)
    model = build_vla(vlm, proc, cfg, 0)
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    model.to(dev).train()
    opt, sched = optimizer_and_schedule(model, recipe)
    frames = BalancedFrames([ds], [splits['data'][0]], 0)
    t0 = time.time()
    for step in range(recipe.steps):
        start = step * recipe.global_batch
        batches = [frame_batch(proc, [frames.sample(*frames.row(p)) for p in range(s, s + recipe.micro_batch)], cfg,
                               model.query_id, stats) for s in range(start, start + recipe.global_batch, recipe.micro_batch)]
        n = sum(int(b['valid'].sum()) for b in batches)
        for b in batches:
            arm, grip = model({key: v.to(dev) for key, v in b['inputs'].items()})
            hub, bce = action_loss_sums(arm, grip, b, cfg)
            ((hub + cfg.gripper_weight * bce) / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    return time.time() - t0


def latency(a, ds, cfg, device: str) -> dict:
    "Median and p90 ms per `predict` (one chunk), and ms per frame of a 16-frame `predict_batch`."
    vlm, proc = backbone(a)
    cfg = VLAConfig(**vars(cfg))
    splits, stats = _prepare_data({'data': ds}, cfg, 0.0, 0)
    model = build_vla(vlm, proc, cfg, 0)
    d = tempfile.mkdtemp(prefix='bench-vla-ck-')
    try:
        save_vla(model, proc, stats, f'{d}/vla')
        pol = load_policy(f'{d}/vla', device)
        frame = np.asarray(ds[0]['images'][0].convert('RGB').resize((64, 64)))
        text = ds[0]['instruction']
        for _ in range(3): pol.predict([frame], text)
        times = []
        for _ in range(a.predict):
            if device == 'cuda': torch.cuda.synchronize()
            t = time.perf_counter(); pol.predict([frame], text)
            if device == 'cuda': torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - t))
        pol.predict_batch([[frame]] * 16, [text] * 16)
        t = time.perf_counter(); pol.predict_batch([[frame]] * 16, [text] * 16); batch_ms = 1000 * (time.perf_counter() - t) / 16
    finally: shutil.rmtree(d, ignore_errors=True)
    times.sort()
    return {'median_ms': statistics.median(times), 'p90_ms': times[int(0.9 * (len(times) - 1))], 'batch16_ms_per_frame': batch_ms}


def grid(a, ds, cfg, recipe) -> None:
    "Seconds per step of a grid of runs: sequential on 1 thread, sequential on all cores, 2 at once."
    from emt.vla import train_vlas
    d = tempfile.mkdtemp(prefix='bench-vla-grid-')
    try:
        vlm, proc = backbone(a)
        save_vlm(vlm, proc, f'{d}/vlm')
        kw = lambda name, workers: dict(vlm=f'{d}/vlm', datasets=ds, cfg=VLAConfig(**vars(cfg)), recipe=recipe,
                                        out_dir=f'{d}/{name}', heldout_fraction=0.0, resume=False, num_workers=workers)
        cores = os.cpu_count() or 1
        for label, threads, workers, jobs in (('one at a time, 1 thread + 1 worker', 1, 1, 1),
                                              (f'one at a time, {cores} threads + 1 worker', cores, 1, 1),
                                              (f'2 at once, {max(1, cores // 2)} thread(s) each, in-process encoding', cores, 0, 2)):
            torch.set_num_threads(threads)
            t = time.time()
            train_vlas({f'{label[:3]}{i}': kw(f'run{i}-{jobs}-{threads}', workers) for i in range(2)}, jobs)
            wall = time.time() - t
            print(f'  {label:55s} {wall / (2 * recipe.steps):6.3f} s/step (2 runs x {recipe.steps} steps in {wall:.1f} s)',
                  flush=True)
    finally: shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=6)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--workers', type=int, default=1, help='DataLoader workers of train_vla')
    ap.add_argument('--global-batch', type=int, default=32)
    ap.add_argument('--micro-batch', type=int, default=16)
    ap.add_argument('--predict', type=int, default=20, help='timed predict calls')
    ap.add_argument('--small', action='store_true', help='a 1-layer toy instead of the embedded default sizes')
    ap.add_argument('--vlm', help='a VLM checkpoint directory instead of a random one (e.g. artifacts/base_vlm)')
    ap.add_argument('--data', help='a VLA dataset directory (default: toy frames)')
    ap.add_argument('--gpu', action='store_true', help='time inference on CUDA (when a GPU is visible)')
    ap.add_argument('--no-train', action='store_true', help='inference latency only')
    ap.add_argument('--grid', action='store_true', help="seconds per step of a grid of runs: the vla stage's `jobs`")
    ap.add_argument('--threads', type=int, default=1,
                    help='torch threads (default 1: on a shared, oversubscribed CPU more threads spin and run slower)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    hf_logging.set_verbosity_error()
    if a.data:
        from emt.samples import load_dataset_dir
        ds = load_dataset_dir(a.data, 'vla')
    else: ds = toy_frames(12, length=16, size=64)
    action_dim = len(ds[0]['actions'][0])
    cfg = argparse.Namespace(action_dim=action_dim, chunk=4, head_hidden=256, action_queries=1, max_seq_len=64)
    recipe = Recipe(steps=a.steps, global_batch=a.global_batch, micro_batch=a.micro_batch, lr=5e-4, warmup_steps=1,
                    max_seq_len=64, precision='fp32')
    vlm, _ = backbone(a)
    print(f'machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average '
          f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}, cuda {torch.cuda.is_available()}')
    print(f'VLM: {n_params(vlm):,} parameters ({vlm.config.model_type}); {len(ds)} frames, {action_dim}-dim actions')
    if a.grid:
        print(f'grid of 2 runs, {recipe.steps} steps x {recipe.global_batch} frames each (model building and saving included):')
        return grid(a, ds, cfg, recipe)
    if not a.no_train:
        samples = recipe.steps * recipe.global_batch
        print(f'training: {recipe.steps} steps x {recipe.global_batch} frames (micro-batch {recipe.micro_batch}), '
              f'train_vla with {a.workers} DataLoader worker(s)')
        best = {'emt.vla': float('inf'), 'plain': float('inf')}
        for r in range(a.repeats):
            for name, fn in (('emt.vla', ours), ('plain', plain)):
                s = fn(a, ds, cfg, recipe)
                best[name] = min(best[name], s)
                print(f'  run {r}: {name:8s} {s:7.2f} s  {samples / s:7.2f} samples/s  {s / recipe.steps:6.3f} s/step',
                      flush=True)
        for name, s in best.items(): print(f'{name:8s} best {s:7.2f} s  {samples / s:7.2f} samples/s  {s / recipe.steps:6.3f} s/step')
        print(f'ratio emt.vla / plain (samples/s): {best["plain"] / best["emt.vla"]:.2f}')
    devices = ['cpu'] + (['cuda'] if a.gpu and torch.cuda.is_available() else [])
    if a.gpu and not torch.cuda.is_available(): print('--gpu: no CUDA device visible; CPU only')
    for dev in devices:
        lat = latency(a, ds, cfg, dev)
        print(f'inference on {dev}: predict (one chunk of {cfg.chunk}) median {lat["median_ms"]:.1f} ms, p90 '
              f'{lat["p90_ms"]:.1f} ms; predict_batch of 16: {lat["batch16_ms_per_frame"]:.1f} ms per frame')
    print(f'load average after: {" ".join(f"{x:.2f}" for x in os.getloadavg())}')


if __name__ == '__main__':
    main()
