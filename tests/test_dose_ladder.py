"""`emt.dose.run_ladder`'s control flow on stand-ins for the expensive parts (training, generation, the probe): it tries
the doses smallest first, stops at the first that delivers embodied ability and keeps general ability, trains the
controls at that dose only, reuses a VLM made from the same inputs, and writes ladder.json and ladder.md. The
ability scores and the check itself (`manipulation_check`) are the real ones."""
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset

import emt.dose as dose
import emt.midtrain as midtrain
from emt.core import project_at
from emt.params import load_params

ROOT = Path(__file__).resolve().parents[1]
N = 30  # questions per source


def _questions():
    "Two sources, one general and one embodied; references alternate so that a constant answer scores 50%."
    def rows(src):
        return [{'id': f'{src}/{i}', 'messages': [{'role': 'user', 'content': 'q?'},
                                                   {'role': 'assistant', 'content': 'yes' if i % 2 else 'no'}]}
                for i in range(N)]
    return {'web_captions': rows('web_captions'), 'spatial_refer': rows('spatial_refer')}


@pytest.fixture
def ladder_env(tmp_path, monkeypatch):
    P = load_params(ROOT/'params.yaml')
    qs = _questions()
    P = P.model_copy(update={'data': P.data.model_copy(update={'vlm_sources': [
        s for s in P.data.vlm_sources if s.name in qs]})})
    trained, good = [], {'ep10-lr0.0001'}  # the dose names that teach the embodied source

    def ability_of(path, qs_, max_new_tokens=32):
        path = Path(path)
        taught = any(part in good for part in path.parts) or 'passes' in path.parts
        emb = np.r_[np.ones(N - 2), np.zeros(2)] if taught else (np.arange(N) % 2 == 1).astype(float)
        return {'web_captions': list((np.arange(N) % 5 != 0).astype(float)), 'spatial_refer': list(emb)}

    def save_vlm(model, proc, dest):
        Path(dest).mkdir(parents=True, exist_ok=True); (Path(dest)/'config.json').write_text('{}')

    def train_sft(model, mix, recipe, out, **kw):
        trained.append((len(mix), recipe.steps, recipe.lr, sorted({i.rstrip('0123456789-') for i in mix['id']})))

    mix = Dataset.from_dict({'id': [f'm{i}' for i in range(40)]})
    monkeypatch.setattr(dose, 'heldout_questions', lambda P_, n: (qs,))
    monkeypatch.setattr(dose, 'ability_of', ability_of)
    monkeypatch.setattr(dose, 'action_probe', lambda path, P_: 0.25)
    monkeypatch.setattr(dose, 'load_mixture', lambda method: mix)
    def general_draw(P_, n, seed, data=None, stream='general-draw'):
        return Dataset.from_dict({'id': [f'{stream}{seed}-{i}' for i in range(n)]})
    monkeypatch.setattr(dose, 'general_draw', general_draw)
    monkeypatch.setattr(midtrain, 'general_draw', general_draw)  # the replay draw (`with_replay`)
    monkeypatch.setattr(dose, 'load_vlm', lambda path: (None, None))
    monkeypatch.setattr(dose, 'weights_digest', lambda model: 'base')
    monkeypatch.setattr(dose, 'train_sft', train_sft)
    monkeypatch.setattr(dose, 'save_vlm', save_vlm)
    (tmp_path/'params.yaml').write_text((ROOT/'params.yaml').read_text())
    with project_at(tmp_path):
        yield P, trained, tmp_path


def _names(doses): return [d.name for d in doses]


def test_ladder_stops_at_the_first_dose_that_passes_and_trains_the_controls_there(ladder_env):
    P, trained, root = ladder_env
    doses = dose.ladder()
    assert 'ep10-lr0.0001' in _names(doses), _names(doses)
    res = dose.run_ladder(P, out='results/ladder', seeds=(0, 1), doses=doses)
    upto = _names(doses)[:_names(doses).index('ep10-lr0.0001') + 1]
    assert res['chosen'] == 'ep10-lr0.0001'
    assert [r['dose'] for r in res['rows'] if r['mixture'] == 'estimator'] == upto  # smallest first, stopped there
    assert [(r['mixture'], r['dose']) for r in res['rows'] if r['mixture'] != 'estimator'] == [
        ('random', 'ep10-lr0.0001'), ('general_draw', 'ep10-lr0.0001')]
    assert len(trained) == 2 * (len(upto) + 2)  # two seeds per dose, and per control
    last = [r for r in res['rows'] if r['mixture'] == 'estimator'][-1]
    assert last['delivered'] and last['kept'] and last['probe_r2_seed0'] == 0.25
    assert json.loads((root/'results/ladder/ladder.json').read_text())['chosen'] == 'ep10-lr0.0001'
    table = (root/'results/ladder/ladder.md').read_text()
    assert 'ep10-lr0.0001' in table and 'embodied mid - base [95%]' in table
    dose.run_ladder(P, out='results/ladder', seeds=(0, 1), doses=doses)
    assert len(trained) == 2 * (len(upto) + 2)  # the same inputs: every VLM reused, nothing trained again


def test_ladder_without_a_passing_dose_trains_no_control(ladder_env):
    P, trained, root = ladder_env
    doses = [d for d in dose.ladder() if d.name != 'ep10-lr0.0001']
    res = dose.run_ladder(P, out='results/none', seeds=(0,), doses=doses, with_probe=False)
    assert res['chosen'] is None and len(res['rows']) == len(doses)
    assert {r['mixture'] for r in res['rows']} == {'estimator'} and not any(r['delivered'] for r in res['rows'])


def test_the_command_line_sets_the_ladder():
    "`emt dose --epochs --lrs --seeds` choose the doses and seeds; a malformed list is an argparse error, not a traceback."
    from emt.cli import parser
    from emt.dose import Dose, ladder
    a = parser().parse_args(['dose', '--epochs', '10,3', '--lrs', '1e-4', '--seeds', '3,4,5'])
    assert ladder(a.epochs, a.lrs) == [Dose(3, 1e-4), Dose(10, 1e-4)] and a.seeds == (3, 4, 5)
    d = parser().parse_args(['dose'])
    assert len(ladder(d.epochs, d.lrs)) == 6 and d.seeds == (0, 1, 2)
    with pytest.raises(SystemExit): parser().parse_args(['dose', '--epochs', '3,x'])


def test_replay_adds_general_samples_to_every_mixture_and_counts_them_in_the_steps(ladder_env):
    "`replay=1`: each mixture (the estimator's and both controls) is trained with as many replay samples again, an epoch passes over both, and the rows say so."
    P, trained, root = ladder_env
    res = dose.run_ladder(P, out='results/replay', seeds=(0, 1), doses=[dose.Dose(10, 1e-4)], replay=1.0)
    gb = P.midtrain.recipe.global_batch
    assert res['replay'] == 1.0 and res['chosen'] == 'ep10-lr0.0001'
    assert [r['mixture'] for r in res['rows']] == ['estimator+replay1', 'random+replay1', 'general_draw+replay1']
    assert all(r['steps'] == 10 * -(-80 // gb) for r in res['rows'])
    assert [t[:2] for t in trained] == [(80, 10 * -(-80 // gb))] * 6  # 40 + 40 samples, per seed and mixture
    assert trained[0][3] == ['m', 'replay'] and trained[-1][3] == ['general-draw', 'replay']
    assert len(trained) == 6
    dose.run_ladder(P, out='results/plain', seeds=(0, 1), doses=[dose.Dose(10, 1e-4)])
    assert len(trained) == 12 and trained[-1][:2] == (40, 10 * -(-40 // gb))  # without replay: other VLMs, not reused


def test_with_replay_draws_its_own_stream(monkeypatch):
    "The replay draw: `ratio` times the mixture's size, from the stream 'replay'; nothing added at 0; a negative ratio refused."
    from emt.core import EmtError
    from emt.cli import parser
    mix, calls = Dataset.from_dict({'id': [f'm{i}' for i in range(10)]}), []
    monkeypatch.setattr(midtrain, 'general_draw', lambda P_, n, seed, data, stream: calls.append((n, seed, stream))
                        or Dataset.from_dict({'id': ['g'] * n}))
    assert len(dose.with_replay(mix, None, 0.5, 3)) == 15 and calls == [(5, 3, 'replay')]
    assert dose.with_replay(mix, None, 0.0, 3) is mix and len(calls) == 1
    with pytest.raises(EmtError): dose.with_replay(mix, None, -1.0, 3)
    assert parser().parse_args(['dose', '--replay', '1']).replay == 1.0 and parser().parse_args(['dose']).replay == 0.0
