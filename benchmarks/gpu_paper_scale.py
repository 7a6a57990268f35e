"""Paper-scale numbers on one GPU, in well under 10 minutes: an InternVL3.5-1B-sized model with random weights.

1. Training: one optimiser step after another of the SFT engine's recipe (fp32 master weights and AdamW states,
   bf16 autocast, gradient clipping) on 448 px image + chat samples; samples/s, tokens/s and model FLOPs
   utilisation (FLOPs of forward + backward counted by torch's FlopCounterMode, against the GPU's dense bf16 peak).
2. Featurization: the features stage's forward (`emt.features.embed_batch`, bf16) on the same kind of samples;
   samples/s and MFU.
3. VLA inference: `emt.policy.VLAPolicy.predict` (one action chunk from one frame and an instruction) on a VLA
   built from the same model (fp32 weights as `load_policy` gives them, bf16 autocast on a GPU); median and p90
   latency after a warm-up, and `predict_batch` per frame.
4. Evaluation throughput: `emt.evaluation.evaluate` with that VLA on an env of fixed 224-px frames (no simulator: the
   policy's share of an evaluation), one episode at a time against `envs` episodes stepped together (one batched
   forward per step); episodes/s both ways.

The model is InternVL3.5-1B's shape (`benchmarks/feature_throughput.py internvl35_1b`: InternViT-300M at 448 px,
Qwen3-0.6B, 151,936-token vocabulary). Nothing is downloaded.

    python benchmarks/gpu_paper_scale.py                        # on the visible GPU
    python benchmarks/gpu_paper_scale.py --device cpu --smoke   # the same code paths, tiny sizes, on a CPU
"""
import argparse, json, os, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('EMT_PROGRESS', '0')
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

import feature_throughput as ft
from emt.backbones import encode, n_params
from emt.features import embed_batch
from emt.params import Recipe
from emt.policy import VLAConfig, VLAPolicy, action_stats, build_vla
from emt.sft import fp32_master, optimizer_and_schedule


def sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize()


def build(device: torch.device, smoke: bool):
    "The model, its processor and the image side: InternVL3.5-1B's shape, or tiny weights with its image side for --smoke."
    if smoke:  # InternVL3.5's processor at 448 px (256 image tokens a frame), so the sequence lengths are the real ones
        from emt.backbones import tiny_vlm, train_tokenizer
        tok = train_tokenizer(['put the bowl on the plate', 'What is in the image?'] * 20, 400, 'internvl')
        model, proc = tiny_vlm('internvl', tok, hidden_size=64, layers=2, heads=2, vision_hidden_size=32, vision_layers=1,
                               image_size=448, patch_size=14)
        return model.to(device), proc, 448
    model, proc = ft.internvl35_1b(str(device))
    return model, proc, 448


def step_flops(model, batch) -> float:
    "FLOPs of one forward and backward pass on `batch`."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def bench_training(model, proc, size, device, batch_size, steps) -> dict:
    "Steps of fp32-master, bf16-autocast AdamW training on encoded batches (encoding excluded)."
    model = fp32_master(model).train()
    recipe = Recipe(steps=steps + 2, global_batch=batch_size, micro_batch=batch_size, lr=5e-5, warmup_steps=1,
                    max_seq_len=512, precision='bf16')
    opt, sched = optimizer_and_schedule(model, recipe)
    samples = ft.synthetic_samples(batch_size, size)
    batch = {k: v.to(device) for k, v in encode(proc, samples, recipe.max_seq_len).items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    def one():
        with autocast: loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        return loss
    for _ in range(2): one()  # warm-up: allocator, kernels, optimiser state
    sync(device); t = time.perf_counter()
    for _ in range(steps): one()
    sync(device); dt = (time.perf_counter() - t) / steps
    with autocast: flops = step_flops(model, batch)
    tokens = int(batch['attention_mask'].sum())
    out = {'batch': batch_size, 'seconds_per_step': dt, 'samples_per_s': batch_size / dt, 'tokens_per_s': tokens / dt,
           'tokens_per_sample': tokens / batch_size, 'tflop_per_step': flops / 1e12,
           'param_dtype': str(next(model.parameters()).dtype),
           'peak_memory_gib': torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None}

    return out


def bench_features(model, proc, size, device, batch_size, batches) -> dict:
    "The features stage's forward in bf16 on encoded batches."
    model = model.to(torch.bfloat16).eval()
    reader_batches = [{k: v for k, v in encode(proc, ft.synthetic_samples(batch_size, size, seed=i), 512, train=False).items()}
                      for i in range(batches)]
    embed_batch(model, reader_batches[0]); sync(device)
    t = time.perf_counter()
    for b in reader_batches: embed_batch(model, b)
    sync(device); dt = time.perf_counter() - t
    flops = ft.model_flops(model, reader_batches[0]) / batch_size
    return {'batch': batch_size, 'samples_per_s': batch_size * batches / dt, 'gflop_per_sample': flops / 1e9}


def bench_policy(model, proc, device, size, calls) -> tuple[dict, VLAPolicy]:
    "VLAPolicy.predict latency on one frame (bf16 autocast on a GPU), and predict_batch per frame for 16 frames."
    vla = build_vla(model.float(), proc, VLAConfig(action_dim=7, chunk=4, head_hidden=1024, max_seq_len=384)).to(device).eval()
    g = np.random.default_rng(0)
    acts = g.normal(size=(64, 4, 7)).astype(np.float32); acts[..., -1] = np.sign(acts[..., -1])
    policy = VLAPolicy(vla, proc, action_stats(acts, np.zeros((64, 4), bool), vla.cfg.gripper_dims))
    frame = g.integers(0, 255, (size, size, 3), dtype=np.uint8)
    text = 'put both the alphabet soup and the tomato sauce in the basket'
    import contextlib
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if device.type == 'cuda' else contextlib.nullcontext()
    with amp:
        for _ in range(3): policy.predict([frame], text)
        times = []
        for _ in range(calls):
            sync(device); t = time.perf_counter(); policy.predict([frame], text); sync(device)
            times.append(time.perf_counter() - t)
        sync(device); t = time.perf_counter(); policy.predict_batch([[frame]] * 16, [text] * 16); sync(device)
    return {'predict_ms_median': 1000 * float(np.median(times)), 'predict_ms_p90': 1000 * float(np.percentile(times, 90)),
            'predict_batch16_ms_per_frame': 1000 * (time.perf_counter() - t) / 16, 'frame_px': size}, policy


class StillEnv:
    "Fixed frames and no physics: what an evaluation costs besides the simulator."
    action_dim, instruction = 7, 'put both the alphabet soup and the tomato sauce in the basket'
    def __init__(self, size: int, steps: int):
        self.frame, self.max_steps = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8), steps
    def reset(self, trial): return self.frame
    def step(self, action): return self.frame, False, False
    def close(self): pass


class StillBench:
    name = 'still'
    def __init__(self, size: int, steps: int): self.size, self.steps = size, steps
    def tasks(self): return ['still']
    def protocol(self): return {'benchmark': self.name, 'size': self.size, 'steps': self.steps}
    def make_env(self, task): return StillEnv(self.size, self.steps)


class Loaded:
    "A factory of an already built policy, batchable (it keeps no per-episode state)."
    batchable = True
    def __init__(self, policy): self.policy = policy
    def __call__(self): return self.policy


def bench_eval(policy, device, size: int, episodes: int, steps: int, envs: int) -> dict:
    "Episodes/s of `evaluate` on `StillBench`: one episode at a time, then `envs` stepped together."
    import contextlib, tempfile
    from emt.evaluation import evaluate
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if device.type == 'cuda' else contextlib.nullcontext()
    out = {'episodes': episodes, 'steps': steps, 'envs': envs}
    with amp, tempfile.TemporaryDirectory() as d:
        for n in (1, envs):
            sync(device); t = time.perf_counter()
            evaluate(StillBench(size, steps), Loaded(policy), Path(d)/str(n), trials=episodes, envs=n)
            sync(device); out[f'episodes_per_s_envs{n}'] = episodes / (time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default=None, help='default: cuda if visible, else cpu')
    ap.add_argument('--smoke', action='store_true', help="tiny weights with InternVL3.5's 448-px image side (a CPU check of the script)")
    ap.add_argument('--train-batch', type=int, default=None)
    ap.add_argument('--steps', type=int, default=None)
    ap.add_argument('--feature-batch', type=int, default=None)
    ap.add_argument('--peak-tflops', type=float, default=None, help='the GPU dense bf16 peak, if not in the table')
    a = ap.parse_args()
    device = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    peak = a.peak_tflops or (ft.peak_tflops(name) if device.type == 'cuda' else None)
    small = a.smoke or device.type != 'cuda'
    t0 = time.time()
    model, proc, size = build(device, a.smoke)
    print(f'device {name}; torch {torch.__version__}; model {n_params(model) / 1e6:.0f} M params, {size} px images')
    report = {'device': name, 'params_m': n_params(model) / 1e6, 'image_px': size}
    tr = bench_training(model, proc, size, device, a.train_batch or (4 if small else 16), a.steps or (2 if small else 10))
    tr['mfu'] = tr['tflop_per_step'] / tr['seconds_per_step'] / peak if peak else None
    print(f"training (fp32 master, bf16 autocast): {tr['samples_per_s']:.1f} samples/s, {tr['tokens_per_s']:.0f} tokens/s, "
          f"{tr['tflop_per_step']:.1f} TFLOP/step" + (f", MFU {100 * tr['mfu']:.1f}% of {peak:.0f} TFLOP/s" if peak else ''))
    fe = bench_features(model, proc, size, device, a.feature_batch or (8 if small else 64), 2 if small else 8)
    fe['mfu'] = fe['samples_per_s'] * fe['gflop_per_sample'] * 1e9 / (peak * 1e12) if peak else None
    print(f"featurization (bf16 forward): {fe['samples_per_s']:.1f} samples/s" +
          (f", MFU {100 * fe['mfu']:.1f}%" if peak else ''))
    po, policy = bench_policy(model, proc, device, 224, 5 if small else 30)
    print(f"VLA predict: median {po['predict_ms_median']:.1f} ms, p90 {po['predict_ms_p90']:.1f} ms; "
          f"batch of 16: {po['predict_batch16_ms_per_frame']:.1f} ms per frame")
    ev = bench_eval(policy, device, 224, 4 if small else 32, 4 if small else 20, 4 if small else 16)
    batched = ev[f"episodes_per_s_envs{ev['envs']}"]
    print(f"evaluation (no simulator): {ev['episodes_per_s_envs1']:.2f} episodes/s one at a time, "
          f"{batched:.2f} with {ev['envs']} stepped together")
    report.update(training=tr, features=fe, policy=po, evaluation=ev, seconds=time.time() - t0)
    print(json.dumps(report, default=float))


if __name__ == '__main__':
    main()
