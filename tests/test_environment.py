"""The environment reproduces the committed outputs: the first 20 pretraining steps of the embedded default's base VLM,
run in this environment, give the committed loss curve (`metrics/base_vlm_loss.csv`) to its six decimals. The
embedded VLAs are sensitive to the seventh digit of their initialisation, so a different torch, numpy or tokenizers
that moves the curve moves every later number; this test is where such a drift shows first. About a minute."""
import csv, shutil, subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 20


def committed_curve(path: Path = REPO/'metrics/base_vlm_loss.csv') -> list[float]:
    with path.open() as f: return [float(r['loss']) for r in csv.DictReader(f)][:STEPS]


def drift(ours: list[float], committed: list[float], tol: float = 1e-6) -> list[tuple[int, float, float]]:
    "The (step, ours, committed) where the curves differ by more than `tol`; a length mismatch counts at its first step."
    out = [(i + 1, a, b) for i, (a, b) in enumerate(zip(ours, committed)) if abs(a - b) > tol]
    if len(ours) != len(committed): out.append((min(len(ours), len(committed)) + 1, float('nan'), float('nan')))
    return out


def test_drift_sees_a_change_in_the_sixth_decimal():
    assert drift([1.0, 2.0], [1.0, 2.0]) == []
    assert drift([1.0, 2.000002], [1.0, 2.0]) == [(2, 2.000002, 2.0)]
    assert drift([1.0], [1.0, 2.0])[0][0] == 2


def test_first_pretraining_steps_match_the_committed_curve(tmp_path, monkeypatch):
    from emt import sft
    from emt.base_vlm import pretrain_datasets, scratch_vlm, chat_texts
    from emt.core import project_at
    from emt.data import run_data
    from emt.params import load_params
    if not (REPO/'data').is_dir():  # the embedded corpus, from the remote inside the repository (as make repro does)
        subprocess.run(['dvc', 'pull', '-q', 'data.dvc'], cwd=REPO, check=True)
    shutil.copy(REPO/'params.yaml', tmp_path/'params.yaml'); (tmp_path/'data').symlink_to(REPO/'data')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    steps = sft.optimizer_steps
    def first_steps(*a, **k):  # the run's own schedule and data order, stopped after STEPS steps
        for o in steps(*a, **k):
            yield o
            if o.step == STEPS: return
    monkeypatch.setattr(sft, 'optimizer_steps', first_steps)
    with project_at(tmp_path):
        P = load_params()
        run_data(P)
        data = pretrain_datasets(P)
        model, processor = scratch_vlm(P, chat_texts(data.values()))
        rep = sft.train_sft((model, processor), data, P.base_vlm.recipe, tmp_path/'work', seed=P.seed,
                            on_error=P.data.on_error, num_workers=1, save_model=False)
    ours = [h['loss'] for h in rep['history']]
    bad = drift(ours, committed_curve())
    assert not bad, (f'the first {STEPS} pretraining losses differ from metrics/base_vlm_loss.csv at (step, here, '
                     f'committed) {bad[:5]}: this environment is not the locked one (make install installs it).')


def lock_digest(path: Path = REPO/'requirements.lock') -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance_problems(run: dict, current_lock: str, default: bool) -> list[str]:
    "What a results folder's run.json lacks: the commit and lock that made it (the default's: the current lock)."
    out = [f'no {k}' for k in ('profile', 'commit', 'lock') if k not in run]
    if 'commit' in run and not (isinstance(run['commit'], str) and len(run['commit']) >= 7):
        out.append(f"commit {run['commit']!r} is not a git commit")
    if default and run.get('lock') != current_lock:
        out.append('the default outputs were not made with the committed requirements.lock')
    if run.get('lock') is None and 'environment' not in run: out.append('no lock and no word on the environment')
    return out


def test_provenance_check_fails_on_missing_or_stale_lock():
    assert provenance_problems({'profile': 'x', 'commit': 'abc1234', 'lock': 'f' * 64}, 'f' * 64, True) == []
    assert provenance_problems({'profile': 'x', 'commit': 'abc1234', 'lock': 'e' * 64}, 'f' * 64, True) \
        == ['the default outputs were not made with the committed requirements.lock']
    assert provenance_problems({'profile': 'x', 'lock': None}, 'f' * 64, False) == \
        ['no commit', 'no lock and no word on the environment']


@pytest.mark.parametrize('run_json', sorted((REPO/'results').glob('*/run.json')), ids=lambda p: p.parent.name)
def test_every_results_folder_names_its_commit_and_lock(run_json):
    import json
    run = json.loads(run_json.read_text())
    assert provenance_problems(run, lock_digest(), run_json.parent.name == 'embedded') == []


def test_the_default_outputs_name_their_commit_and_lock():
    assert (REPO/'results/embedded/run.json').is_file(), 'results/embedded/run.json: the commit and lock of metrics/'
