"""The docs site in a real browser: every page loads with no error, no failed or off-machine request, every image renders.

Headless Chromium (Debian's package, driven by playwright) visits the site built from this project's guides, a few
module notebooks and its executed stage notebooks, served over HTTP on localhost. Skipped when Chromium is missing, unless EMT_REQUIRE_BROWSER is set (CI and `make test` set it).
"""
import contextlib, functools, http.server, io, os, shutil, threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

os.environ['HF_HUB_OFFLINE'] = '1'
CHROMIUM = Path(os.environ.get('EMT_CHROMIUM', '/usr/bin/chromium'))
REQUIRED = bool(os.environ.get('EMT_REQUIRE_BROWSER'))
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-default-apps', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1']

try:
    from playwright.sync_api import sync_playwright
    _why_not = None if CHROMIUM.is_file() else f'{CHROMIUM} is missing (install Debian\'s chromium: apt-get install chromium)'
except ImportError as e:
    _why_not = f'playwright is not installed ({e}); pip install -e ".[dev]"'
if _why_not and not REQUIRED: pytest.skip(f'no browser for the docs test: {_why_not}', allow_module_level=True)

LOCAL_SCHEMES = ('data:', 'blob:', 'about:')
SHOTS = ['index.html', 'getting_started.html', 'paper_scale.html', 'samples.html']


class _Quiet(http.server.SimpleHTTPRequestHandler):
    "Serves the site; remembers what it could not serve."
    missing: list

    def log_message(self, *a): pass

    def send_error(self, code, *a, **k):
        self.missing.append(f'{code} {self.path}')
        super().send_error(code, *a, **k)


@contextlib.contextmanager
def serve(site: Path):
    "An HTTP server for `site` on a free localhost port, in a thread: its base URL and the paths it could not serve."
    missing = []
    handler = functools.partial(type('Handler', (_Quiet,), {'missing': missing}), directory=str(site))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}/', missing
    finally: srv.shutdown(); srv.server_close()


REPO = Path(__file__).resolve().parents[1]
# The site of a copy of the project with these notebooks (the home page, the guides, API docs, a figure) and every
# executed stage notebook of `_runs/` with its figures: all of nbs/ takes nbdev minutes to process. To check a
# complete site instead, build it (`emt docs`) and point EMT_DOCS_SITE at it.
NOTEBOOKS = ['index.ipynb', '00_core.ipynb', '01_params.ipynb', '02_samples.ipynb', '92_getting_started.ipynb',
             '93_paper_scale.ipynb']


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The docs site to visit, built once for the module (or the one EMT_DOCS_SITE names)."
    if _why_not: pytest.fail(f'EMT_REQUIRE_BROWSER is set but {_why_not}')
    if given := os.environ.get('EMT_DOCS_SITE'):
        assert (Path(given)/'index.html').is_file(), f'EMT_DOCS_SITE={given} holds no built site'
        return Path(given)
    from emt.docs import build_docs
    proj = tmp_path_factory.mktemp('proj')
    shutil.copytree(REPO/'emt', proj/'emt', ignore=shutil.ignore_patterns('__pycache__'))
    (proj/'nbs').mkdir()
    for name in NOTEBOOKS: shutil.copy2(REPO/'nbs'/name, proj/'nbs'/name)
    for name in ('pyproject.toml', 'params.yaml'): shutil.copy2(REPO/name, proj/name)
    for d in ('_runs', 'figures', 'profiles'):
        if (REPO/d).is_dir(): shutil.copytree(REPO/d, proj/d)
    old = {k: os.environ.get(k) for k in ('EMT_ROOT', 'PYTHONPATH')}
    os.environ['EMT_ROOT'] = str(proj)
    os.environ['PYTHONPATH'] = os.pathsep.join([str(proj), *filter(None, [old['PYTHONPATH']])])
    try:
        with contextlib.redirect_stderr(io.StringIO()): return build_docs(proj/'_docs')
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def site_pages(site: Path) -> list[str]:
    "Every HTML page of the site (not Sphinx's copies of sources and assets)."
    return sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html')
                  if not p.relative_to(site).parts[0].startswith('_'))


IMAGES_JS = '''async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })));
  return {n: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
          tables: document.querySelectorAll('table').length,
          raw_tables: Array.from(document.querySelectorAll('p')).filter(p => /^\\|.*\\|\\s*\\n\\|/.test(p.textContent)).length};
}'''


@pytest.fixture(scope='module')
def visits(site, tmp_path_factory):
    "Visit every page in headless Chromium; what went wrong, per page, and screenshots of a few."
    shots = tmp_path_factory.mktemp('shots')
    problems, images, nav, search = [], {}, None, None
    with serve(site) as (base, missing), sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp('chromium-profile')), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={'width': 1280, 'height': 900}, service_workers='block')
        current = ['']
        def _route(route):
            url = route.request.url
            if url.startswith(base) or url.startswith(LOCAL_SCHEMES): return route.continue_()
            problems.append(f'{current[0]}: request to a non-local address {url}')
            return route.abort('blockedbyclient')
        ctx.route('**/*', _route)
        page = ctx.new_page()
        page.on('console', lambda m: m.type == 'error' and problems.append(f'{current[0]}: console error: {m.text} {m.location}'))
        page.on('pageerror', lambda e: problems.append(f'{current[0]}: page error: {e}'))
        page.on('requestfailed', lambda r: urlsplit(r.url).hostname == '127.0.0.1' and r.failure != 'net::ERR_ABORTED'
                and problems.append(f'{current[0]}: request failed: {r.url} ({r.failure})'))  # aborted: we navigated away
        page.on('response', lambda r: r.status >= 400 and problems.append(f'{current[0]}: HTTP {r.status} for {r.url}'))
        try:
            for name in site_pages(site):
                current[0] = name
                page.goto(base + name, wait_until='load', timeout=30_000)
                images[name] = page.evaluate(IMAGES_JS)
                if name in SHOTS: page.screenshot(path=str(shots/f'{Path(name).stem}.png'))
                if name == 'index.html':
                    nav = page.evaluate('''() => Array.from(document.querySelectorAll('.sidebar-tree p.caption')).map(
                        c => [c.textContent.trim(), Array.from(c.nextElementSibling.querySelectorAll('a')).map(a => a.getAttribute('href'))])''')
            current[0] = 'search.html?q=proximity'
            page.goto(base + current[0], wait_until='load')
            page.wait_for_selector('#search-results li', timeout=15_000)
            search = page.locator('#search-results li a').evaluate_all('links => links.map(a => a.getAttribute("href"))')
            page.wait_for_timeout(300)   # late requests (the favicon) still count
        finally: ctx.close()
    return {'problems': problems, 'images': images, 'nav': nav, 'search': search, 'shots': shots, 'missing': missing}


def test_every_page_loads_cleanly(site, visits):
    pages = site_pages(site)
    assert {'index.html', 'getting_started.html', 'paper_scale.html', 'search.html'} <= set(pages), pages
    assert len(visits['images']) == len(pages)
    assert not visits['problems'], '\n'.join(visits['problems'])
    assert not visits['missing'], visits['missing']   # nothing the pages asked for is missing from the site


def test_every_image_renders(visits):
    broken = {p: v['broken'] for p, v in visits['images'].items() if v['broken']}
    assert not broken, broken
    assert sum(v['n'] for v in visits['images'].values()) >= 1   # there are figures to check (02_samples has one)


def test_markdown_tables_in_outputs_render_as_tables(visits):
    "Stage notebooks display their tables as Markdown outputs: they must become HTML tables, not pipe-separated text."
    raw = {p: v['raw_tables'] for p, v in visits['images'].items() if v['raw_tables']}
    assert not raw, raw
    report = visits['images']['runs/14_report.html']   # the committed run of the report stage
    assert report['tables'] >= 4, report   # Tables 1, 2, A.5 and the findings


def test_start_here_leads_the_navigation(visits):
    captions = [c for c, _ in visits['nav']]
    assert captions[0] == 'Start here' and 'Modules' in captions, captions
    assert visits['nav'][0][1][:2] == ['getting_started.html', 'paper_scale.html'], visits['nav'][0]


def test_search_works_offline(visits):
    assert visits['search'], 'the search page found nothing for "proximity"'
    assert all(not urlsplit(h).netloc for h in visits['search']), visits['search']


def test_screenshots_show_rendered_pages(visits):
    from PIL import Image
    for name in SHOTS:
        img = np.asarray(Image.open(visits['shots']/f'{Path(name).stem}.png').convert('L'), np.float32)
        assert img.shape == (900, 1280), (name, img.shape)
        dark = (img < 128).mean()   # text and the sidebar: a blank or unstyled-error page has almost none
        assert 0.01 < dark < 0.5 and img.std() > 20, (name, dark, img.std())
