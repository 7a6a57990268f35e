"""The environment is the lock's: every package that requirements.lock (requirements-gpu.lock on the GPU path) and
requirements-interop.lock pin is installed at exactly that version. `make lock` writes the locks from pyproject.toml's
ranges and constraints.txt, and `make install` installs them; the locks are checked against those ranges too."""
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCK, GPU_LOCK = ROOT/'requirements.lock', ROOT/'requirements-gpu.lock'
INTEROP_LOCK = ROOT/'requirements-interop.lock'


def read_lock(text):
    "A lock file's pins, `{canonical name: version}`, from its `name==version` lines (hashes and comments skipped)."
    pins = {}
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        if not line or line.startswith('-'): continue
        req = Requirement(line.split()[0].rstrip('\\').split(';')[0])
        (spec,) = req.specifier
        if spec.operator != '==': raise ValueError(f'not a pin: {line!r}')
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def read_hashes(text, name):
    "The sha256 hashes that a lock file's text lists for the package `name`."
    hashes, current = set(), None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(('#', '-')):
            current = canonicalize_name(Requirement(line.split()[0].rstrip('\\')).name)
        if current == canonicalize_name(name):
            hashes |= {w.removeprefix('--hash=sha256:') for w in line.split() if w.startswith('--hash=sha256:')}
    return hashes


def installed_versions():
    "`{canonical name: version}` of the distributions this interpreter sees."
    return {canonicalize_name(d.metadata['Name']): d.version for d in metadata.distributions()}


def lock_mismatches(locked, installed):
    "One line per locked package missing from `installed` or installed at another version; empty when they agree."
    out = []
    for name, version in sorted(locked.items()):
        got = installed.get(name)
        if got is None: out.append(f'{name}: locked {version}, not installed')
        elif Version(got) != Version(version): out.append(f'{name}: locked {version}, installed {got}')
    return out


def environment_lock(installed):
    "The lock this environment follows: the GPU lock where the installed torch is its build, the CPU lock otherwise."
    gpu_torch = read_lock(GPU_LOCK.read_text())['torch']
    torch = installed.get('torch')
    return GPU_LOCK if torch and Version(torch) == Version(gpu_torch) else CPU_LOCK


def test_environment_matches_lock():
    installed = installed_versions()
    lock = environment_lock(installed)
    locked = read_lock(lock.read_text()) | read_lock(INTEROP_LOCK.read_text())
    bad = lock_mismatches(locked, installed)
    assert not bad, (f'the environment differs from {lock.name} and {INTEROP_LOCK.name} (make clean-venv install):\n'
                     + '\n'.join(bad))


def test_mismatches_reported():
    lock = """#    make lock
torch==2.13.0+cpu \\
    --hash=sha256:6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b
    # via -c constraints.txt
Jinja2==3.1.6 --hash=sha256:aaaa
numpy==2.4.6 \\
    --hash=sha256:bbbb \\
    --hash=sha256:cccc
    # via
    #   emt (pyproject.toml)
zc.lockfile==4.0 --hash=sha256:dddd
mujoco==3.3.0 --hash=sha256:eeee
"""
    locked = read_lock(lock)
    assert locked == {'torch': '2.13.0+cpu', 'jinja2': '3.1.6', 'numpy': '2.4.6', 'zc-lockfile': '4.0',
                      'mujoco': '3.3.0'}
    assert read_hashes(lock, 'numpy') == {'bbbb', 'cccc'}
    installed = {'torch': '2.13.0', 'jinja2': '3.1.6', 'numpy': '2.4.5', 'zc-lockfile': '4.0.0', 'extra-pkg': '1.0'}
    assert lock_mismatches(locked, installed) == ['mujoco: locked 3.3.0, not installed',
                                                  'numpy: locked 2.4.6, installed 2.4.5',
                                                  'torch: locked 2.13.0+cpu, installed 2.13.0']
    assert lock_mismatches(locked, locked) == []


def test_locks_follow_pyproject_and_constraints():
    project = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    reqs = [Requirement(r) for r in project['dependencies'] + project['optional-dependencies']['dev']]
    reqs += [Requirement(line) for line in (ROOT/'constraints.txt').read_text().splitlines()
             if line.strip() and not line.startswith('#')]
    for lock in CPU_LOCK, GPU_LOCK:
        pins = read_lock(lock.read_text())
        bad = [f'{r}: locked {pins.get(canonicalize_name(r.name))}' for r in reqs
               if not r.specifier.contains(pins.get(canonicalize_name(r.name), '0.0.0a0'), prereleases=True)]
        assert not bad, f'{lock.name} is behind pyproject.toml or constraints.txt (make lock):\n' + '\n'.join(bad)


def test_torch_builds():
    cpu_text, gpu_text = CPU_LOCK.read_text(), GPU_LOCK.read_text()
    cpu, gpu = read_lock(cpu_text), read_lock(gpu_text)
    assert cpu['torch'] == '2.13.0+cpu'
    assert not [n for n in cpu if n.startswith(('nvidia-', 'cuda-')) or n == 'triton']
    assert gpu['torch'] == '2.13.0' and 'triton' in gpu and any(n.startswith('nvidia-') for n in gpu)
    gpu_hashes = read_hashes(gpu_text, 'torch')
    assert gpu_hashes and not gpu_hashes & read_hashes(cpu_text, 'torch'), 'the GPU lock lists the CPU wheel of torch'


def test_interop_lock_follows_its_requirements():
    wanted = read_lock((ROOT/'requirements-interop.txt').read_text())
    assert read_lock(INTEROP_LOCK.read_text()) == wanted
    assert all(read_hashes(INTEROP_LOCK.read_text(), name) for name in wanted)
