"""Each benchmark's gripper, from a demonstration through the VLA's training target and its output to the command the
benchmark's controller takes. The expected commands are written from each benchmark's own convention, not from emt's
table: LIBERO (robosuite) -1 open / +1 close, and its demonstrations store those commands; Meta-World's scripted
experts send +1 to close; CALVIN stores and takes +1 open / -1 close; Bridge stores [0, 1] with 1 open and
SimplerEnv's WidowX takes +1 open / -1 close."""
import numpy as np
import pytest

from emt.params import BENCHMARK_GRIPPER, GRIPPERS, load_params, override
from emt.policy import action_stats

OPEN, CLOSED = 'open', 'closed'
STATES = [OPEN, OPEN, CLOSED, CLOSED, CLOSED, OPEN]
STORED = {'libero': [-1, -1, 1, 1, 1, -1], 'metaworld': [-1, -0.6, 0.6, 1, 1, -1],  # the experts' effort is graded
          'calvin': [1, 1, -1, -1, -1, 1], 'simpler_bridge': [1.0, 0.9, 0.2, 0.0, 0.1, 0.95]}  # Bridge: continuous, 1 open
COMMAND = {'libero': {OPEN: -1.0, CLOSED: 1.0}, 'metaworld': {OPEN: -1.0, CLOSED: 1.0},
           'calvin': {OPEN: 1.0, CLOSED: -1.0}, 'simpler_bridge': {OPEN: 1.0, CLOSED: -1.0}}


def round_trip(benchmark: str, convention: str) -> np.ndarray:
    "The commands a VLA trained on a demonstration of `benchmark` (read with `convention`) sends back to it."
    g = np.random.default_rng(0)
    stored = np.array(STORED[benchmark], np.float32)
    acts = np.concatenate([g.normal(size=(len(STATES), 6)).astype(np.float32), stored[:, None]], 1)[:, None]  # (n, 1, 7)
    stats = action_stats(acts, np.zeros((len(STATES), 1), bool), [6], gripper=convention)
    arm, closed = stats.targets(acts)
    logits = np.where(closed > 0.5, 4.0, -4.0)  # a head that learnt the targets
    return stats.actions(arm, logits)[:, 0, 6], closed[:, 0, 0]


@pytest.mark.parametrize('benchmark', sorted(STORED))
def test_gripper_round_trip_gives_the_benchmarks_command(benchmark):
    command, closed = round_trip(benchmark, BENCHMARK_GRIPPER[benchmark])
    assert closed.tolist() == [float(s == CLOSED) for s in STATES]  # the target means "closed" on every benchmark
    assert command.tolist() == [COMMAND[benchmark][s] for s in STATES]


def test_one_shared_convention_breaks_bridge_and_inverts_calvin():
    "What the conventions fix: with Meta-World's `> 0 is closed` everywhere, a half-closed Bridge gripper is sent open,"
    # and CALVIN's open frames are learnt as 'closed', the class LIBERO's closed frames have: one head cannot serve both
    bridge, _ = round_trip('simpler_bridge', 'close_positive')
    assert bridge.tolist() != [COMMAND['simpler_bridge'][s] for s in STATES]
    _, calvin = round_trip('calvin', 'close_positive')
    assert calvin.tolist() == [float(s == OPEN) for s in STATES]


def test_vla_sources_of_different_benchmarks_train_separate_vlas_and_one_vla_refuses_mixed_conventions():
    from emt.core import EmtError
    from emt.vla import benchmark_sources, sources_gripper
    P = load_params()
    assert sources_gripper(P.data.vla_sources) == 'close_positive'
    src = P.data.vla_sources[0]
    P2 = override(P, 'data', vla_sources=[src.model_dump(), {**src.model_dump(), 'name': 'c', 'benchmark': 'calvin'}])
    groups = benchmark_sources(P2)  # one VLA per benchmark, each with its own convention
    assert {b: [s.name for s in v] for b, v in groups.items()} == {'metaworld': [src.name], 'calvin': ['c']}
    assert sources_gripper(groups['calvin']) == 'open_positive'
    with pytest.raises(EmtError, match='mix gripper conventions'): sources_gripper(P2.data.vla_sources)


def test_every_benchmark_has_a_convention():
    assert set(BENCHMARK_GRIPPER) == {'metaworld', 'libero', 'simpler_bridge', 'calvin'} and set(BENCHMARK_GRIPPER.values()) <= set(GRIPPERS)


def test_eval_refuses_a_vla_on_another_benchmarks_gripper(tmp_path):
    import json
    from emt.core import EmtError
    from emt.evaluation import VLACheckpoint, check_gripper
    ck = tmp_path/'calvin_vla'; ck.mkdir()
    (ck/'action_stats.json').write_text(json.dumps({'low': [0], 'high': [1], 'gripper_dims': [0], 'gripper': 'open_positive'}))
    check_gripper('calvin_vla', VLACheckpoint(ck), 'calvin')
    with pytest.raises(EmtError, match="'open_positive' gripper convention but libero takes 'close_positive'"):
        check_gripper('calvin_vla', VLACheckpoint(ck), 'libero')
