"""The package's structure: no import cycles among emt's modules (imports inside functions included), no module that
imports another's private names, test fixtures only in emt.fixtures and emt.toy_projects, and ruff's findings at zero."""
import ast, re, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'emt'


def module_imports(path: Path, package: str = 'emt') -> list[tuple[str, str, int]]:
    "(imported module, imported name or '', line) for every import of `package` in `path`, at any depth."
    me = path.stem
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name.split('.')[1], '', node.lineno) for a in node.names if a.name.startswith(package + '.')]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level: mod = f'{package}.{mod}' if mod else package
            if mod == package:  # from emt import evaluation: the names are modules
                out += [(a.name, '', node.lineno) for a in node.names]
            elif mod.startswith(package + '.'):
                out += [(mod.split('.')[1], a.name, node.lineno) for a in node.names]
    return [(m, n, l) for m, n, l in out if m != me]


def import_graph(folder: Path = PKG) -> dict[str, set[str]]:
    "Module -> the emt modules it imports."
    mods = {p.stem for p in folder.glob('*.py') if not p.name.startswith('_')}
    return {m: {i for i, _, _ in module_imports(folder/f'{m}.py') if i in mods} for m in mods}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    "The strongly connected components with more than one module (Tarjan), each sorted."
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index: visit(v)
    return out


def private_imports(folder: Path = PKG) -> list[str]:
    "Imports of another emt module's private names (`from emt.x import _y`)."
    return [f'{p.name}:{l}: {m}.{n}' for p in sorted(folder.glob('*.py')) if not p.name.startswith('_')
            for m, n, l in module_imports(p) if n.startswith('_')]


FIXTURE = re.compile(r'^_?(toy|fake|stub)_|^(Line|Constant|Fake|Toy)[A-Z]')

def fixtures_outside(folder: Path = PKG) -> list[str]:
    "Top-level definitions that look like test fixtures in library modules, and library imports of the fixture modules."
    out = []
    for p in sorted(folder.glob('*.py')):
        if p.name.startswith('_') or p.stem in ('fixtures', 'toy_projects'): continue
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and FIXTURE.match(node.name):
                out.append(f'{p.name}:{node.lineno}: {node.name}')
        out += [f'{p.name}:{l}: imports emt.{m}' for m, _, l in module_imports(p) if m in ('fixtures', 'toy_projects')]
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_check_finds_a_cycle(tmp_path):
    (tmp_path/'a.py').write_text('from .b import f\n')
    (tmp_path/'b.py').write_text('def f():\n    from emt.c import g\n')  # a cycle closed inside a function
    (tmp_path/'c.py').write_text('import emt.a\n')
    (tmp_path/'d.py').write_text('from emt import a\n')
    assert cycles(import_graph(tmp_path)) == [['a', 'b', 'c']]


def test_no_private_imports():
    assert private_imports() == []


def test_private_import_check_fails_on_one(tmp_path):
    (tmp_path/'a.py').write_text('from emt.a import _own\n\ndef f():\n    from .b import _helper\n')
    assert private_imports(tmp_path) == ['a.py:4: b._helper']


def test_fixtures_only_in_emt_fixtures():
    assert fixtures_outside() == []
    import emt.fixtures as fx, emt.toy_projects as tp
    assert {'toy_png_bytes', 'toy_frames', 'LineBench', 'push_right'} <= set(fx.__all__)
    assert {'toy_base_vlm_project', 'toy_vla_project'} <= set(tp.__all__)


def test_fixture_check_fails_on_one(tmp_path):
    (tmp_path/'a.py').write_text('def toy_project(d): ...\nclass LineEnv: ...\ndef toy(): ...\n')
    (tmp_path/'b.py').write_text('def f():\n    from emt.fixtures import toy_frames\n')
    assert fixtures_outside(tmp_path) == ['a.py:1: toy_project', 'a.py:2: LineEnv', 'b.py:2: imports emt.fixtures']


@pytest.mark.skipif(shutil.which('ruff') is None and not (Path(sys.executable).parent/'ruff').exists(),
                    reason='ruff is not installed (make install installs it)')
def test_ruff_finds_nothing():
    ruff = shutil.which('ruff') or str(Path(sys.executable).parent/'ruff')
    r = subprocess.run([ruff, 'check', 'emt', 'tests', 'benchmarks'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _cell_sizes():
    import importlib.util
    spec = importlib.util.spec_from_file_location('cell_sizes', ROOT/'benchmarks/cell_sizes.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def size_problems(nbs: list[Path]) -> list[str]:
    "Where the notebooks miss the cell-size aims (benchmarks/cell_sizes.py): median, long cells, undocumented runs."
    cs = _cell_sizes(); m = cs.measure(nbs)
    return [f"{k}: {m[k]} (aim: {'at most' if k == 'longest undocumented run' else 'under'} {t})"
            for k, t in cs.TARGETS.items()
            if (m[k] > t if k == 'longest undocumented run' else m[k] >= t)]


def test_cells_meet_the_size_aims():
    assert size_problems(sorted((ROOT/'nbs').glob('*.ipynb'))) == []


def test_cell_size_check_fails_on_big_cells(tmp_path):
    import json
    body = '#| export\n' + '\n'.join(f'x{i} = {i}' for i in range(60))
    cells = [{'cell_type': 'code', 'source': body, 'metadata': {}, 'outputs': [], 'execution_count': None}] * 7
    (tmp_path/'a.ipynb').write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    assert [p.split(':')[0] for p in size_problems([tmp_path/'a.ipynb'])] == [
        'median lines', 'share over 40 lines', 'longest undocumented run']
