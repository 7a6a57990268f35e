"""How the notebooks are cut into cells, measured the way issue-sized style targets are stated: lines per exported
cell (median, 90th percentile, max), the share of exported cells over 40 lines, the share with 3 or more top-level
definitions, and the longest run of exported cells with no prose or example between them. Prints one line per
notebook (with --per-notebook) and the totals, beside the targets: median under 12 lines, under 5% of cells over
40 lines, no run longer than 5.

    python benchmarks/cell_sizes.py                  # the project's nbs/
    python benchmarks/cell_sizes.py --per-notebook   # and each notebook
    python benchmarks/cell_sizes.py path/to/nbs      # another project's notebooks, to compare
"""
import argparse, ast, json, re, statistics
from pathlib import Path

EXPORT = re.compile(r'^#\|\s*export', re.M)
TARGETS = {'median lines': 12, 'share over 40 lines': 0.05, 'longest undocumented run': 5}


def cells(nb: Path) -> list[tuple[str, str]]:
    "(kind, source) of every cell, kind one of 'export', 'code', 'markdown'."
    out = []
    for c in json.loads(nb.read_text())['cells']:
        src = ''.join(c['source'])
        kind = c['cell_type'] if c['cell_type'] != 'code' else ('export' if EXPORT.search(src) else 'code')
        out.append((kind, src))
    return out


def code_lines(src: str) -> int:
    "Lines of an exported cell, its directives and blank lines left out."
    return sum(1 for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#|'))


def definitions(src: str) -> int:
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith('#|')))
    except SyntaxError: return 0
    return sum(isinstance(t, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for t in tree.body)


def longest_run(kinds: list[str]) -> int:
    "The most exported cells in a row with nothing else between them."
    best = run = 0
    for k in kinds:
        run = run + 1 if k == 'export' else 0
        best = max(best, run)
    return best


def measure(nbs: list[Path]) -> dict:
    sizes, defs, runs = [], [], {}
    for nb in nbs:
        cs = cells(nb)
        ex = [s for k, s in cs if k == 'export' and not re.match(r'\s*#\|\s*export\s*\n\s*(from|import)\b', s)]
        sizes += [code_lines(s) for s in ex]; defs += [definitions(s) for s in ex]
        runs[nb.name] = longest_run([k for k, _ in cs])
    if not sizes: raise SystemExit('no exported cells found')
    q = statistics.quantiles(sizes, n=10)
    worst = max(runs, key=runs.get)
    return {'notebooks': len(nbs), 'exported cells': len(sizes), 'median lines': statistics.median(sizes),
            'p90 lines': q[-1], 'max lines': max(sizes), 'share over 40 lines': round(sum(s > 40 for s in sizes) / len(sizes), 3),
            'share with 3+ definitions': round(sum(d >= 3 for d in defs) / len(defs), 3),
            'longest undocumented run': runs[worst], 'in': worst}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('folder', nargs='?', default=str(Path(__file__).resolve().parents[1]/'nbs'))
    p.add_argument('--per-notebook', action='store_true')
    a = p.parse_args()
    nbs = sorted(Path(a.folder).glob('*.ipynb'))
    if a.per_notebook:
        for nb in nbs:
            try: m = measure([nb])
            except SystemExit: continue
            print(f"{nb.name:32s} cells {m['exported cells']:3d}  median {m['median lines']:5.1f}  max {m['max lines']:4d}  "
                  f"over 40: {m['share over 40 lines']:.0%}  run {m['longest undocumented run']}")
    m = measure(nbs)
    print(json.dumps(m, indent=1))
    for k, t in TARGETS.items():
        print(f"{k}: {m[k]} (target: {'under' if k != 'longest undocumented run' else 'at most'} {t})")


if __name__ == '__main__': main()
