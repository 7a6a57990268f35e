"""Tiny VLM backbones: real checkpoints on disk, Auto-class reloads, label masks, training, faults."""
import json, os
os.environ['HF_HUB_OFFLINE'] = '1'

import numpy as np
import pytest
import torch
from PIL import Image

import copy

from emt.backbones import (ARCHS, assistant_mask, encode, encode_prompt, hub_chat_template, load_vlm, save_vlm, tiny_vlm,
                           to_chat, train_tokenizer)
from emt.core import DataError, EmtError

TEXTS = ['a red cube on the table', 'pick up the block and place it in the bin', 'What is in the image?',
         'the robot arm moves left', 'open the drawer'] * 8
SIZE = dict(hidden_size=64, layers=2, heads=4, vision_hidden_size=32, vision_layers=2, image_size=32, patch_size=8)
ANSWERS = ['a red cube', 'the robot arm moves left', 'open the drawer']


def image(seed, h=40, w=56):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def samples():
    return [
        {'id': 'toy/0', 'source': 'toy', 'images': [image(0)], 'meta': '{}',
         'messages': [{'role': 'user', 'content': '<image>\nWhat is on the table?'},
                      {'role': 'assistant', 'content': ANSWERS[0]}]},
        {'id': 'toy/1', 'source': 'toy', 'images': [image(1), image(2, 32, 32)], 'meta': '{}',
         'messages': [{'role': 'system', 'content': 'You are a robot.'},
                      {'role': 'user', 'content': 'Compare <image> and <image>.'},
                      {'role': 'assistant', 'content': ANSWERS[1]},
                      {'role': 'user', 'content': 'and then?'},
                      {'role': 'assistant', 'content': ANSWERS[2]}]}]


@pytest.fixture(scope='module', params=sorted(ARCHS))
def built(request, tmp_path_factory):
    "A tiny VLM of each architecture, saved, and reloaded with the Auto classes."
    arch = request.param
    tok = train_tokenizer(TEXTS, 360, arch)
    model, processor = tiny_vlm(arch, tok, seed=0, **SIZE)
    path = save_vlm(model, processor, tmp_path_factory.mktemp(arch)/'vlm')
    model2, processor2 = load_vlm(path)
    return arch, model, processor, model2, processor2, path


def test_checkpoint_is_plain_hf(built):
    arch, *_, path = built
    names = {p.name for p in path.iterdir()}
    assert {'config.json', 'model.safetensors', 'processor_config.json', 'tokenizer.json',
            'chat_template.jinja'} <= names
    assert json.loads((path/'config.json').read_text())['model_type'] == ARCHS[arch].model_type
    assert not [n for n in os.listdir(path.parent) if n.endswith('.tmp')]  # atomic: no temp dir left


def test_reload_gives_same_batch_and_logits(built):
    arch, model, processor, model2, processor2, _ = built
    b1, b2 = encode(processor, samples(), 512), encode(processor2, samples(), 512)
    assert b1.keys() == b2.keys()
    for k in b1: assert torch.equal(b1[k], b2[k]), k
    with torch.no_grad():
        torch.testing.assert_close(model(**b1).logits, model2(**b2).logits, atol=1e-5, rtol=0)


def test_labels_are_assistant_tokens_only(built):
    arch, _, processor, *_ = built
    b = encode(processor, samples(), 512)
    tok = processor.tokenizer
    kept = [tok.decode(row[row != -100]) for row in b['labels']]
    assert kept == [ANSWERS[0] + '<|im_end|>', ANSWERS[1] + '<|im_end|>' + ANSWERS[2] + '<|im_end|>']
    assert (b['labels'][b['attention_mask'] == 0] == -100).all()
    assert 'labels' not in encode(processor, samples(), 512, train=False)


def hub_styled(processor, arch: str, system: str | None = 'You are a helpful assistant.'):
    "`processor` with a chat template written as the hub's are: no `{% generation %}` markers, a default system turn."
    p = copy.copy(processor)
    p.chat_template = hub_chat_template(ARCHS[arch].image_placeholder, system)
    return p


def test_labels_match_the_generation_markers_on_emts_templates(built):
    "On emt's own templates the reply spans label exactly what transformers marks from `{% generation %}`."
    from emt.backbones import _chat_batch, _conversations
    arch, _, processor, *_ = built
    convs, _ = _conversations(samples())
    marked = _chat_batch(processor, convs, return_assistant_tokens_mask=True)
    ours = assistant_mask(processor, convs, marked['input_ids'], marked['attention_mask'])
    assert ours.sum() > 0 and torch.equal(ours.bool(), marked['assistant_masks'].bool())


@pytest.mark.parametrize('system', [None, 'You are a helpful assistant.'])
def test_labels_with_a_hub_template_without_markers(built, system):
    "A hub-style template (no markers) labels the same replies; transformers' own mask labels nothing there."
    from emt.backbones import _chat_batch, _conversations
    arch, _, processor, *_ = built
    hub = hub_styled(processor, arch, system)
    b = encode(hub, samples(), 512)
    kept = [hub.tokenizer.decode(row[row != -100]) for row in b['labels']]
    assert kept == [ANSWERS[0] + '<|im_end|>', ANSWERS[1] + '<|im_end|>' + ANSWERS[2] + '<|im_end|>']
    if system: assert system in hub.tokenizer.decode(b['input_ids'][0])
    convs, _ = _conversations(samples())
    assert int(_chat_batch(hub, convs, return_assistant_tokens_mask=True)['assistant_masks'].sum()) == 0


def test_training_step_reduces_loss(built):
    arch, _, _, model, processor, _ = built
    b = encode(processor, samples(), 512)
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(**b).loss
        loss.backward(); opt.step(); opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0] - 0.1, losses


def test_truncation_never_cuts_an_image(built):
    arch, _, processor, *_ = built
    full = encode(processor, samples()[:1], 512)
    n = full['input_ids'].shape[1]
    image_id = processor.image_token_id
    last = int((full['input_ids'][0] == image_id).nonzero()[-1])
    short = encode(processor, samples()[:1], last + 2)  # the text after the image is shortened
    assert short['input_ids'].shape[1] == last + 2 < n
    assert (short['input_ids'] == image_id).sum() == (full['input_ids'] == image_id).sum()
    per_token = [k for k, v in full.items() if torch.is_tensor(v) and v.shape == full['input_ids'].shape]
    assert all(short[k].shape == short['input_ids'].shape for k in per_token), {k: short[k].shape for k in per_token}
    with torch.no_grad(): built[1](**short)  # every per-token input (token types too) still lines up
    with pytest.raises(DataError, match="row 'toy/0', field 'images'.*would cut an image"):
        encode(processor, samples()[:1], last + 1)


def test_unreadable_image_names_sample_and_field(built):
    _, _, processor, *_ = built
    bad = dict(samples()[0], id='toy/bad', images=[{'bytes': b'not an image', 'path': None}])
    with pytest.raises(DataError, match="row 'toy/bad', field 'images'"):
        encode(processor, [bad], 64)


def test_encode_prompt_ends_on_assistant_header(built):
    _, model, processor, *_ = built
    b = encode_prompt(processor, [[image(3)], [image(4)]], ['pick up the block', 'open the drawer'])
    tok = processor.tokenizer
    assert tok.decode(b['input_ids'][1]).endswith('open the drawer<|im_end|>\n<|im_start|>assistant\n')
    assert 'labels' not in b
    with torch.no_grad(): assert model(**b).logits.shape[:2] == b['input_ids'].shape


def test_placeholder_count_must_match_images():
    msgs = [{'role': 'user', 'content': '<image> what?'}, {'role': 'assistant', 'content': 'x'}]
    assert to_chat(msgs, 1)[0]['content'][0] == {'type': 'image'}
    with pytest.raises(DataError, match="row 's/1', field 'messages'"): to_chat(msgs, 2, 's/1')


def test_load_errors(tmp_path):
    with pytest.raises(EmtError, match='does not exist'): load_vlm(tmp_path/'missing')
    (tmp_path/'empty').mkdir()
    with pytest.raises(EmtError, match='no config.json'): load_vlm(tmp_path/'empty')
    from transformers import Qwen2Config, Qwen2ForCausalLM
    text = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    text.save_pretrained(tmp_path/'text')
    with pytest.raises(EmtError, match=r"config.json: model_type 'qwen2' \(not an image-text-to-text"):
        load_vlm(tmp_path/'text')
    (tmp_path/'llava').mkdir(); (tmp_path/'llava'/'config.json').write_text(json.dumps({'model_type': 'llava'}))
    with pytest.raises(EmtError, match=r"model_type 'llava' \(an image-text-to-text architecture\) is not supported; "
                                       r"supported: \['internvl', 'qwen2_5_vl', 'qwen3_vl', 'smolvlm'\]"):
        load_vlm(tmp_path/'llava')


def test_tokenizer_needs_its_arch():
    tok = train_tokenizer(TEXTS, 360, 'internvl')
    with pytest.raises(EmtError, match="arch='smolvlm'"): tiny_vlm('smolvlm', tok, **SIZE)
    with pytest.raises(EmtError, match='too small'): train_tokenizer(TEXTS, 100, 'internvl')


def test_text_only_sample_batches_with_image_samples(built):
    _, model, processor, *_ = built
    text_only = {'id': 'toy/text', 'source': 'toy', 'images': [], 'meta': '{}',
                 'messages': [{'role': 'user', 'content': 'Say hi'}, {'role': 'assistant', 'content': 'hi'}]}
    b = encode(processor, [samples()[0], text_only], 512)
    assert processor.tokenizer.decode(b['labels'][1][b['labels'][1] != -100]) == 'hi<|im_end|>'
    with torch.no_grad(): assert torch.isfinite(model(**b).loss)


def test_load_in_another_dtype(built):
    *_, path = built
    model, _ = load_vlm(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- checkpoints outside emt

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
PLAIN = os.path.join(FIXTURES, 'plain_transformers_generate.py')


def interop_checkpoint(path):
    "The tiny InternVL checkpoint that tests/fixtures/torchvision_generate.json was recorded on."
    tok = train_tokenizer(TEXTS, 360, 'internvl')
    model, processor = tiny_vlm('internvl', tok, seed=0, **SIZE)
    return save_vlm(model, processor, path)


def emt_generate(path):
    "emt's own path: load_vlm, encode_prompt, greedy generate (the prompt of the plain-transformers script)."
    import importlib.util
    spec = importlib.util.spec_from_file_location('plain', PLAIN); plain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain)
    model, processor = load_vlm(path)
    batch = encode_prompt(processor, [plain.prompt_image()], plain.TEXT)
    with torch.no_grad(): out = model.generate(**batch, max_new_tokens=plain.NEW_TOKENS, do_sample=False)
    return {'input_ids': batch['input_ids'][0].tolist(), 'generated': out[0, batch['input_ids'].shape[1]:].tolist()}


def weights_digest(path):
    import hashlib
    from safetensors.torch import load_file
    h = hashlib.sha256()
    for k, v in sorted(load_file(os.path.join(path, 'model.safetensors')).items()):
        h.update(k.encode()); h.update(v.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope='module')
def interop(tmp_path_factory):
    path = interop_checkpoint(tmp_path_factory.mktemp('interop')/'vlm')
    return path, emt_generate(path)


def _plain(path, *args, python=None):
    import subprocess, sys
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    r = subprocess.run([python or sys.executable, PLAIN, str(path), *args], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_checkpoint_loads_in_plain_transformers_without_torchvision(interop):
    "Model, tokenizer and image processor load with the Auto classes in a process that never imports emt."
    path, ours = interop
    got = _plain(path, '--parts')
    assert not got['emt_imported'] and got['model'] == 'InternVLForConditionalGeneration'
    assert got['image_processor'].startswith('GotOcr2ImageProcessor')
    assert got['input_ids'] == ours['input_ids'] and got['generated'] == ours['generated']


def test_checkpoint_carries_the_video_processor_config(interop):
    "What AutoProcessor needs beside torchvision: the file whose absence made it fail with OSError."
    path, _ = interop
    cfg = json.loads((path/'video_preprocessor_config.json').read_text())
    image = json.loads((path/'processor_config.json').read_text())['image_processor']
    assert cfg['video_processor_type'] == 'InternVLVideoProcessor' and cfg['size'] == image['size']
    assert cfg['image_mean'] == image['image_mean'] and cfg['image_std'] == image['image_std']


def test_checkpoint_loads_with_autoprocessor_where_torchvision_is(interop):
    """AutoProcessor + AutoModelForImageTextToText + generate, in an environment with torchvision and without emt:
    the committed record of that run (how to regenerate it: tests/fixtures/plain_transformers_generate.py), or a live
    run when EMT_TORCHVISION_PYTHON names such a Python."""
    path, ours = interop
    live = os.environ.get('EMT_TORCHVISION_PYTHON')
    got = _plain(path, python=live) if live else json.load(open(os.path.join(FIXTURES, 'torchvision_generate.json')))
    if not live:
        assert got['weights'] == weights_digest(path), 'the recorded checkpoint differs: regenerate the fixture'
        assert json.loads((path/'video_preprocessor_config.json').read_text()) == got['video_config'], \
            'the video processor config differs from the one AutoProcessor loaded: regenerate the fixture'
    assert not got['emt_imported']
    assert (got['processor'], got['video_processor']) == ('InternVLProcessor', 'InternVLVideoProcessor')
    assert got['input_ids'] == ours['input_ids'] and got['generated'] == ours['generated']


if __name__ == '__main__':  # python tests/test_backbones.py write-fixture DIR: the checkpoint the fixture records
    import sys
    if sys.argv[1:2] == ['write-fixture']: print(interop_checkpoint(sys.argv[2]), weights_digest(sys.argv[2]))
