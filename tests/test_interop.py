"""emt's mixtures through the real loaders of the trainers users run: LLaMA-Factory 0.9.5's sharegpt converter and
LLaVA-1.5's own `LazySupervisedDataset` (the `llava-torch` release of LLaVA's repository).

Both are installed by `make install` with `--no-deps` (requirements-interop.txt): their own pins would pull another
torch. Two modules they import at the top and never use on these paths are given stand-ins: `torchaudio`
(LLaMA-Factory's multimodal plugin) and LLaVA's model and trainer modules (they need the transformers 4.37 API).
`EMT_REQUIRE_INTEROP=1` (set by `make test`) turns a missing library into a failure instead of a skip."""
import importlib.machinery, json, os, sys, types
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest

from emt.core import DataError
from emt.samples import check_sample, image_bytes, samples_to_dataset, write_llava, write_sharegpt

os.environ['HF_HUB_OFFLINE'] = '1'


def _require(module):
    try: return __import__(module)
    except ImportError as e:
        if os.environ.get('EMT_REQUIRE_INTEROP') == '1': raise
        pytest.skip(f'{module} is not installed ({e}): pip install --no-deps -r requirements-interop.txt')


def rgb(seed, side=16):
    return np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)


def sample(i, messages, n_images=1):
    return {'id': f'mix/{i}', 'source': 'mix', 'meta': '{}', 'messages': messages,
            'images': [image_bytes(rgb(10 * i + k)) for k in range(n_images)]}


def u(text): return {'role': 'user', 'content': text}
def a(text): return {'role': 'assistant', 'content': text}
def sy(text): return {'role': 'system', 'content': text}


@pytest.fixture
def mixture(tmp_path):
    "A checked mixture with every kind of row a selection can hold."
    rows = [sample(0, [u('<image>\nWhat colour is the cup?'), a('Red.')]),
            sample(1, [sy('Answer in one word.'), u('Where is the <image> block?'), a('Left.')]),
            sample(2, [u('<image>\nCount the mugs.'), a('Two.'), u('And bowls?'), a('One.')]),
            sample(3, [u('What is a gripper?'), a('A robot hand.')], n_images=0),
            sample(4, [u('<image><image>\nSame scene?'), a('Yes.')], n_images=2)]
    for r in rows: check_sample(r, 'vlm')
    return samples_to_dataset(rows, 'vlm', tmp_path/'cache')


# ---------------------------------------------------------------- LLaMA-Factory

def _llamafactory():
    ta = types.ModuleType('torchaudio'); ta.__spec__ = importlib.machinery.ModuleSpec('torchaudio', None)
    sys.modules.setdefault('torchaudio', ta)
    _require('llamafactory')
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list
    return get_dataset_converter, get_dataset_list


def _converter(folder, name):
    get_dataset_converter, get_dataset_list = _llamafactory()
    attr = get_dataset_list([name], str(folder))[0]
    return get_dataset_converter(attr.formatting, attr, SimpleNamespace(media_dir=str(folder)))


def test_llamafactory_reads_every_sharegpt_row(tmp_path, mixture):
    f = write_sharegpt(mixture, tmp_path/'lf', 'emt_mix')
    convert = _converter(tmp_path/'lf', 'emt_mix')
    rows = json.loads(f.read_text())
    assert len(rows) == len(mixture)
    for row, s in zip(rows, mixture):
        out = convert(row)
        assert out['_prompt'] and out['_response'], f'LLaMA-Factory dropped {row["id"]}'
        assert out['_system'] == ('Answer in one word.' if s['id'] == 'mix/1' else '')
        images = out['_images'] or []
        assert len(images) == len(s['images']) == sum(m['content'].count('<image>') for m in out['_prompt'])
        for p, img in zip(images, s['images']):
            assert os.path.isfile(p)
            np.testing.assert_array_equal(np.asarray(PIL.Image.open(p).convert('RGB')), np.asarray(img.convert('RGB')))


BAD_ORDERS = {'user, user, assistant': [u('a'), u('b'), a('c')],
              'ends on a user turn': [u('a'), a('b'), u('c')],
              'starts with assistant': [a('a'), u('b'), a('c')],
              'system in the middle': [u('a'), sy('b'), u('c'), a('d')]}

@pytest.mark.parametrize('case', BAD_ORDERS)
def test_turn_orders_llamafactory_drops_are_rejected_at_ingest(tmp_path, case):
    "Each order LLaMA-Factory silently drops ('Invalid role tag' / 'Invalid message count') stops emt's check."
    messages = BAD_ORDERS[case]
    lf = tmp_path/'lf'; lf.mkdir()
    (lf/'bad.json').write_text(json.dumps([{'messages': messages, 'images': []}]))
    (lf/'dataset_info.json').write_text(json.dumps({'bad': json.loads(
        json.dumps({'file_name': 'bad.json', 'formatting': 'sharegpt', 'columns': {'messages': 'messages', 'images': 'images'},
                    'tags': {'role_tag': 'role', 'content_tag': 'content', 'user_tag': 'user',
                             'assistant_tag': 'assistant', 'system_tag': 'system'}}))}))
    out = _converter(lf, 'bad')({'messages': messages, 'images': []})
    assert out['_prompt'] == [] and out['_response'] == []  # LLaMA-Factory's "Skipping this abnormal example"
    with pytest.raises(DataError, match="field 'messages'"):
        check_sample(sample(9, messages, n_images=0), 'vlm')


# ---------------------------------------------------------------- LLaVA-1.5

@pytest.fixture(scope='module')
def llava_train():
    "LLaVA's train module with the vicuna_v1 template LLaVA-1.5 trains with."
    for name in ('llava.model', 'llava.train.llava_trainer'):
        if name not in sys.modules:
            m = types.ModuleType(name); m.LlavaLlamaForCausalLM = m.LLaVATrainer = object; m.__all__ = []
            sys.modules[name] = m
    _require('llava')
    import llava.train.train as lt
    from llava import conversation
    lt.conversation_lib.default_conversation = conversation.conv_templates['vicuna_v1']
    return lt


@pytest.fixture(scope='module')
def llama_like_tokenizer():
    "A small byte-level tokenizer with LLaMA's special tokens (LLaVA-1.5 tokenizes with Vicuna's)."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE()); tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(['USER: ASSISTANT: What colour is the cup? Red. Where is the block?'] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=['<unk>', '<s>', '</s>'],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='<unk>', bos_token='<s>', eos_token='</s>',
                                pad_token='<unk>', model_max_length=2048)
    t.legacy = False
    return t


def test_llava_trains_on_every_llava_row(tmp_path, mixture, llava_train, llama_like_tokenizer):
    from transformers import CLIPImageProcessorPil
    lt = llava_train
    from llava.constants import IMAGE_TOKEN_INDEX
    out = write_llava(mixture, tmp_path/'llava', multi_image='skip')
    rows = json.loads((out/'data.json').read_text())
    args = lt.DataArguments(data_path=str(out/'data.json'), lazy_preprocess=True, is_multimodal=True,
                            image_folder=str(out), image_aspect_ratio='pad')
    args.image_processor = CLIPImageProcessorPil(size={'shortest_edge': 16}, crop_size={'height': 16, 'width': 16})
    args.mm_use_im_start_end = False
    ds = lt.LazySupervisedDataset(str(out/'data.json'), llama_like_tokenizer, args)
    assert len(ds) == 4  # the two-image row is not written
    for i, row in enumerate(rows):
        item = ds[i]
        n_image_tokens = int((item['input_ids'] == IMAGE_TOKEN_INDEX).sum())
        assert n_image_tokens == (1 if 'image' in row else 0), row['id']
        assert tuple(item['image'].shape) == (3, 16, 16)
        text = llama_like_tokenizer.decode([t for t in item['input_ids'].tolist() if t != IMAGE_TOKEN_INDEX])
        turns = [t['value'].replace('<image>', '').strip() for t in row['conversations']]
        assert text.startswith(lt.conversation_lib.default_conversation.system) and all(t in text for t in turns), text
        assert text.count('USER:') == text.count('ASSISTANT:') == len(turns) // 2


def test_llava_takes_emts_turns_and_not_a_system_turn(llava_train, llama_like_tokenizer):
    "LLaVA's preprocess has no system role: a system turn as such raises, emt's folded turns go through."
    from emt.samples import llava_conversations
    messages = [sy('Be brief.'), u('Hi'), a('Yo')]
    with pytest.raises(KeyError, match='system'):
        llava_train.preprocess([[{'from': 'system', 'value': 'Be brief.'}, {'from': 'human', 'value': 'Hi'},
                                 {'from': 'gpt', 'value': 'Yo'}]], llama_like_tokenizer, has_image=False)
    out = llava_train.preprocess([llava_conversations(messages)], llama_like_tokenizer, has_image=False)
    text = llama_like_tokenizer.decode(out['input_ids'][0].tolist())
    assert 'Be brief.' in text and 'Hi' in text and 'Yo' in text
