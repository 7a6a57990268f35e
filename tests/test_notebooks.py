"""Notebook hygiene that the tools rely on: imports in their own cells, stage cells flagged, parameters tagged."""
import ast, json, re
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parents[1]/'nbs').glob('*.ipynb'))
EXPORT = re.compile(r'^\s*#\|\s*(export|exports|exporti|exec_doc)\b', re.MULTILINE)


def _code_cells(nb_path):
    nb = json.loads(nb_path.read_text())
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] == 'code':
            yield i, c, ''.join(c['source']) if isinstance(c['source'], list) else c['source']


def _parse(src):
    body = '\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!')))
    try: return ast.parse(body).body
    except SyntaxError: return []


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_imports_in_their_own_cells(nb):
    "The docs builder runs every cell that imports something: such cells must do nothing else (STYLE.md)."
    bad = []
    for i, c, src in _code_cells(nb):
        if EXPORT.search(src): continue
        top = _parse(src)
        imports = [t for t in top if isinstance(t, (ast.Import, ast.ImportFrom))]
        nested = any(isinstance(n, (ast.Import, ast.ImportFrom)) for t in top for n in ast.walk(t)
                     if not isinstance(t, (ast.Import, ast.ImportFrom)))   # nbdev runs a cell with an import anywhere
        if (imports and len(imports) != len(top)) or nested: bad.append(f'cell {i}: {src.strip().splitlines()[0][:80]}')
    assert not bad, f'{nb.name}: cells mixing imports with other code:\n' + '\n'.join(bad)


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_parameters_cell_is_tagged_and_stage_cells_flagged(nb):
    "A stage notebook's papermill parameters cell keeps its tag, and the cells that run the stage are flagged."
    cells = list(_code_cells(nb))
    tagged = [k for k, (i, c, _) in enumerate(cells) if 'parameters' in c.get('metadata', {}).get('tags', [])]
    if not tagged: return
    assert len(tagged) == 1, f'{nb.name}: expected one cell tagged "parameters", found {len(tagged)}'
    after = cells[tagged[0] + 1:]
    runs = [(i, src) for i, c, src in after if re.search(r'\brun_\w+\(', src)]
    assert runs, f'{nb.name}: a parameters cell but no cell after it runs the stage'
    for i, src in runs:
        assert re.match(r'\s*#\|\s*stage\b', src), f'{nb.name}: cell {i} runs the stage but is not flagged `#| stage`'
