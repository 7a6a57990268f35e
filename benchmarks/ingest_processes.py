"""Reading a source with its samples checked in worker processes (`data.num_proc`, `emt.samples.parallel_checks`).

Writes a saved Hugging Face chat data set of N rows with one JPEG image each (224 px by default, as web-scale
sources ship them), then reads it with `emt.samples.read_hf` (every row checked, every image decoded once), with 1, 2, ...
processes, best of `--repeat`. Prints rows per second for each and checks that every count gives the same rows.

    python benchmarks/ingest_processes.py                  # 4,000 rows, 1 and 2 processes
    python benchmarks/ingest_processes.py --n 20000 --procs 1 2 4 8
"""
import argparse, io, os, shutil, tempfile, time

os.environ.setdefault('EMT_PROGRESS', '0')

import numpy as np
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from emt.samples import parallel_checks, read_hf

FEATS = Features({'id': Value('string'), 'images': List(Image()),
                  'messages': List({'role': Value('string'), 'content': Value('string')})})


def jpeg(seed: int, size: int) -> bytes:
    g = np.random.default_rng(seed)
    small = g.integers(0, 255, (size // 8, size // 8, 3), np.uint8)  # smooth enough to compress like a photo
    buf = io.BytesIO()
    PILImage.fromarray(small).resize((size, size), PILImage.BILINEAR).save(buf, 'JPEG', quality=90)
    return buf.getvalue()


def write(d: str, n: int, size: int) -> None:
    def rows():
        for i in range(n):
            yield {'id': f'r{i}', 'images': [{'bytes': jpeg(i, size), 'path': None}],
                   'messages': [{'role': 'user', 'content': '<image>\nDescribe the image.'},
                                {'role': 'assistant', 'content': f'picture number {i}'}]}
    Dataset.from_generator(rows, features=FEATS).save_to_disk(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--n', type=int, default=4000)
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--procs', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--repeat', type=int, default=2)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix='emt-ingest-bench-')
    try:
        src = os.path.join(tmp, 'src'); write(src, a.n, a.size)
        ids = None
        print(f'{a.n} rows, one {a.size}-px JPEG each, {os.cpu_count()} cores')
        for p in a.procs:
            best = float('inf')
            for r in range(a.repeat):
                cache = os.path.join(tmp, f'cache-{p}-{r}')
                t0 = time.perf_counter()
                with parallel_checks(p): ds, skipped = read_hf(src, source='bench', cache_dir=cache)
                best = min(best, time.perf_counter() - t0)
                got = ds['id']
                assert ids is None or got == ids, 'another process count kept other rows'
                ids = got
                shutil.rmtree(cache, ignore_errors=True)
            print(f'{p} process(es): {a.n / best:,.0f} rows/s ({best:.2f} s, best of {a.repeat})')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
