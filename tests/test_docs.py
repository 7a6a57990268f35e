"Build the docs site of a copy of the project, with toy notebooks in nbs/ and _runs/, and check the HTML."
import base64, contextlib, io, json, os, re, shutil, socket
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

os.environ['HF_HUB_OFFLINE'] = '1'
from emt.docs import build_docs, main
from nbdev.doclinks import nbpath2html

REPO = Path(__file__).resolve().parents[1]
PNG = base64.b64encode(bytes.fromhex(  # a 1x1 PNG
    '89504e470d0a1a0a0000000d4948445200000001000000010806000000'
    '1f15c4890000000d49444154789c63f8cfc0f01f0005000201a1e2a5a70000000049454e44ae426082')).decode()


WIDGETS = {'application/vnd.jupyter.widget-state+json': {'state': {'abc': {'model_name': 'HTMLModel'}},
                                                           'version_major': 2, 'version_minor': 0}}

def _nb(cells, **meta):
    return {'cells': [{'id': f'c{i}', 'metadata': c.pop('metadata', {}), **c} for i, c in enumerate(cells)],
            'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}, **meta},
            'nbformat': 4, 'nbformat_minor': 5}

def _md(src): return {'cell_type': 'markdown', 'source': src}

def _code(src, *outputs, tags=()):
    return {'cell_type': 'code', 'source': src, 'execution_count': 1, 'outputs': list(outputs),
            'metadata': {'tags': list(tags)}}

def _png(): return {'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': PNG, 'text/plain': '<Figure>'}}

def _write_nb(path, cells, **meta): path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(_nb(cells, **meta)))

TOY_NB = [
    _md('# toy\n> A toy notebook for the docs tests.'),
    _code('#| hide\nSECRET_HIDDEN_CELL = 1', {'output_type': 'stream', 'name': 'stdout', 'text': 'SECRET-OUT\n'}),
    _md('## Figures\n\n::: {.callout-note}\nA callout for the reader.\n:::\n\n![a local image](toy.png){width=50%}\n\n'
        'Math inline $x^2$.\n\nSee [the source](https://example.org/x.py){target="_blank"}.'),
    _code('plot()', _png()),
    _code('table', {'output_type': 'execute_result', 'metadata': {}, 'execution_count': 1,
                    'data': {'text/html': '<table><tr><td>toy-cell-value</td></tr></table>', 'text/plain': 't'}}),
    _code('#| echo: false\nHIDDEN_INPUT_CODE = 2', {'output_type': 'stream', 'name': 'stdout', 'text': 'shown-output\n'}),
    _code('toy_example()'),   # cleaned: its output is in the run
    _md('## Run the stage'),
    _code('toy_results()'),
]
def _out(text): return {'output_type': 'stream', 'name': 'stdout', 'text': text}
WIDE = {'output_type': 'display_data', 'metadata': {}, 'data': {'text/markdown': '| ' + ' | '.join(
    f'wide-column-{i}' for i in range(40)) + ' |\n|' + '---|' * 40 + '\n| ' + ' | '.join('x' * 40) + ' |\n', 'text/plain': 'md'}}
TOY_NB_RUN = [*TOY_NB[:-3], _code('toy_example()', _out('example-output-from-run\n')), TOY_NB[-2],  # 99_toy, executed
              _code('toy_results()', _out('toy-results-from-run\n'), WIDE)]
BROKEN_NB = [  # nbdev runs import cells to render show_doc: this one fails there
    _md('# broken\n> A notebook whose API docs nbdev cannot render.'),
    _code('#| export\ndef broken_f():\n    "A documented function."\n    return 1'),
    _code('import os\nundefined_name_xyz', {'output_type': 'stream', 'name': 'stdout', 'text': 'still-shown\n'}),
]
TOY_RUN = [
    _md('# toy run\n> The toy stage, executed by papermill.'),
    _code('seed = 3', tags=['injected-parameters']),
    _code('#| hide\nRUN_SECRET_CELL = 1'),
    _code('fig', _png()),
    _code('for _ in progress(range(3)): pass',
          {'output_type': 'display_data', 'metadata': {},
           'data': {'application/vnd.jupyter.widget-view+json': {'model_id': 'abc', 'version_major': 2,
                                                                 'version_minor': 0}, 'text/plain': 'bar'}}),
    _md('The saved figure: ![saved figure](../figures/toy_fig.png)'),
]


@contextlib.contextmanager
def _offline():
    "No network: internet sockets refuse to connect in this process, proxies point nowhere in its children."
    def _refuse(sock, address, *a, **k):
        if sock.family in (socket.AF_INET, socket.AF_INET6): raise OSError(f'network access to {address} during the docs build')
        return old_connect(sock, address, *a, **k)
    old_env = {k: os.environ.get(k) for k in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY')}
    old_connect = socket.socket.connect
    os.environ.update({k: 'http://127.0.0.1:9' for k in old_env})
    socket.socket.connect = _refuse
    try: yield
    finally:
        socket.socket.connect = old_connect
        for k, v in old_env.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


@pytest.fixture(scope='module')
def sites(tmp_path_factory):
    "Two builds of a copy of the project: without `_runs/` (and with a notebook removed later), then with."
    proj = tmp_path_factory.mktemp('proj')
    shutil.copytree(REPO/'emt', proj/'emt', ignore=shutil.ignore_patterns('__pycache__'))
    (proj/'nbs').mkdir()   # two real notebooks (show_doc, doc links, the README) and toys: all of nbs/ is too slow here
    for name in ('index.ipynb', '00_core.ipynb'): shutil.copy2(REPO/'nbs'/name, proj/'nbs'/name)
    for name in ('pyproject.toml', 'params.yaml'): shutil.copy2(REPO/name, proj/name)
    _write_nb(proj/'nbs'/'98_gone.ipynb', [_md('# gone\n> Removed before the second build.')])
    _write_nb(proj/'nbs'/'99_toy.ipynb', TOY_NB)
    _write_nb(proj/'nbs'/'97_broken.ipynb', BROKEN_NB)
    (proj/'nbs'/'toy.png').write_bytes(base64.b64decode(PNG))
    (proj/'docs').mkdir(); (proj/'docs'/'conf.py').write_text('html_title = "Toy project docs"\n')
    old = {k: os.environ.get(k) for k in ('EMT_ROOT', 'PYTHONPATH')}
    os.environ['EMT_ROOT'] = str(proj)
    os.environ['PYTHONPATH'] = os.pathsep.join([str(proj), *filter(None, [old['PYTHONPATH']])])
    try:
        with _offline():
            first = build_docs(proj/'_site_first')
            (proj/'nbs'/'98_gone.ipynb').unlink()
            _write_nb(proj/'_runs'/'96_stage_only.ipynb', TOY_RUN, widgets=WIDGETS)   # tqdm bars leave widget state
            _write_nb(proj/'_runs'/'99_toy.ipynb', TOY_NB_RUN)   # the run of a notebook of nbs/: one page
            (proj/'figures').mkdir(); (proj/'figures'/'toy_fig.png').write_bytes(base64.b64decode(PNG))
            out = io.StringIO()
            err = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main([])
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return {'proj': proj, 'first': first, 'site': proj/'_docs', 'rc': rc, 'stdout': out.getvalue(), 'stderr': err.getvalue()}


class _Refs(HTMLParser):
    "Collects (tag, attribute, value) of every link, script, stylesheet and image in a page."
    def __init__(self):
        super().__init__(); self.refs = []
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if v is not None and k in ('href', 'src', 'srcset', 'data'): self.refs.append((tag, k, v, dict(attrs)))

def _refs(page: Path):
    p = _Refs(); p.feed(page.read_text()); return p.refs

def _pages(site: Path): return sorted(site.rglob('*.html'))

def _is_external(url: str) -> bool: return bool(re.match(r'^([a-z][a-z0-9+.-]*:|//)', url, re.I))


def test_cli_builds_and_says_how_to_view(sites):
    assert sites['rc'] == 0
    assert f"python -m http.server -d {sites['site']}" in sites['stdout'], sites['stdout']
    assert (sites['site']/'index.html').exists() and (sites['site']/'.nojekyll').exists()
    assert 'Toy project docs' in (sites['site']/'index.html').read_text()   # docs/conf.py is applied


def test_every_notebook_has_a_page_in_numbered_order(sites):
    site, nbs = sites['site'], sorted((sites['proj']/'nbs').glob('*.ipynb'))
    pages = [nbpath2html(nb).name for nb in nbs]
    for nb, page in zip(nbs, pages): assert (site/page).exists(), f'no page for {nb.name}'
    nav = [a[2] for a in _refs(site/'index.html') if a[0] == 'a' and 'reference internal' in a[3].get('class', '')]
    listed = [p for p in nav if p in pages]
    assert listed == [p for p in pages if p != 'index.html'], listed
    assert 'toy.html' in listed and 'gone.html' not in listed and not (site/'gone.html').exists()
    assert (sites['first']/'gone.html').exists()


def test_runs_pages_only_when_runs_exist(sites):
    first, site = sites['first'], sites['site']
    assert not (first/'runs').exists() and 'Reproduction' not in (first/'index.html').read_text()
    assert 'Reproduction' in (site/'index.html').read_text()
    assert (site/'runs'/'96_stage_only.html').exists() and not (site/'runs'/'99_toy.html').exists()
    run = (site/'runs'/'96_stage_only.html').read_text()
    assert 'seed' in run and 'RUN_SECRET_CELL' not in run and 'widget-view' not in run
    imgs = [r[2] for r in _refs(site/'runs'/'96_stage_only.html') if r[0] == 'img']
    assert any('toy_fig' in i for i in imgs) and len(imgs) >= 2, imgs


def test_outputs_render_and_quarto_markup_is_converted(sites):
    page = (sites['site']/'toy.html').read_text()
    assert 'SECRET_HIDDEN_CELL' not in page and 'SECRET-OUT' not in page
    assert 'HIDDEN_INPUT_CODE' not in page and 'shown-output' in page
    assert 'toy-cell-value' in page and re.search(r'<img[^>]+src="_images/', page)
    assert 'admonition note' in page and 'A callout for the reader.' in page
    assert '::: {' not in page and '{target=' not in page and '{width=' not in page


def test_local_links_and_images_resolve(sites):
    site, missing = sites['site'], []
    for page in _pages(site):
        for tag, attr, url, _ in _refs(page):
            if _is_external(url) or url.startswith('#'): continue
            path = unquote(urlsplit(url).path)
            if path and not (page.parent/path).resolve().exists(): missing.append(f'{page.relative_to(site)}: {url}')
    assert not missing, missing


def test_no_external_scripts_or_styles(sites):
    bad = []
    for page in _pages(sites['site']):
        for tag, attr, url, attrs in _refs(page):
            asset = tag in ('script', 'img', 'iframe') or (tag == 'link' and attrs.get('rel') in ('stylesheet', 'preload', 'icon'))
            if asset and _is_external(url) and not url.startswith('data:'): bad.append(f'{page.name}: {url}')
        text = page.read_text()
        bad += [f'{page.name}: {m}' for m in re.findall(r'@import\s+url\(\s*["\']?(?:https?:)?//[^)]*\)', text)]
        assert 'mathjax' not in ' '.join(r[2].lower() for r in _refs(page) if r[0] == 'script')
    for css in sites['site'].rglob('*.css'):
        bad += [f'{css.name}: {m}' for m in re.findall(r'url\(\s*["\']?(?:https?:)?//[^)]*\)', css.read_text())]
    assert not bad, bad


def test_search_index_covers_the_pages(sites):
    site = sites['site']
    assert (site/'search.html').exists()
    index = (site/'searchindex.js').read_text()
    assert '"toy"' in index or "'toy'" in index or 'toy' in index
    assert all(s in (site/'search.html').read_text() for s in ('searchtools.js', 'searchindex.js'))


def test_a_notebook_nbdev_cannot_process_gets_a_page_and_a_warning(sites):
    page = (sites['site']/'broken.html').read_text()
    assert 'A notebook whose API docs nbdev cannot render.' in page and 'still-shown' in page
    assert '97_broken.ipynb' in sites['stderr'] and 'undefined_name_xyz' in sites['stderr']
    assert '97_broken.ipynb' in (sites['proj']/'_proc'/'.sphinx'/'warnings.txt').read_text()
    assert 'warnings: see' in sites['stdout'] and 'warnings.txt' in sites['stdout']
    assert 'toy-cell-value' in (sites['site']/'toy.html').read_text()
    core = (sites['site']/'core.html').read_text()   # the other notebooks keep their API docs
    assert 'id="atomic-path"' in core and 'id="root"' in core and 'href="core.html#root"' in core


def _nav(page: Path):
    "The sidebar's links, in order."
    text = page.read_text()
    tree = text[text.index('sidebar-tree'):]
    return re.findall(r'<a class="reference internal" href="([^"#]+)"', tree[:tree.index('</div>')])


def test_a_stage_notebook_and_its_run_are_one_page_results_first(sites):
    site = sites['site']
    nav = _nav(site/'index.html')
    assert nav.count('toy.html') == 1 and 'runs/99_toy.html' not in nav and 'runs/96_stage_only.html' in nav, nav
    assert nav.index('runs/96_stage_only.html') < nav.index('toy.html')   # Reproduction, in file order
    page = (site/'toy.html').read_text()
    assert 'example-output-from-run' in page and 'toy-results-from-run' in page and 'toy-cell-value' in page
    assert page.index('id="run-the-stage"') < page.index('toy-results-from-run') < page.index('id="figures"')
    assert 'example-output-from-run' not in (sites['first']/'toy.html').read_text()   # no run: no outputs
    assert 'toy.html' in _nav(sites['first']/'index.html')   # listed as a module until it has a run


def test_wide_tables_scroll_instead_of_being_cut(sites):
    site = sites['site']
    page = (site/'toy.html').read_text()
    assert 'wide-column-39' in page and '_static/emt.css' in page
    css = (site/'_static'/'emt.css').read_text()
    assert re.search(r'\.table-wrapper[^{]*\{[^}]*overflow-x:\s*auto', css), css
    i = page.index('wide-column-39')
    assert page.rfind('table-wrapper', 0, i) > page.rfind('cell_output', 0, i)   # the table sits in a scrolling wrapper


def test_getting_started_says_how_to_read_the_dvc_plots_offline():
    "`dvc plots show` loads Vega from a CDN: the guide names the figures the stages draw of the same curves instead."
    import yaml
    cells = json.loads((REPO/'nbs'/'92_getting_started.ipynb').read_text())['cells']
    text = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    assert 'offline it stays blank' in text and '--json' in text
    plots = [p for s in yaml.safe_load((REPO/'dvc.yaml').read_text())['stages'].values() for d in s.get('plots', []) for p in d]
    assert plots and all(f'`{p}`' in text for p in plots), plots
    start = text.index('The curves declared')
    figs = re.findall(r'`(figures/\w+\.png)`', text[start:text.index('dvc plots show', start)])
    assert len(figs) >= len(plots), figs
    stage_nbs = ''.join((REPO/'nbs'/n).read_text() for n in ('06_base_vlm.ipynb', '11_midtrain.ipynb', '12_vla.ipynb', '13_evaluation.ipynb'))
    for f in figs: assert (REPO/f).exists() and f in stage_nbs, f   # committed, and shown on a stage's page
