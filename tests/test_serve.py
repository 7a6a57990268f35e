"""`emt serve` as a simulator in its own environment meets it: a real (tiny, random) VLA checkpoint served by the
`emt serve` command, and simulator clients in Pythons that load `emt/policy_client.py` by its path and never import
emt or torch; every chunk they receive is the one the policy predicts for their own frame."""
import json, os, re, signal, socket, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pytest

from emt.policy import VLAConfig, action_stats, build_vla, load_policy, save_vla
from emt.policy_client import recv_msg, send_msg
from emt.fixtures import tiny_backbone

REPO = Path(__file__).resolve().parents[1]
CLIENT = textwrap.dedent('''
    import importlib.util, json, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location('policy_client', sys.argv[1])
    pc = importlib.util.module_from_spec(spec); spec.loader.exec_module(pc)
    seed, port = int(sys.argv[2]), int(sys.argv[3])
    g = np.random.default_rng(seed)
    frames = [g.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(4)]
    with pc.PolicyClient(port=port) as c:
        out = [c.predict([f], 'pick the block').tolist() for f in frames]
    print(json.dumps({'hello': c.info, 'actions': out, 'imported': sorted(m for m in ('emt', 'torch') if m in sys.modules)}))
''')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp('vla')
    vlm, proc = tiny_backbone()
    vla = build_vla(vlm, proc, VLAConfig(action_dim=4, chunk=3, head_hidden=16, max_seq_len=256))
    acts = np.random.default_rng(0).normal(size=(32, 3, 4)).astype(np.float32)
    save_vla(vla, proc, action_stats(acts, np.zeros((32, 3), bool), vla.cfg.gripper_dims), d/'ck')
    return d/'ck'


def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_served_chunks_are_the_policys_own(checkpoint, tmp_path):
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent/'emt'), 'serve', str(checkpoint), '--port', str(port),
                               '--wait-ms', '200', '--device', 'cpu'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, 'EMT_PROGRESS': '0'})
    try:
        assert 'serving' in server.stdout.readline()
        (tmp_path/'client.py').write_text(CLIENT)
        clients = [subprocess.Popen([sys.executable, str(tmp_path/'client.py'), str(REPO/'emt/policy_client.py'), str(s),
                                     str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in (1, 2, 3)]
        outs = [json.loads(c.communicate(timeout=300)[0]) for c in clients]
    finally:
        server.send_signal(signal.SIGINT)
        try: tail = server.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            server.kill(); out, err = server.communicate()
            pytest.fail(f'the server did not stop within 30 s of SIGINT; stdout: {out[-2000:]}; stderr: {err[-3000:]}')
    served = re.search(r'served (\d+) requests in (\d+) batches', tail)
    assert served and int(served[1]) == 12 and int(served[2]) < 12, tail  # the three clients' requests batched
    policy = load_policy(checkpoint, 'cpu')
    for s, out in zip((1, 2, 3), outs):
        assert out['imported'] == [] and out['hello'] == {'protocol': 1, 'action_dim': 4, 'chunk': 3}
        g = np.random.default_rng(s)
        for f, got in zip([g.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(4)], out['actions']):
            np.testing.assert_allclose(got, policy.predict([f], 'pick the block'), atol=1e-5)


def test_a_bad_request_gets_an_error_and_the_connection_stays(checkpoint):
    import threading
    from emt.serve import PolicyServer
    server = PolicyServer(load_policy(checkpoint, 'cpu'))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(('127.0.0.1', server.port)) as s:
            assert recv_msg(s)[0]['protocol'] == 1
            send_msg(s, {'instruction': 'push', 'shapes': [[8, 8, 3]]}, [b'\0' * 10])
            assert 'frames are (H, W, 3) uint8' in recv_msg(s)[0]['error']
            send_msg(s, {'instruction': ' ', 'shapes': [[8, 8, 3]]}, [b'\0' * 192])
            assert recv_msg(s)[0]['error'] == 'the request has no instruction'
            send_msg(s, {'instruction': 'push', 'shapes': [[8, 8, 3]]}, [b'\0' * 192])
            header, blobs = recv_msg(s)
            assert header['shape'] == [3, 4] and len(blobs[0]) == 3 * 4 * 4
    finally: server.close()
