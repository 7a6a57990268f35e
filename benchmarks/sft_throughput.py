"""Training throughput of `emt.sft.train_sft` against a plain transformers `Trainer` on the same tiny VLM and data.

Both train the same random-weight InternVL-architecture VLM (the embedded default sizes unless --small) for the same
number of optimiser steps of the same global batch, micro-batch and accumulation, with the same `emt.backbones.encode`
collation, fp32, on CPU (or the visible GPU). Every sample has the same text (images differ), so both see the same
number of tokens per sample and tokens/s = samples x tokens-per-sample / training seconds (model building excluded).
Runs alternate (ours, Trainer, ours, Trainer, ...) and the best of each is reported, to damp the noise of a shared
machine. Usage: python benchmarks/sft_throughput.py [--steps 8] [--repeats 2] [--workers 1] [--threads 1] [--small]
"""
import argparse, os, shutil, tempfile
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('EMT_PROGRESS', '0')

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from emt.backbones import encode, n_params, tiny_vlm, train_tokenizer
from emt.params import Recipe
from emt.sft import train_sft

TEXT = [{'role': 'user', 'content': '<image>\nWhat is on the table in front of the robot?'},
        {'role': 'assistant', 'content': 'a red cube to the left of a blue bowl, near the edge of the table'}]


def data(n: int, image_size: int) -> Dataset:
    "n samples with random images and the same chat text."
    rows = [{'id': f'bench/{i}', 'source': 'bench', 'meta': '{}', 'messages': TEXT,
             'images': [Image.fromarray(np.random.default_rng(i).integers(0, 255, (image_size, image_size, 3),
                                                                            dtype=np.uint8))]}
            for i in range(n)]
    return Dataset.from_list(rows)


def build(sizes: dict):
    tok = train_tokenizer([m['content'] for m in TEXT] * 50, 400)
    return tiny_vlm('internvl', tok, seed=0, **sizes)


def ours(sizes, ds, recipe, workers) -> float:
    model, proc = build(sizes)
    out = tempfile.mkdtemp(prefix='bench-ours-')
    try: rep = train_sft((model, proc), ds, recipe, out, num_workers=workers, resume=False, save_model=False)
    finally: shutil.rmtree(out, ignore_errors=True)
    return rep['seconds']


class Samples(torch.utils.data.Dataset):
    def __init__(self, ds): self.ds = ds
    def __len__(self): return len(self.ds)
    def __getitem__(self, i): return self.ds[int(i)]


def trainer(sizes, ds, recipe, workers) -> float:
    model, proc = build(sizes)
    model.train()
    out = tempfile.mkdtemp(prefix='bench-trainer-')
    args = TrainingArguments(out, per_device_train_batch_size=recipe.micro_batch,
                             gradient_accumulation_steps=recipe.global_batch // recipe.micro_batch,
                             max_steps=recipe.steps, learning_rate=recipe.lr, weight_decay=recipe.weight_decay,
                             warmup_steps=recipe.warmup_steps or 0, lr_scheduler_type='cosine', max_grad_norm=1.0,
                             save_strategy='no', report_to=[], logging_steps=10**6, disable_tqdm=True,
                             dataloader_num_workers=workers, remove_unused_columns=False, seed=0,
                             use_cpu=not torch.cuda.is_available())
    tr = Trainer(model=model, args=args, train_dataset=Samples(ds),
                 data_collator=lambda samples: encode(proc, samples, recipe.max_seq_len))
    try: res = tr.train()
    finally: shutil.rmtree(out, ignore_errors=True)
    return res.metrics['train_runtime']


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=8)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--workers', type=int, default=1)
    ap.add_argument('--small', action='store_true', help='a 1-layer toy instead of the embedded default sizes')
    ap.add_argument('--threads', type=int, default=1,
                    help='torch threads (default 1: on a shared, oversubscribed CPU more threads spin and run slower)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    hf_logging.set_verbosity_error()
    sizes = (dict(hidden_size=64, layers=1, heads=2, vision_hidden_size=32, vision_layers=1, image_size=32)
             if a.small else dict(hidden_size=256, layers=4, heads=4, vision_hidden_size=192, vision_layers=4,
                                  image_size=96))
    recipe = Recipe(steps=a.steps, global_batch=16, micro_batch=8, lr=1e-3, weight_decay=0.01, warmup_steps=1,
                    max_seq_len=256, precision='fp32')
    ds = data(64, sizes['image_size'])
    model, proc = build(sizes)
    per_sample = int(encode(proc, [ds[0]], recipe.max_seq_len)['attention_mask'].sum())
    tokens = per_sample * recipe.steps * recipe.global_batch
    print(f'machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average '
          f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}, cuda {torch.cuda.is_available()}')
    print(f'model: {n_params(model):,} parameters {sizes}; {per_sample} tokens/sample; {recipe.steps} steps x '
          f'{recipe.global_batch} samples (micro-batch {recipe.micro_batch}), {a.workers} DataLoader worker(s)')
    best = {'emt.sft': float('inf'), 'Trainer': float('inf')}
    for r in range(a.repeats):
        for name, fn in (('emt.sft', ours), ('Trainer', trainer)):
            s = fn(sizes, ds, recipe, a.workers)
            best[name] = min(best[name], s)
            print(f'  run {r}: {name:8s} {s:7.2f} s  {tokens / s:9.1f} tokens/s', flush=True)
    for name, s in best.items(): print(f'{name:8s} best {s:7.2f} s  {tokens / s:9.1f} tokens/s')
    print(f'ratio emt.sft / Trainer (tokens/s): {best["Trainer"] / best["emt.sft"]:.2f}')
    print(f'load average after: {" ".join(f"{x:.2f}" for x in os.getloadavg())}')


if __name__ == '__main__':
    main()
