"""Each pipeline stage lists, as DVC dependencies, every emt module its notebook imports, directly or through other
emt modules: a change to any of them makes `dvc repro` rerun the stage."""
import ast, json, re
from pathlib import Path

import pytest
import yaml

from emt.stage import stage_spec

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
        yield name, ROOT/stage_spec(name).notebook, {d for d in st.get('deps', []) if isinstance(d, str)}


def missing_deps(nb: Path, deps: set[str]) -> list[str]:
    return sorted(f'emt/{m}.py' for m in closure(notebook_imports(nb)) if f'emt/{m}.py' not in deps)


@pytest.mark.parametrize('stage,nb,deps', list(stages()), ids=[s[0] for s in stages()])
def test_stage_deps_cover_every_emt_module_it_imports(stage, nb, deps):
    assert not (gone := missing_deps(nb, deps)), f'dvc.yaml stage {stage!r} does not list {gone}, which {nb.name} imports'


def test_the_check_catches_a_missing_module(tmp_path):
    "The report notebook imports emt.evaluation; a dvc.yaml without emt/evaluation.py (and what it imports) fails the check."
    nb = ROOT/'nbs'/'14_report.ipynb'
    full = closure(notebook_imports(nb))
    assert {'evaluation', 'core', 'params'} <= full
    deps = {f'emt/{m}.py' for m in full} - {'emt/evaluation.py'}
    assert missing_deps(nb, deps) == ['emt/evaluation.py']
    assert emt_imports('from .core import x\nfrom . import data', 'sft') == {'core', 'data'}


def _under(path: str, folders) -> bool:
    return any(path == f or path.startswith(f.rstrip('/') + '/') for f in folders)


def scorer_wiring_problems(dvc: dict) -> list[str]:
    "Each scoring method's scores folder is an output of the stage SCORERS names and an input of the select stage."
    from emt.params import SCORERS
    st = dvc['stages']
    outs = lambda s: [o if isinstance(o, str) else next(iter(o)) for o in st[s].get('outs', [])]
    out = []
    for method, (stage, folder) in SCORERS.items():
        if stage not in st: out.append(f'{method}: no stage {stage!r}')
        elif not _under(folder, outs(stage)): out.append(f'{method}: {folder} is not an output of {stage}')
        if not _under(folder, [d for d in st['select']['deps'] if isinstance(d, str)]):
            out.append(f'{method}: {folder} is not an input of select')
    return out


def test_every_scoring_method_is_wired_from_its_stage_to_select():
    dvc = yaml.safe_load((ROOT/'dvc.yaml').read_text())
    assert scorer_wiring_problems(dvc) == []
    dvc['stages']['select']['deps'].remove('artifacts/ppl')  # the check fails when a scorer's folder is not an input
    assert scorer_wiring_problems(dvc) == [f'{m}: artifacts/ppl/scores is not an input of select' for m in ('vla_ppl', 'delta_ppl')]


def stage_io_problems(dvc: dict) -> list[str]:
    "Where dvc.yaml and emt's STAGE_IO disagree on what a stage reads and writes under artifacts/."
    from emt.core import ARTIFACTS, STAGE_IO
    st, out = dvc['stages'], []
    name = lambda o: o if isinstance(o, str) else next(iter(o))
    for stage, (ins, outs) in STAGE_IO.items():
        if stage not in st: out.append(f'{stage}: not in dvc.yaml'); continue
        deps = {d for d in st[stage].get('deps', []) if d.startswith('artifacts/')}
        declared = {name(o) for o in st[stage].get('outs', []) if name(o).startswith('artifacts/')}
        if deps != {ARTIFACTS[k] for k in ins}: out.append(f'{stage}: deps {sorted(deps)} != STAGE_IO {sorted(ARTIFACTS[k] for k in ins)}')
        if declared != {ARTIFACTS[k] for k in outs}:
            out.append(f'{stage}: outs {sorted(declared)} != STAGE_IO {sorted(ARTIFACTS[k] for k in outs)}')
    return out + [f'{s}: not in STAGE_IO' for s in st if s not in STAGE_IO]


def test_dvc_yaml_wires_the_stages_as_emt_declares():
    dvc = yaml.safe_load((ROOT/'dvc.yaml').read_text())
    assert stage_io_problems(dvc) == []
    dvc['stages']['vla']['deps'].remove('artifacts/midtrain')  # the check fails on a dropped input
    assert stage_io_problems(dvc) == ["vla: deps ['artifacts/base_vlm', 'artifacts/data'] != STAGE_IO "
                                      "['artifacts/base_vlm', 'artifacts/data', 'artifacts/midtrain']"]


def test_artifact_paths_are_written_once():
    "No emt module spells an artifacts/ path: they come from emt.core.ARTIFACTS."
    found = [f'{p.name}:{i}' for p in sorted((ROOT/'emt').glob('*.py')) if p.name not in ('core.py', '_modidx.py')
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"""['"]artifacts/""", line.split('#')[0])]
    assert not found, f'artifacts/ paths spelt out in {found}'


def report_ladders_missing(dvc: dict, params: dict) -> list[str]:
    "The dose ladders the params show in the report that the report stage does not depend on."
    deps = set(dvc['stages']['report']['deps'])
    return sorted(set((params.get('report') or {}).get('dose_ladders') or []) - deps)


@pytest.mark.parametrize('params_file', ['params.yaml', *sorted(str(p.relative_to(ROOT)) for p in (ROOT/'profiles').glob('*.yaml'))])
def test_the_report_depends_on_every_dose_ladder_it_shows(params_file):
    "A ladder the report reads is a DVC dependency of the report, so a new `emt dose` result makes `dvc repro` redo it."
    dvc = yaml.safe_load((ROOT/'dvc.yaml').read_text())
    params = yaml.safe_load((ROOT/params_file).read_text())
    assert not (gone := report_ladders_missing(dvc, params)), f'{params_file}: report.dose_ladders {gone} not in the report deps of dvc.yaml'
    for p in (params.get('report') or {}).get('dose_ladders') or []: assert (ROOT/p).is_file(), p
    # and the check fails where it should: a ladder that dvc.yaml does not list
    params = {'report': {'dose_ladders': ['results/elsewhere/ladder.json']}}
    assert report_ladders_missing(dvc, params) == ['results/elsewhere/ladder.json']
