"""The guides against the code: every params key, shell command and Python snippet of the getting-started page, the
paper-scale run book and the README must work with the package as it is.

Params keys are checked against the schema in `emt.params` (read from the code, so new keys are known at once); `-S`
overrides go through DVC's own override machinery onto the profile the page is about; commands are parsed by the
parsers of the programs they call (emt, dvc, accelerate, hf, argparse `main`s of `python -m emt.*`).
"""
import argparse, ast, contextlib, copy, importlib, importlib.util, io, json, math, os, re, shlex, shutil, typing
from pathlib import Path

import pytest
import yaml

os.environ['HF_HUB_OFFLINE'] = '1'
from pydantic import BaseModel

from emt.params import Params, Recipe, parse_params

REPO = Path(__file__).resolve().parents[1]
PAGES = {'92_getting_started.ipynb': 'embedded', '93_paper_scale.ipynb': 'paper', 'index.ipynb': 'embedded'}
KNOWN_TOOLS = {'git', 'make', 'cd', 'source', '.', 'cat', 'tar', 'mkdir', 'export', 'wget', 'curl', 'srun',
               'img2dataset'}  # the downloader LAION's and CC-12M's URL lists are fetched with, installed on its own
PYTHONS = {'python', 'python3', 'python3.11'}
GIT_REVS = {'HEAD', 'workspace', 'main'}
FILE_SUFFIXES = {'dvc', 'yaml', 'yml', 'json', 'jsonl', 'py', 'csv', 'md', 'txt', 'png', 'svg', 'ipynb', 'lock', 'toml'}


def markdown(nb: str) -> str:
    "All Markdown of a notebook of nbs/."
    cells = json.loads((REPO/'nbs'/nb).read_text())['cells']
    return '\n\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')


def code_blocks(nb: str) -> list[tuple[str, str]]:
    "(language, text) of every fenced code block of a notebook's Markdown."
    return [(m[1] or 'text', m[2]) for m in re.finditer(r'^```(\w*)[^\n]*\n(.*?)^```', markdown(nb), re.M | re.S)]


def blocks(lang: set[str]) -> list:
    return [pytest.param(nb, i, text, id=f'{Path(nb).stem}-{i}')
            for nb in PAGES for i, (l, text) in enumerate(code_blocks(nb)) if l in lang]


def profile(name: str) -> dict:
    return yaml.safe_load((REPO/'profiles'/f'{name}.yaml').read_text())


def scripts(nb: str) -> dict[str, str]:
    "Scripts a page defines: Python blocks whose first line is `# name.py...`."
    return {m[1]: text for lang, text in code_blocks(nb) if lang == 'python' and (m := re.match(r'#\s*(\S+\.py)\b', text))}


# ---------------------------------------------------------------- params

def schema_has(parts: list[str], model: type[BaseModel] = Params) -> bool:
    "Whether the dotted key `parts` is a field of the params schema (descending into sections and sub-models)."
    for i, p in enumerate(parts):
        if p not in model.model_fields: return False
        ann = model.model_fields[p].annotation
        subs = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if i < len(parts) - 1:
            if not subs: return False
            model = subs[0]
    return True


def apply_dvc_overrides(raw: dict, overrides: list[str], tmp: Path) -> dict:
    "`raw` params with `dvc exp run -S` overrides applied the way DVC applies them (Hydra's grammar, on the file)."
    from dvc.utils.hydra import apply_overrides
    f = tmp/'params.yaml'
    f.write_text(yaml.safe_dump(raw, sort_keys=False))
    apply_overrides(f, overrides)
    return yaml.safe_load(f.read_text())


def deep_merge(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items(): out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_schema_helpers_see_real_keys():
    assert schema_has(['select', 'k']) and schema_has(['midtrain', 'recipe', 'lr']) and schema_has(['seed'])
    assert not schema_has(['select', 'kk']) and not schema_has(['nosection', 'k']) and not schema_has(['seed', 'x'])


# ---------------------------------------------------------------- shell

class Parsed(Exception):
    "Raised instead of running a `main` once its arguments are parsed."


def parse_main(module: str, args: list[str]) -> argparse.Namespace:
    "The arguments of `python -m module args`, parsed by the module's own argparse `main`, which is not run."
    mod = importlib.import_module(module)
    assert callable(getattr(mod, 'main', None)), f'{module} has no main() for python -m'
    orig = argparse.ArgumentParser.parse_args
    def _parse(self, a=None, namespace=None): raise Parsed(orig(self, a, namespace))
    argparse.ArgumentParser.parse_args = _parse
    try: mod.main(args)
    except Parsed as p: return p.args[0]
    except SystemExit as e: raise AssertionError(f'python -m {module} {shlex.join(args)}: bad arguments (exit {e.code})') from None
    finally: argparse.ArgumentParser.parse_args = orig
    raise AssertionError(f'{module}.main did not parse its arguments with argparse')


def parse_hf(args: list[str]) -> tuple[str, dict]:
    "The `hf` subcommand and its parameters, parsed by huggingface_hub's click CLI (nothing is run)."
    import click
    from huggingface_hub.cli.hf import app
    ctx, rest, names = app.make_context('hf', list(args)), None, []
    cmd = app
    while isinstance(cmd, click.Group):
        rest = [*getattr(ctx, 'protected_args', []), *ctx.args]
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        names.append(name)
        if isinstance(cmd, click.Group): ctx = cmd.make_context(name, rest, parent=ctx)
    return ' '.join(names), cmd.make_context(names[-1], rest, parent=ctx).params


def run_python_c(code: str, params: dict, tmp: Path) -> str:
    "What `python -c code` prints in a project whose params.yaml is `params`."
    (tmp/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    out, old = io.StringIO(), os.environ.get('EMT_ROOT')
    os.environ['EMT_ROOT'] = str(tmp)
    try:
        with contextlib.redirect_stdout(out): exec(compile(code, '<python -c>', 'exec'), {'__name__': '__main__'})
    finally:
        if old is None: os.environ.pop('EMT_ROOT', None)
        else: os.environ['EMT_ROOT'] = old
    return out.getvalue()


def commands(text: str) -> list[list[str]]:
    "The simple commands of a shell block: continuations joined, comments dropped, split at && || ; |."
    res = []
    for line in text.replace('\\\n', ' ').splitlines():
        if m := re.fullmatch(r'\s*(\w+)=\$\((.*)\)\s*', line):   # VAR=$(command)
            res.append([f'{m[1]}=$(...)', *shlex.split(m[2])]); continue
        lex = shlex.shlex(line, posix=True, punctuation_chars=';&|')
        lex.whitespace_split, lex.commenters = True, '#'
        cmd = []
        for tok in lex:
            if tok in ('&&', '||', ';', '|', '&'):
                if cmd: res.append(cmd)
                cmd = []
            else: cmd.append(tok)
        if cmd: res.append(cmd)
    return res


def test_commands_are_split_like_a_shell():
    assert commands('a -x "y z" && b # note\nc \\\n  --d e | f') == [['a', '-x', 'y z'], ['b'], ['c', '--d', 'e'], ['f']]
    assert commands('R=$(python -c "print(1); print(2)")') == [['R=$(...)', 'python', '-c', 'print(1); print(2)']]


class Shell:
    "Checks the commands of one page, in order, remembering experiment names and variables it defines."

    def __init__(self, nb: str, tmp: Path):
        self.nb, self.tmp, self.raw = nb, tmp, profile(PAGES[nb])
        self.experiments, self.vars, self.scripts = set(), {}, scripts(nb)
        self.makefile = (REPO/'Makefile').read_text()
        self.stages = set(yaml.safe_load((REPO/'dvc.yaml').read_text())['stages'])

    def check(self, argv: list[str]):
        assign = None
        if argv[0].endswith('=$(...)'): assign, argv = argv[0].split('=')[0], argv[1:]
        while argv and re.fullmatch(r'[A-Z_]+=\S*', argv[0]): argv = argv[1:]   # VAR=value cmd
        for a in argv:
            for v in re.findall(r'\$(\w+)', a): assert v in self.vars, f'{shlex.join(argv)}: ${v} is not set on the page'
        prog, args = argv[0], [self.vars.get(a[1:], a) if a.startswith('$') else a for a in argv[1:]]
        out = getattr(self, f'_{prog.replace(".", "_")}', None) if prog not in PYTHONS else self._python
        if out is None:
            assert prog in KNOWN_TOOLS or shutil.which(prog), f'{prog}: not a tool the project installs or knows'
        else:
            res = out(args)
            if assign: self.vars[assign] = res

    def _python(self, args: list[str]):
        if args[:1] == ['-m']:
            mod, rest = args[1], args[2:]
            if mod.startswith('emt'): self._emt_module(mod, rest)
            else: assert importlib.util.find_spec(mod) or mod == 'venv', f'python -m {mod}: no such module'
        elif args[:1] == ['-c']:
            tree = ast.parse(args[1])
            mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            if mods and all(m.startswith('emt') for m in mods): return run_python_c(args[1], self.raw, self.tmp).strip()
        else: self._script(args[0])

    def _emt_module(self, mod: str, args: list[str]):
        "`python -m mod args`: the module's own parser takes the arguments; JSON recipes and configs validate."
        ns = parse_main(mod, args)
        if getattr(ns, 'recipe', None): Recipe(**json.loads(ns.recipe))
        if getattr(ns, 'config', None): importlib.import_module(mod).VLAConfig(**json.loads(ns.config))
        names = {s['name'] for s in self.raw['data']['vlm_sources'] + self.raw['data']['vla_sources']}
        for a in args:
            if m := re.fullmatch(r'artifacts/data/([^/]+)/?', a): assert m[1] in names, f'{a}: no source {m[1]!r} in the profile'

    def _script(self, name: str):
        assert name in self.scripts or (REPO/name).is_file(), f'{name}: neither defined on the page nor in the repository'

    def _recipe_does_what_it_says(self, P, changed: set[str], args: list[str]):
        "A K ablation keeps one epoch of mid-training; an accuracy target comes with the stop rule that reads it."
        if 'select.k' in changed and PAGES[self.nb] == 'embedded':
            pool = json.loads((REPO/'metrics/select.json').read_text())['pool']
            k = P.select.k if isinstance(P.select.k, int) else round(P.select.k * pool)
            want = math.ceil(k / P.midtrain.recipe.global_batch)
            assert P.midtrain.recipe.steps == want, (f'dvc {shlex.join(args)}: K = {k} of {pool} with '
                                                     f'{P.midtrain.recipe.steps} mid-training steps, not one epoch ({want})')
        if changed & {'estimator.target_val_acc'}:
            assert P.estimator.stop == 'target_acc', f'dvc {shlex.join(args)}: an accuracy target with stop: {P.estimator.stop}'

    def _emt(self, args: list[str]):
        from emt.cli import parser
        from emt.params import profiles
        try: a = parser().parse_args(args)
        except SystemExit: raise AssertionError(f'emt {shlex.join(args)}: the emt command does not take these arguments') from None
        if a.cmd == 'params' and a.action == 'use': assert a.name in profiles(), (a.name, profiles())
        if a.cmd == 'params' and a.action == 'show' and a.section: assert schema_has([a.section]), a.section

    def _dvc(self, args: list[str]):
        from dvc.cli.parser import get_main_parser
        try: a = get_main_parser().parse_args(args)
        except SystemExit: raise AssertionError(f'dvc {shlex.join(args)}: dvc does not take these arguments') from None
        cmd = args[:2] if args[0] in ('exp', 'plots', 'metrics', 'queue', 'remote') else args[:1]
        if cmd == ['exp', 'run']:
            raw = apply_dvc_overrides(self.raw, a.set_param or [], self.tmp)
            for s in a.set_param or []:
                key = s.lstrip('+').split('=', 1)[0]
                assert schema_has(key.split('.')), f'-S {s}: {key} is not a params key'
            P = parse_params(raw, f'{PAGES[self.nb]} profile with dvc exp run -S {a.set_param}')
            self._recipe_does_what_it_says(P, {s.lstrip('+').split('=', 1)[0] for s in a.set_param or []}, args)
            if a.name: self.experiments.add(a.name)
        refs = {('exp', 'diff'): [a.__dict__.get('a_rev'), a.__dict__.get('b_rev')], ('exp', 'apply'): [a.__dict__.get('experiment')],
                ('exp', 'branch'): [a.__dict__.get('experiment')], ('plots', 'diff'): a.__dict__.get('revisions') or []}.get(tuple(cmd), [])
        for r in refs:
            if r: assert r in self.experiments | GIT_REVS, f'dvc {shlex.join(args)}: no experiment named {r!r} earlier on the page'
        if cmd == ['repro']:
            for t in a.targets: assert t in self.stages, f'dvc repro {t}: no such stage in dvc.yaml {sorted(self.stages)}'

    def _accelerate(self, args: list[str]):
        if args[0] != 'launch':
            assert args[0] in ('config', 'env', 'test', 'estimate-memory'), f'accelerate {args[0]}: not a subcommand'
            return
        from accelerate.commands.launch import launch_command_parser
        try: a = launch_command_parser().parse_args(args[1:])
        except SystemExit: raise AssertionError(f'accelerate {shlex.join(args)}: accelerate launch rejects these arguments') from None
        if a.module: self._emt_module(a.training_script, a.training_script_args)
        else: self._script(a.training_script)

    def _hf(self, args: list[str]):
        import click
        try: sub, p = parse_hf(args)
        except click.ClickException as e: raise AssertionError(f'hf {shlex.join(args)}: {e.format_message()}') from None
        if sub == 'download':
            assert re.fullmatch(r'[\w.-]+/[\w.-]+', p['repo_id']), p['repo_id']
            d = p.get('local_dir')
            if d and d.startswith('data/paper/') and not d.startswith('data/paper/raw/'):
                paths = [s['path'] for s in self.raw['data']['vlm_sources'] + self.raw['data']['vla_sources']]
                assert any(x == d or x.startswith(d + '/') for x in paths), f'--local-dir {d}: no source of the profile is there'

    def _make(self, args: list[str]):
        for t in args: assert re.search(rf'^{re.escape(t)}:', self.makefile, re.M), f'make {t}: no such target'

    def _pip(self, args: list[str]):
        assert args[0] == 'install'
        for i, a in enumerate(args):
            if a == '-c': assert (REPO/args[i + 1]).is_file(), args[i + 1]


@pytest.mark.parametrize('nb', list(PAGES))
def test_shell_commands_parse(nb, tmp_path):
    sh, n = Shell(nb, tmp_path), 0
    for lang, text in code_blocks(nb):
        if lang not in ('bash', 'sh', 'shell'): continue
        for argv in commands(text):
            try: sh.check(argv)
            except Exception as e: raise AssertionError(f'{nb}: {shlex.join(argv)}\n{type(e).__name__}: {e}') from e
            n += 1
    assert n >= (20 if nb != 'index.ipynb' else 3), n


def test_the_shell_checker_catches_mistakes(tmp_path):
    sh = Shell('92_getting_started.ipynb', tmp_path)
    for bad in (['dvc', 'exp', 'run', '-S', 'select.kk=3'], ['dvc', 'exp', 'run', '-S', 'select.k=-1'],
                ['dvc', 'exp', 'run', '-S', 'select.sampling=softmax'], ['emt', 'params', 'use', 'nosuch'],
                ['dvc', 'exp', 'diff', 'never-run'], ['accelerate', 'launch', '--bogus', 'x.py'],
                ['python', '-m', 'emt.sft', 'model'], ['nosuchprogram'], ['make', 'nosuchtarget'],
                ['hf', 'download', '--bogus'], ['dvc', 'repro', 'nosuchstage'], ['python', 'missing_script.py'],
                ['python', '-m', 'emt.sft', 'm', 'd', '--out', 'o', '--recipe', '{"steps": 0}'],
                ['dvc', 'exp', 'run', '-S', '++select.kk=3'], ['dvc', 'exp', 'run', '-S', 'select.k=0.5'],
                ['dvc', 'exp', 'run', '-S', 'estimator.target_val_acc=0.95'],
                ['python', '-m', 'emt.vla', 'v', 'artifacts/data/nosuchsource', '--out', 'o', '--recipe',
                 '{"steps": 1, "global_batch": 2, "micro_batch": 1, "lr": 0.1}', '--config', '{"action_dim": 7}'],
                ['python', '-m', 'emt.vla', 'v', 'd', '--out', 'o', '--recipe',
                 '{"steps": 1, "global_batch": 2, "micro_batch": 1, "lr": 0.1}', '--config', '{"action_dim": 0}']):
        # whatever the tool's own parser raises (dvc's, accelerate's, emt's), or the checker's AssertionError
        with pytest.raises(Exception), contextlib.redirect_stderr(io.StringIO()): sh.check(bad)  # noqa: B017
    sh.check(['dvc', 'exp', 'run', '--name', 'ok', '-S', 'select.k=0.5', '-S', 'midtrain.recipe.steps=35',
              '-S', 'select.methods=[estimator,random]'])
    sh.check(['dvc', 'exp', 'diff', 'ok'])


# ---------------------------------------------------------------- params in yaml and prose

@pytest.mark.parametrize('nb, i, text', blocks({'yaml'}))
def test_yaml_snippets_validate(nb, i, text):
    snippet = yaml.safe_load(text)
    assert isinstance(snippet, dict) and snippet
    def keys(d, pre=()):
        for k, v in d.items():
            yield (*pre, k)
            if isinstance(v, dict) and k not in ('recipe',): yield from keys(v, (*pre, k))
    for k in keys(snippet): assert schema_has(list(k)), f'{".".join(k)} is not a params key'
    parse_params(deep_merge(profile(PAGES[nb]), snippet), f'{nb} block {i} on the {PAGES[nb]} profile')


def test_what_the_paper_profile_changes_is_what_it_sets():
    md = markdown('93_paper_scale.ipynb')
    sec = md[md.index('## 4. Switch the params'):md.index('## 5.')]
    snippet, paper = yaml.safe_load(re.search(r'```yaml\n(.*?)```', sec, re.S)[1]), profile('paper')
    def same(s, p, at=''):
        for k, v in s.items():
            assert k in p, f'{at}{k} is not set in profiles/paper.yaml'
            if isinstance(v, dict): same(v, p[k], f'{at}{k}.')
            else: assert v == p[k], f'{at}{k}: the page says {v!r}, profiles/paper.yaml says {p[k]!r}'
    same(snippet, paper)


@pytest.mark.parametrize('nb', list(PAGES))
def test_params_keys_named_in_prose_exist(nb):
    named = set()
    for code in re.findall(r'`([^`\n]+)`', markdown(nb)):
        m = re.fullmatch(r'([a-z_]+(?:\.[a-z_0-9]+)+)\s*(?:[:=].*)?', code)
        if m and m[1].split('.')[0] in Params.model_fields and m[1].rsplit('.', 1)[1] not in FILE_SUFFIXES: named.add(m[1])
    bad = sorted(k for k in named if not schema_has(k.split('.')))
    assert not bad, f'not params keys: {bad}'
    assert nb == 'index.ipynb' or len(named) >= 5, named


def test_what_the_run_book_says_of_the_pipeline_holds():
    md, stages = markdown('93_paper_scale.ipynb'), yaml.safe_load((REPO/'dvc.yaml').read_text())['stages']
    if 'persist: true' in md:   # it tells users to compute features outside dvc repro and let the stage finish
        outs = [o for o in stages['features']['outs'] if isinstance(o, dict) and 'artifacts/features' in o]
        assert outs and outs[0]['artifacts/features'].get('persist'), 'artifacts/features is no longer persistent'
    from emt.midtrain import mixture_dir   # the mixture the run book mid-trains on by hand is where the stage reads it
    assert 'artifacts/select/estimator/hf' in md
    assert mixture_dir('artifacts/select', 'estimator').as_posix().endswith('artifacts/select/estimator/hf')


def test_the_run_book_covers_every_paper_source():
    md, paper = markdown('93_paper_scale.ipynb'), profile('paper')
    for s in paper['data']['vlm_sources'] + paper['data']['vla_sources']:
        assert s['path'] in md, f'the run book does not say where {s["name"]} ({s["path"]}) comes from'
        assert s['stands_for'].split(' ')[0].split('-')[0] in md, s['stands_for']


@pytest.mark.parametrize('nb', list(PAGES))
def test_links_between_pages_resolve(nb):
    from nbdev.doclinks import nbpath2html
    pages = {nbpath2html(p).name for p in (REPO/'nbs').glob('*.ipynb')}
    for target in re.findall(r'\]\(([\w./-]+\.html)(?:#[^)]*)?\)', markdown(nb)):
        assert target in pages, f'{nb} links to {target}, which is not a page of the site'


# ---------------------------------------------------------------- Python snippets

@pytest.mark.parametrize('nb, i, text', blocks({'python'}))
def test_python_snippets_import_what_exists(nb, i, text):
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split('.')[0] == 'emt':
            if importlib.util.find_spec(node.module) is None:
                pytest.skip(f'{node.module} is not in this checkout of the package')
            mod = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(mod, a.name)]
            assert not missing, f'{node.module} has no {missing}'
        elif isinstance(node, ast.ImportFrom | ast.Import):
            for name in [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]:
                assert importlib.util.find_spec(name.split('.')[0]), f'{name} is not installed'


def test_the_conversion_script_writes_every_source_the_profile_does_not_read_as_shipped():
    """profiles/paper-sources.sh converts into exactly the paths of the paper profile's converted sources, and the run
    book runs it and names each release it converts. (The rehearsal and the smoke test run the script itself.)"""
    script = (REPO/'profiles/paper-sources.sh').read_text()
    calls = [shlex.split(l.split('#')[0]) for l in script.splitlines() if l.startswith('convert ')]
    dsts = {c[3] for c in calls}
    srcs = profile('paper')['data']['vlm_sources'] + profile('paper')['data']['vla_sources']
    converted = {s['path'] for s in srcs if s['format'] in ('hf', 'lerobot')}
    assert dsts == converted, (dsts ^ converted)
    from emt.release import RELEASES
    assert {c[1] for c in calls} == set(RELEASES)
    book = markdown('93_paper_scale.ipynb')
    assert 'bash profiles/paper-sources.sh' in book
    for r in RELEASES: assert f'emt convert {r}' in book, r
    for c in calls:  # each download lands where the script reads it
        raw = c[2].replace('$raw', 'data/paper/raw').split('/')[:4]
        assert '/'.join(raw) in book, '/'.join(raw)


def test_checkpoint_paths_in_examples_exist_in_the_layout():
    "Every checkpoint a page's example loads is one the embedded default's vla stage writes."
    from emt.params import load_params
    P = load_params(REPO/'params.yaml')
    inits = {'base', *P.midtrain.methods}
    benches = {b.name for b in P.eval.benchmarks}
    found = 0
    for nb in PAGES:
        for path in re.findall(r"load_policy\(['\"]([^'\"]+)['\"]", markdown(nb) + ''.join(
                ''.join(c['source']) for c in json.loads((REPO/'nbs'/nb).read_text())['cells'] if c['cell_type'] == 'code')):
            m = re.fullmatch(r'artifacts/vla/([^/]+)/([^/]+)/seed(\d+)/step_(\d{6})', path)
            assert m, f'{nb}: {path} is not artifacts/vla/<init>/<benchmark>/seed<k>/step_<NNNNNN>'
            assert m[1] in inits and m[2] in benches and int(m[3]) in P.vla.seeds, (nb, path)
            assert int(m[4]) == P.vla.recipe.steps or int(m[4]) % max(P.vla.recipe.save_every, 1) == 0, (nb, path)
            found += 1
    assert found, 'no load_policy example found'
