"""Does the process count change a result? The paper rehearsal (`profiles/paper-rehearsal.yaml`) run twice by
`dvc repro` with papermill, in two copies of the repository: once as committed (`processes: 2`: the features stage,
every mid-training run and every VLA launched on two gloo processes), once with one process everywhere
(`processes: 1`, `vla.processes: 1`, `vla.jobs: 1`), both from one snapshot of a commit. It prints, per metrics
file, how many numbers the two runs share, how many differ by more than `--tol` (relative, or absolute near 0) and
the largest relative difference, leaving out timings and the process counts themselves, and whether the selected
mixtures are the same ids.

    python benchmarks/rehearsal_processes.py [--keep DIR]

About 20 minutes on the 2-core CPU machine (two rehearsals, one after the other). Exit status 1 when a selection
differs or a number differs by more than `--tol` (relative, default 1e-3): data-parallel training reduces gradients
in another order than one process does, so the last digits may move, and nothing more should."""
import argparse, json, math, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO/'tests'))
from paper_fixtures import prepare_rehearsal  # noqa: E402

# numbers that measure the machine or the launch, not the result
SKIP = re.compile(r'(seconds|per_s|_s$|time|processes|accumulation|jobs|workers|threads|started|finished|host|'
                  r'python|torch_version|commit|path|dir$|^.*\.vlm$|computed_shards)')


def run(cmd: list[str], cwd: Path, env: dict) -> None:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f'{" ".join(cmd)} failed ({r.returncode}) in {cwd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')


def snapshot(commit: str, d: Path) -> None:
    "The repository's files at `commit` in `d` (both runs start from the same snapshot, whatever the work tree does meanwhile)."
    d.mkdir(parents=True)
    archive = subprocess.run(['git', 'archive', '--format=tar', commit], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(['tar', '-x', '-C', str(d)], input=archive, check=True)


def rehearse(src: Path, d: Path, one_process: bool) -> float:
    "Set up the rehearsal in `d`, a copy of `src` (one process everywhere if asked), and run `dvc repro`; its wall-clock seconds."
    shutil.copytree(src, d, symlinks=True)

    def one(raw):
        raw['processes'] = 1; raw['vla']['processes'] = 1; raw['vla']['jobs'] = 1
    env, _ = prepare_rehearsal(d, one if one_process else None)
    t0 = time.time()
    run(['dvc', 'repro', '--pull'], d, env)
    return time.time() - t0


def leaves(x, prefix: str = '') -> dict[str, float]:
    "Every number in a JSON value, by its path."
    if isinstance(x, dict): return {k: v for key, val in x.items() for k, v in leaves(val, f'{prefix}.{key}').items()}
    if isinstance(x, list): return {k: v for i, val in enumerate(x) for k, v in leaves(val, f'{prefix}[{i}]').items()}
    if isinstance(x, bool) or not isinstance(x, (int, float)): return {}
    return {prefix: float(x)}


def compare(a: Path, b: Path, tol: float) -> tuple[list[dict], bool]:
    "Per metrics file: numbers compared, equal, differing beyond `tol`, the largest relative difference; and whether all agree."
    rows, ok = [], True
    for f in sorted((a/'metrics').rglob('*.json')):
        g = b/f.relative_to(a)
        if not g.is_file(): rows.append({'file': str(f.relative_to(a)), 'note': 'missing in the 1-process run'}); ok = False; continue
        la, lb = leaves(json.loads(f.read_text())), leaves(json.loads(g.read_text()))
        keys = [k for k in la.keys() & lb.keys() if not SKIP.search(k.split('.')[-1]) and not SKIP.search(k)]
        pairs = {k: (la[k], lb[k]) for k in keys if not (math.isnan(la[k]) and math.isnan(lb[k]))}
        rel = {k: abs(a - b) / max(abs(a), abs(b), 1e-12) for k, (a, b) in pairs.items()}
        worst = max(rel, key=rel.get) if rel else None
        beyond = sum(abs(a - b) > tol * max(1.0, abs(a), abs(b)) for a, b in pairs.values())  # relative, absolute near 0
        ok &= beyond == 0
        rows.append({'file': str(f.relative_to(a)), 'numbers': len(keys), 'equal': sum(v == 0 for v in rel.values()),
                     f'beyond {tol:g}': beyond, 'largest relative difference': round(rel[worst], 8) if worst else 0.0,
                     'where': worst or ''})
    for ids in sorted((a/'artifacts/select').glob('*/ids.txt')):
        same = ids.read_text() == (b/ids.relative_to(a)).read_text()
        ok &= same
        rows.append({'file': str(ids.relative_to(a)), 'note': 'same ids' if same else 'DIFFERENT ids'})
    return rows, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--keep', type=Path, help='run in this folder and keep both copies (default: a temporary one)')
    ap.add_argument('--tol', type=float, default=1e-3)
    ap.add_argument('--commit', default='HEAD', help='the commit both runs start from')
    a = ap.parse_args()
    base = a.keep or Path(tempfile.mkdtemp(prefix='emt-processes-'))
    commit = subprocess.run(['git', 'rev-parse', '--short', a.commit], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    src, two, one = base/'src', base/'two', base/'one'
    for d in (src, two, one): shutil.rmtree(d, ignore_errors=True)
    snapshot(commit, src)
    t2 = rehearse(src, two, one_process=False)
    t1 = rehearse(src, one, one_process=True)
    rows, ok = compare(two, one, a.tol)
    print(f'commit {commit}; dvc repro of the rehearsal: 2 processes {t2:.0f} s, 1 process {t1:.0f} s')
    for r in rows: print(json.dumps(r))
    print('agree' if ok else 'DIFFER')
    if not a.keep: shutil.rmtree(base, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
