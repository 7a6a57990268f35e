"""The VLA rule's plumbing: frozen-VLM arms, evaluation at fractions of fine-tuning, and the params that set them."""
import os
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path

import pytest

from emt.core import EmtError
from emt.evaluation import vla_policies
from emt.params import load_params, override
from emt.vla import FROZEN, init_checkpoints, policy_config, stage_calls

MAIN = Path(__file__).resolve().parents[1]


@pytest.fixture
def rule_params():
    P = load_params(MAIN/'profiles'/'embedded.yaml')
    P = override(P, 'vla', frozen_arms=['base', 'estimator'], recipe={**P.vla.recipe.model_dump(mode='json'), 'save_every': 50})
    return override(P, 'eval', checkpoints=[0.25, 0.5, 1.0])


def test_the_grid_profile_carries_the_rule():
    P = load_params(MAIN/'profiles'/'embedded-grounded-grid.yaml')
    assert P.vla.frozen_arms == ['base', 'estimator'] and P.eval.checkpoints == [0.25, 0.5, 1.0]
    assert P.midtrain.replay == 1.0 and P.midtrain.recipe.steps == 920 and P.vla.recipe.save_every == 50
    assert P.vla.heldout_by_task


def test_bad_arms_and_unsaved_fractions_are_refused(rule_params):
    with pytest.raises(EmtError, match='frozen_arms'): override(rule_params, 'vla', frozen_arms=['feature_distance'])
    with pytest.raises(EmtError, match=r'eval.checkpoints \[0.3\]'): override(rule_params, 'eval', checkpoints=[0.3])
    with pytest.raises(EmtError, match='eval.checkpoints'): override(rule_params, 'eval', checkpoints=[0.0, 1.0])
    unsaved = {**rule_params.vla.recipe.model_dump(mode='json'), 'save_every': 0}
    with pytest.raises(EmtError, match='save_every: 0'): override(rule_params, 'vla', recipe=unsaved)
    P = override(override(rule_params, 'eval', checkpoints=[1.0]), 'vla', recipe=unsaved)
    assert P.eval.checkpoints == [1.0]  # the last checkpoint is always saved


def test_frozen_arms_reuse_their_vlm_and_train_with_it_frozen(rule_params, tmp_project):
    for d in ('artifacts/base_vlm', 'artifacts/midtrain/estimator', 'artifacts/midtrain/random'):
        (tmp_project/d).mkdir(parents=True); (tmp_project/d/'config.json').write_text('{}')
    paths = init_checkpoints(rule_params)
    assert list(paths) == ['base', 'estimator', 'random', 'base' + FROZEN, 'estimator' + FROZEN]
    assert paths['estimator' + FROZEN] == paths['estimator']
    plan = [('metaworld', {}, policy_config(rule_params, 4), 'metaworld', rule_params.vla.recipe)]
    calls = stage_calls(rule_params, paths, plan)
    assert len(calls) == 5 * len(rule_params.vla.seeds)
    assert {kw['heldout_by_task'] for kw in calls.values()} == {rule_params.vla.heldout_by_task}
    for name, kw in calls.items():
        frozen = name.split('/')[0].endswith(FROZEN)
        assert (kw['cfg'].freeze, kw['cfg'].lora_rank) == (('vlm', 0) if frozen else (rule_params.vla.freeze, rule_params.vla.lora_rank))


def _runs(root: Path, steps=(50, 100, 150, 200)):
    for init in ('base', 'base' + FROZEN):
        for s in (0, 1):
            for st in steps:
                d = root/init/'metaworld'/f'seed{s}'/f'step_{st:06d}'
                d.mkdir(parents=True); (d/'config.json').write_text('{}')


def test_fractions_pick_the_checkpoints_at_those_shares_of_each_run(tmp_path):
    _runs(tmp_path)
    picked = vla_policies(tmp_path, [0.25, 0.5, 1.0])
    assert sorted(picked) == sorted(f'{i}/metaworld/seed{s}/step_{st:06d}' for i in ('base', 'base' + FROZEN)
                                    for s in (0, 1) for st in (50, 100, 200))
    assert len(vla_policies(tmp_path, 'all')) == 16 and len(vla_policies(tmp_path, 'last')) == 4
    with pytest.raises(EmtError, match=r'no checkpoint at steps \[60\]'): vla_policies(tmp_path, [0.3])
