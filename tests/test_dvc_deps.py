"""Each pipeline stage lists, as DVC dependencies, every emt module its notebook imports, directly or through other
emt modules: a change to any of them makes `dvc repro` rerun the stage."""
import ast, json, re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def emt_imports(source: str, package_module: str | None = None) -> set[str]:
    "The emt modules `source` imports (`import emt.x`, `from emt.x import`, `from emt import x`, `from .x import`)."
    found = set()
    try: tree = ast.parse(source)
    except SyntaxError: return found  # a notebook cell with cell magics
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split('.')[1] for a in node.names if a.name.startswith('emt.')}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1 and package_module: found |= {mod.split('.')[0]} if mod else {a.name for a in node.names}
            elif mod == 'emt': found |= {a.name for a in node.names}
            elif mod.startswith('emt.'): found.add(mod.split('.')[1])
    return {m for m in found if (ROOT/'emt'/f'{m}.py').exists()}


def notebook_imports(nb: Path) -> set[str]:
    cells = json.loads(nb.read_text())['cells']
    code = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
    return set().union(*(emt_imports('\n'.join(l for l in c.splitlines() if not l.lstrip().startswith(('%', '!'))))
                         for c in code))


def closure(modules: set[str]) -> set[str]:
    "`modules` and every emt module they import, transitively."
    todo, seen = list(modules), set()
    while todo:
        m = todo.pop()
        if m in seen: continue
        seen.add(m)
        todo += emt_imports((ROOT/'emt'/f'{m}.py').read_text(), m) - seen
    return seen


def stages():
    for name, st in yaml.safe_load((ROOT/'dvc.yaml').read_text())['stages'].items():
        nb = re.search(r'papermill (\S+\.ipynb)', st['cmd'])
        if nb: yield name, ROOT/nb.group(1), {d for d in st.get('deps', []) if isinstance(d, str)}


def missing_deps(nb: Path, deps: set[str]) -> list[str]:
    return sorted(f'emt/{m}.py' for m in closure(notebook_imports(nb)) if f'emt/{m}.py' not in deps)


@pytest.mark.parametrize('stage,nb,deps', list(stages()), ids=[s[0] for s in stages()])
def test_stage_deps_cover_every_emt_module_it_imports(stage, nb, deps):
    assert not (gone := missing_deps(nb, deps)), f'dvc.yaml stage {stage!r} does not list {gone}, which {nb.name} imports'


def test_the_check_catches_a_missing_module(tmp_path):
    "The report notebook imports emt.eval; a dvc.yaml without emt/eval.py (and what it imports) fails the check."
    nb = ROOT/'nbs'/'14_report.ipynb'
    full = closure(notebook_imports(nb))
    assert {'eval', 'core', 'params'} <= full
    deps = {f'emt/{m}.py' for m in full} - {'emt/eval.py'}
    assert missing_deps(nb, deps) == ['emt/eval.py']
    assert emt_imports('from .core import x\nfrom . import data', 'sft') == {'core', 'data'}
