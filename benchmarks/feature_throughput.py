"""Throughput of the features stage: end to end (read, decode, preprocess, forward, pool, write) vs forward alone.

CPU mode (default): a VLM of the embedded default's size (params.yaml base_vlm) on synthetic VLM samples like the
embedded corpus's (96 px images, a short conversation). For each number of DataLoader workers it prints samples/s
end to end (`compute_shards` writing real shards) and forward-only (`embed_batch` on the same batches, encoded
beforehand), and their ratio. Target: end to end >= 80% of forward-only.

GPU mode (--gpu): a model of InternVL3.5-1B's size with random weights (InternViT-300M: 24 layers x 1024, 16 heads,
MLP 4096, 448 px, patch 14; projector 4096 -> 1024; Qwen3-0.6B: 28 layers x 1024, 16 query / 8 KV heads of 128,
MLP 3072, vocab 151,936), bf16, one 448 px image (256 image tokens) per sample. Prints samples/s end to end and
forward-only, and model FLOPs utilisation (FLOPs counted by torch's FlopCounterMode, against the GPU's dense bf16
peak; --peak-tflops to override).

    python benchmarks/feature_throughput.py                 # CPU, embedded size
    python benchmarks/feature_throughput.py --gpu           # GPU, InternVL3.5-1B size
"""
import argparse, json, os, tempfile, time

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('EMT_PROGRESS', '0')

import numpy as np
import torch

from emt.backbones import n_params, tiny_vlm, train_tokenizer
from emt.samples import samples_to_dataset
from emt.features import BatchReader, compute_shards, embed_batch, plan_shards

PEAK_BF16_TFLOPS = {'H100': 989.4, 'H200': 989.4, 'A100': 312.0, 'L40S': 362.1, 'A10': 125.0, 'L4': 121.0}
WORDS = 'the red block sits left of a blue cup on the wooden table near the robot gripper and a drawer'.split()


def synthetic_samples(n: int, size: int, seed: int = 0) -> list[dict]:
    "VLM samples like the embedded corpus: one JPEG image, a question and an answer of 10-40 words."
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = g.integers(0, 255, (8, 8, 3), dtype=np.uint8).repeat(size // 8, 0).repeat(size // 8, 1)
        img = np.clip(base + g.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        from PIL import Image
        import io
        buf = io.BytesIO(); Image.fromarray(img).save(buf, format='JPEG', quality=90)
        words = lambda k: ' '.join(g.choice(WORDS, k))
        out.append({'id': f'bench/{i:06d}', 'source': 'bench', 'images': [{'bytes': buf.getvalue(), 'path': None}],
                    'messages': [{'role': 'user', 'content': f'<image>\n{words(int(g.integers(5, 15)))}?'},
                                 {'role': 'assistant', 'content': words(int(g.integers(10, 40)))}], 'meta': '{}'})
    return out


def cpu_model():
    "The embedded default's base VLM size (params.yaml base_vlm), random weights."
    tok = train_tokenizer([' '.join(WORDS)] * 50, 4096)
    return tiny_vlm('internvl', tok, hidden_size=256, layers=4, heads=4, vision_hidden_size=192, vision_layers=4,
                    image_size=96, patch_size=8)


def internvl35_1b(device: str):
    "A random-weight model of InternVL3.5-1B's dimensions, its processor (one 448 px tile per image)."
    from transformers import AutoModelForImageTextToText, GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor
    tok = train_tokenizer([' '.join(WORDS)] * 50, 1024)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=[448, 448], patch_size=[14, 14], use_qk_norm=False, layer_scale_init_value=0.1),
        text_config=dict(model_type='qwen3', vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                         num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=40960, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_id=tok.context_image_token_id, image_seq_length=256, downsample_ratio=0.5,
        projector_hidden_act='gelu', vision_feature_layer=-1, tie_word_embeddings=True)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    ip = GotOcr2ImageProcessorPil(size={'height': 448, 'width': 448}, max_patches=1)
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, image_seq_length=256, chat_template=tok.chat_template)
    return model.eval(), proc


def model_flops(model, batch) -> float:
    "FLOPs of one forward of `embed_batch` on `batch`."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc: embed_batch(model, batch)
    return float(fc.get_total_flops())


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def measure(model, processor, samples, batch_size, max_seq_len, workers, repeats, device) -> dict:
    "Samples/s end to end and forward-only on the same batches."
    ds = samples_to_dataset(samples, 'vlm')
    tasks = plan_shards({'bench': ('vlm', len(ds))}, shard_size=4 * batch_size)
    reader = BatchReader(processor, {'bench': ds}, tasks, batch_size, max_seq_len)
    t = time.perf_counter()
    batches = [reader[i].batch for i in range(len(reader))]
    encode_s = time.perf_counter() - t
    embed_batch(model, batches[0]); sync(device)  # warm-up
    fwd, e2e = [], {w: [] for w in workers}
    for _ in range(repeats):  # interleaved, so that both see the same load on a shared machine
        t = time.perf_counter()
        for b in batches: embed_batch(model, b)
        sync(device); fwd.append(time.perf_counter() - t)
        for w in workers:
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                compute_shards(model, reader, out, {'bench': {'fingerprint': 'bench'}}, num_workers=w)
                sync(device); e2e[w].append(time.perf_counter() - t)
    rows = [{'workers': w, 'e2e_samples_per_s': len(ds) / min(e2e[w])} for w in workers]
    fwd_sps = len(ds) / min(fwd)
    for r in rows: r['ratio_to_forward'] = r['e2e_samples_per_s'] / fwd_sps
    return {'samples': len(ds), 'batches': len(batches), 'forward_samples_per_s': fwd_sps, 'e2e': rows,
            'encode_samples_per_s': len(ds) / encode_s,
            'tokens_per_row': float(np.mean([b['attention_mask'].sum(1).float().mean() for b in batches])),
            'first_batch': batches[0]}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--gpu', action='store_true', help='InternVL3.5-1B size, bf16, on the GPU')
    ap.add_argument('--device', default=None, help='override the device (e.g. cpu for a smoke run of --gpu)')
    ap.add_argument('--samples', type=int, default=None)
    ap.add_argument('--batch-size', type=int, default=None)
    ap.add_argument('--workers', default=None, help='comma-separated DataLoader worker counts to try')
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--peak-tflops', type=float, default=None, help='the GPU dense bf16 peak, if not known')
    a = ap.parse_args()
    device = torch.device(a.device or ('cuda' if a.gpu else 'cpu'))
    if a.gpu:
        model, proc = internvl35_1b(str(device))
        samples = synthetic_samples(a.samples or 512, 448)
        bs, workers, msl = a.batch_size or 64, a.workers or '4,8', 512
    else:
        model, proc = cpu_model()
        samples = synthetic_samples(a.samples or 192, 96)
        bs, workers, msl = a.batch_size or 32, a.workers or '0,1,2', 256
    model = model.to(device)
    r = measure(model, proc, samples, bs, msl, [int(w) for w in workers.split(',')], a.repeats, device)
    load = os.getloadavg()
    print(f'machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), load average '
          f'{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch {torch.__version__}, {torch.get_num_threads()} threads; '
          f'device {torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}')
    print(f'model: {n_params(model) / 1e6:.1f} M params ({next(model.parameters()).dtype}); {r["samples"]} samples, '
          f'batch {bs}, {r["tokens_per_row"]:.0f} valid tokens per row on average')
    print(f'forward only: {r["forward_samples_per_s"]:.1f} samples/s (best of {a.repeats}, interleaved with the runs below)')
    enc = r['encode_samples_per_s']
    print(f'read + decode + preprocess alone, one process: {enc:.1f} samples/s; serial bound without overlap: '
          f'{100 / (1 + r["forward_samples_per_s"] / enc):.0f}% of forward-only')
    for e in r['e2e']:
        print(f'end to end, {e["workers"]} workers: {e["e2e_samples_per_s"]:.1f} samples/s '
              f'({100 * e["ratio_to_forward"]:.0f}% of forward-only)')
    summary = {k: v for k, v in r.items() if k != 'first_batch'}
    if device.type == 'cuda' or a.gpu:
        flops = model_flops(model, r['first_batch']) / len(r['first_batch']['input_ids'])
        peak = a.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device)) if device.type == 'cuda' else None)
        print(f'model FLOPs: {flops / 1e9:.1f} GFLOP per sample')
        if peak:
            for name, sps in [('forward only', r['forward_samples_per_s'])] + [
                    (f'end to end, {e["workers"]} workers', e['e2e_samples_per_s']) for e in r['e2e']]:
                print(f'MFU {name}: {100 * sps * flops / (peak * 1e12):.1f}% of {peak:.0f} TFLOP/s bf16')
        summary['gflops_per_sample'] = flops / 1e9
    print(json.dumps(summary, default=float))


if __name__ == '__main__':
    main()
