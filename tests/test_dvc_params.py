"""Each params key a dvc.yaml stage tracks is in every profile as written, and each stage tracks the params it reads.

DVC reads `params.yaml` as written, without the defaults of the schema in `emt.params`: a stage that tracks a key the
profile leaves out (in its `params:` list, or as a `${...}` in its command) stops `dvc repro` with "Parameters '<key>'
are missing from 'params.yaml'". Any profile in `profiles/` may become `params.yaml` (`emt params use`), so each one
must set every tracked key, whether or not its own run reads it.

The converse, that a stage tracks every params key its code reads, is checked statically: from the stage cells of the
stage's notebook, calls that pass the params on (`run_eval(P)`, `make_adapter(spec, P)`, `source_groups(P)`) are
followed into the emt functions they name, and every attribute chain on the params there (`P.corpus.vla.camera`) is
a read, cut where it leaves the schema (`P.data.vlm_sources[0].name` reads `data.vlm_sources`; an alias `E = P.eval`
reads the whole of `eval`). What this does not see: params stored on an object or in a container and read from there,
and params passed to anything but a top-level emt function, named plainly or as `module.name`. `profile` and `offline`
are exempt: `profile` is the label written into metrics (the stages up to select leave it untracked on purpose, so that
a profile that differs only in later sections reuses their outputs), `offline` only says whether the model hub may
be reached, `require_gpu` only whether a stage may start without a GPU, and `processes` only how many processes share
each training run's global batch (the same run: tests/test_sft.py checks 2 processes against 1)."""
import ast, json, re, typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from emt.params import Params

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT/'dvc.yaml').read_text())
PROFILES = [*sorted(f'profiles/{p.name}' for p in (ROOT/'profiles').glob('*.yaml')), 'params.yaml']
STAGES = list(DVC['stages'])
UNTRACKED = {'profile', 'offline', 'require_gpu', 'processes'}  # read by stages, never tracked (see the module's docstring)
PARAMS_NAMES = {'P', 'params'}      # what the stage cells call the loaded params


def tracked_keys(stage: dict) -> list[str]:
    "The params keys (dotted) a dvc.yaml stage reads from params.yaml: its `params:` list and its command's `${...}`."
    keys = []
    for p in stage.get('params', []):
        if isinstance(p, str): keys.append(p)
        elif isinstance(p, dict): keys += [k for f, ks in p.items() if f == 'params.yaml' for k in ks or []]
    return keys + re.findall(r'\$\{\s*([\w.]+)\s*\}', stage['cmd'])


def missing_keys(raw: dict, keys: list[str]) -> list[str]:
    "The dotted `keys` that the YAML mapping `raw` does not set (a plain section name: the section)."
    out = []
    for key in keys:
        node = raw
        for part in key.split('.'):
            if not isinstance(node, dict) or part not in node: out.append(key); break
            node = node[part]
    return out


@pytest.mark.parametrize('profile,stage', [(p, s) for p in PROFILES for s in STAGES],
                         ids=[f'{Path(p).stem}-{s}' for p in PROFILES for s in STAGES])
def test_every_params_key_a_stage_tracks_is_in_the_profile(profile, stage):
    raw = yaml.safe_load((ROOT/profile).read_text())
    assert not (gone := missing_keys(raw, tracked_keys(DVC['stages'][stage]))), \
        f'dvc.yaml stage {stage!r} tracks {gone}, which {profile} does not set: `dvc repro` stops on it'


def test_the_presence_check_catches_a_missing_key():
    raw = yaml.safe_load((ROOT/'profiles/embedded.yaml').read_text())
    eval_keys = tracked_keys(DVC['stages']['eval'])
    assert 'corpus.vla' in eval_keys and missing_keys(raw, eval_keys) == []
    assert missing_keys({k: v for k, v in raw.items() if k != 'corpus'}, eval_keys) == ['corpus.vla']
    assert missing_keys({**raw, 'corpus': {'out': 'data'}}, eval_keys) == ['corpus.vla']
    assert missing_keys({'data': 'raise'}, ['data.on_error', 'data', 'seed']) == ['data.on_error', 'seed']
    assert tracked_keys({'cmd': 'x -p a ${data.on_error} -p b ${ features.layer }',
                         'params': ['seed', {'params.yaml': ['gap']}, {'other.yaml': ['k']}]}) == \
        ['seed', 'gap', 'data.on_error', 'features.layer']


def _model(annotation) -> type[BaseModel] | None:
    return next((t for t in (annotation, *typing.get_args(annotation))
                 if isinstance(t, type) and issubclass(t, BaseModel)), None)


def schema_path(attrs: list[str]) -> tuple[str, ...]:
    "The longest prefix of an attribute chain on the params that names params keys (it stops where it leaves the schema)."
    path, model = [], Params
    for a in attrs:
        if model is None or a not in model.model_fields: break
        path.append(a)
        model = _model(model.model_fields[a].annotation)
    return tuple(path)


class Code:
    "Modules' parsed sources: their top-level functions and what their imports name."
    def __init__(self, sources: dict[str, str]): # module name -> source
        self.trees = {m: ast.parse(s) for m, s in sources.items()}
        self.modules = {m for m in sources if (ROOT/'emt'/f'{m}.py').exists()}
        self.functions = {m: {n.name: n for n in t.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                          for m, t in self.trees.items()}
        self.imports = {m: self._imports(m, t) for m, t in self.trees.items()}

    def _imports(self, module: str, tree: ast.AST) -> dict[str, tuple[str, str | None]]:
        "local name -> (module, function), or (module, None) for a module; emt modules only, at any depth."
        out = {}
        for n in ast.walk(tree):
            if not isinstance(n, ast.ImportFrom): continue
            mod = n.module or ''
            if n.level == 1 or mod == 'emt' or mod.startswith('emt.'):
                target = mod.split('.')[-1] if mod not in ('', 'emt') else None
                for a in n.names:
                    name = a.asname or a.name
                    if target is None: out[name] = (a.name, None)
                    else: out[name] = (target, a.name)
        return {k: v for k, v in out.items() if v[0] in self.trees}

    def callee(self, module: str, func: ast.expr) -> tuple[str, ast.FunctionDef] | None:
        "The function a call in `module` names, where it is a top-level function of one of the modules."
        if isinstance(func, ast.Name):
            if func.id in self.functions[module]: return module, self.functions[module][func.id]
            mod, name = self.imports[module].get(func.id, (None, None))
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            mod, sub = self.imports[module].get(func.value.id, (None, None))
            name = func.attr if sub is None else None
        else: return None
        if mod and name and name in self.functions[mod]: return mod, self.functions[mod][name]
        return None

    def reads(self, module: str, node: ast.AST, names: set[str]) -> dict[tuple[str, ...], str]:
        """The params keys read under `node` of `module` through the variables `names`, and through the functions it
        passes them to: key -> where (the first place it is read)."""
        out, todo, seen = {}, [(module, node, frozenset(names))], set()
        while todo:
            mod, n, ns = todo.pop()
            if (mod, id(n), ns) in seen: continue
            seen.add((mod, id(n), ns))
            parents = {c: p for p in ast.walk(n) for c in ast.iter_child_nodes(p)}
            for x in ast.walk(n):
                if isinstance(x, ast.Name) and x.id in ns:
                    attrs, cur = [], x
                    while isinstance(parents.get(cur), ast.Attribute) and parents[cur].value is cur:
                        cur = parents[cur]; attrs.append(cur.attr)
                    if (key := schema_path(attrs)):
                        out.setdefault(key, f'emt/{mod}.py:{x.lineno}' if mod in self.modules else f'{mod} stage cells')
                elif isinstance(x, ast.Call) and (target := self.callee(mod, x.func)):
                    tmod, fn = target
                    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
                    passed = {params[i] for i, a in enumerate(x.args)
                              if i < len(params) and isinstance(a, ast.Name) and a.id in ns}
                    passed |= {k.arg for k in x.keywords if isinstance(k.value, ast.Name) and k.value.id in ns
                               and k.arg in params + [a.arg for a in fn.args.kwonlyargs]}
                    if passed: todo.append((tmod, fn, frozenset(passed)))
        return out


def _stage_notebook(stage: dict) -> Path:
    "The notebook a stage executes: its one `nbs/*.ipynb` dependency, as `emt stage` finds it."
    nbs = [d for d in stage.get('deps', []) if isinstance(d, str) and d.startswith('nbs/') and d.endswith('.ipynb')]
    assert len(nbs) == 1, stage['cmd']
    return ROOT/nbs[0]


def stage_cells(nb: Path) -> str:
    """A notebook's `#| stage` cells, after the imports of all its cells and an import of every function the module it
    exports defines (shell and magic lines left out)."""
    cells = ['\n'.join(l for l in ''.join(c['source']).splitlines() if not l.lstrip().startswith(('%', '!')))
             for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
    exp = next(m.group(1) for c in cells if (m := re.search(r'#\|\s*default_exp\s+(\w+)', c)))
    defined = [n.name for n in ast.parse((ROOT/'emt'/f'{exp}.py').read_text()).body if isinstance(n, ast.FunctionDef)]
    imports = []
    for c in cells:
        try: imports += [ast.unparse(n) for n in ast.parse(c).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        except SyntaxError: pass
    return '\n'.join([f'from emt.{exp} import {", ".join(defined)}', *imports,
                      *(c for c in cells if re.match(r'\s*#\|\s*stage\b', c))])


def stage_code(stage: dict) -> tuple[Code, str]:
    "The emt modules and the stage's notebook (its stage cells), and the notebook's name in it."
    nb = _stage_notebook(stage)
    emt = {p.stem: p.read_text() for p in (ROOT/'emt').glob('*.py') if p.stem != '_modidx'}
    return Code(emt | {nb.name: stage_cells(nb)}), nb.name


def stage_reads(stage: dict) -> dict[tuple[str, ...], str]:
    "The params keys the stage's code reads, from its stage cells on: key -> where."
    code, nb = stage_code(stage)
    return code.reads(nb, code.trees[nb], PARAMS_NAMES)


def untracked_reads(stage: dict) -> list[str]:
    "The params keys the stage's code reads that it does not track."
    tracked = {tuple(k.split('.')) for k in tracked_keys(stage)}
    reads = stage_reads(stage)
    return sorted(f'{".".join(k)} ({where})' for k, where in reads.items()
                  if k[0] not in UNTRACKED and not any(k[:len(t)] == t for t in tracked))


NOTEBOOK_STAGES = [s for s in STAGES if _stage_notebook(DVC['stages'][s])]


@pytest.mark.parametrize('stage', NOTEBOOK_STAGES)
def test_each_stage_tracks_the_params_its_code_reads(stage):
    st = DVC['stages'][stage]
    assert stage_reads(st), f'{stage}: the check found no params read at all'
    assert not (gone := untracked_reads(st)), f'dvc.yaml stage {stage!r} reads params it does not track: {gone}'


def test_the_read_check_follows_the_params_and_catches_an_untracked_read():
    "Without `corpus.vla`, the eval stage reads Meta-World's camera, frame size and episode length untracked."
    st = DVC['stages']['eval']
    reads = stage_reads(st)
    assert {('eval',), ('eval', 'benchmarks'), ('vla', 'seeds'), ('seed',), ('corpus', 'vla', 'camera')} <= set(reads)
    assert reads[('corpus', 'vla', 'camera')].startswith('emt/evaluation.py:')  # stage cell -> run_eval -> make_adapter
    assert reads[('eval', 'benchmarks')] == '13_evaluation.ipynb stage cells'
    dropped = {**st, 'params': [k for k in st['params'] if k != 'corpus.vla']}
    assert [r.split(' ')[0] for r in untracked_reads(dropped)] == \
        ['corpus.vla.camera', 'corpus.vla.image_size', 'corpus.vla.max_steps']

    toy = Code({'<stage>': 'from emt.x import run_x\nP = load_params(f)\nrun_x(P)\n',
                'x': 'from .y import groups\nfrom . import y\n'
                     'def run_x(params):\n    E = params.gap\n    params.data.vlm_sources[0].name\n'
                     '    params.model_dump(); params.select.k.bit_length()\n    helper(1, cfg=params)\n'
                     '    groups(params)\n    y.other(params)\n'
                     'def helper(n, cfg): return cfg.vla.recipe.lr\n'
                     'def unused(P): return P.ability.per_source\n',
                'y': 'def groups(Q): return Q.seed\ndef other(P, Q=None): return P.features.layer\n'})
    assert set(toy.reads('<stage>', toy.trees['<stage>'], PARAMS_NAMES)) == \
        {('gap',), ('data', 'vlm_sources'), ('select', 'k'), ('vla', 'recipe', 'lr'), ('seed',), ('features', 'layer')}
