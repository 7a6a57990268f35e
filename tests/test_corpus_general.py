"The four general VLM sources: determinism, stable ids, schema, answers recomputed from `meta`, HF round trip."
import collections, io, json, os, re

os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['MPLBACKEND'] = 'Agg'

import numpy as np
import pytest
from PIL import Image

from emt.core import EmtError
from emt.samples import IMAGE, check_sample, samples_to_dataset
from emt.corpus_general import GENERAL_SOURCES, PHOTOS, SCENARIOS, LETTERS, photo_array, vlm_sample

SIZE = 64
N = 40


@pytest.fixture(scope='module')
def samples() -> dict[str, list[dict]]:
    "N samples of every source at seed 0."
    return {name: list(gen(N, SIZE, 0)) for name, gen in GENERAL_SOURCES.items()}


def png(im: Image.Image) -> bytes:
    b = io.BytesIO(); im.save(b, format='PNG'); return b.getvalue()


def fingerprint(s: dict) -> tuple:
    "Everything a sample holds, images as PNG bytes."
    return s['id'], s['source'], json.dumps(s['messages']), s['meta'], tuple(png(im) for im in s['images'])


def qa(s: dict) -> dict[str, str]:
    "Question -> answer of a sample's turns, with the image placeholder removed from the questions."
    m = s['messages']
    return {m[i]['content'].replace(IMAGE, '').strip(): m[i + 1]['content'] for i in range(0, len(m), 2)}


def of_kind(samples: list[dict], kind: str) -> list[tuple[dict, dict]]:
    "The (sample, meta) pairs of `samples` whose meta kind is `kind`."
    return [(s, t) for s in samples if (t := json.loads(s['meta']))['kind'] == kind]


def test_registry_names():
    assert list(GENERAL_SOURCES) == ['web_captions', 'dense_captions', 'instruct_vqa', 'commonsense_vqa']


@pytest.mark.parametrize('name', list(GENERAL_SOURCES))
def test_same_seed_is_byte_identical_and_seed_matters(name, samples):
    again = [fingerprint(s) for s in GENERAL_SOURCES[name](N, SIZE, 0)]
    assert again == [fingerprint(s) for s in samples[name]]
    other = [fingerprint(s) for s in GENERAL_SOURCES[name](N, SIZE, 1)]
    assert sum(a[2:] != b[2:] for a, b in zip(again, other)) > N // 2


@pytest.mark.parametrize('name', list(GENERAL_SOURCES))
def test_n_respected_and_ids_unique_and_stable(name, samples):
    gen = GENERAL_SOURCES[name]
    assert list(gen(0, SIZE, 0)) == []
    ids = [s['id'] for s in samples[name]]
    assert len(ids) == N and len(set(ids)) == N
    assert ids == [f'{name}/{i:06d}' for i in range(N)]
    # sample i does not depend on how many were asked for
    assert [fingerprint(s) for s in gen(5, SIZE, 0)] == [fingerprint(s) for s in samples[name][:5]]


@pytest.mark.parametrize('name', list(GENERAL_SOURCES))
def test_schema(name, samples):
    for s in samples[name]:
        check_sample(s, 'vlm')
        assert s['source'] == name
        assert sum(m['content'].count(IMAGE) for m in s['messages'] if m['role'] == 'user') == len(s['images']) == 1
        assert any(m['role'] == 'assistant' and m['content'].strip() for m in s['messages'])
        assert [m['role'] for m in s['messages']] == ['user', 'assistant'] * (len(s['messages']) // 2)
        assert all(im.mode == 'RGB' and im.size == (SIZE, SIZE) for im in s['images'])
        assert isinstance(json.loads(s['meta']), dict)


def test_instruct_covers_every_kind(samples):
    kinds = collections.Counter(json.loads(s['meta'])['kind'] for s in GENERAL_SOURCES['instruct_vqa'](120, 32, 0))
    assert set(kinds) == {'document', 'chart', 'scene', 'book', 'photo'}
    assert max(len(s['messages']) for s in samples['instruct_vqa']) >= 6  # multi-turn


def chart_answer(q: str, t: dict) -> str|None:
    "The answer to a chart question, recomputed from the chart's labels and values; None if not a value question."
    v = dict(zip(t['labels'], t['values'])); unit = '%' if t['chart'] == 'pie' else ''
    if 'largest value' in q or 'value highest' in q: return max(v, key=v.get)
    if 'smallest value' in q or 'value lowest' in q: return min(v, key=v.get)
    if m := re.fullmatch(r'What is the value (?:of|on) (\w+)\?', q): return f'{v[m[1]]}{unit}'
    if m := re.fullmatch(r'How much larger is (\w+) than (\w+)\?', q):
        assert v[m[1]] > v[m[2]]
        return f'{v[m[1]] - v[m[2]]}' + (' percentage points' if unit else '')
    if m := re.fullmatch(r'Does the value go up or down from (\w+) to (\w+)\?', q):
        return 'Up.' if v[m[2]] > v[m[1]] else 'Down.'
    return None


def test_chart_answers_recomputed_from_meta():
    charts = of_kind(GENERAL_SOURCES['instruct_vqa'](150, 32, 3), 'chart')
    checked = 0
    for s, t in charts:
        if t['chart'] == 'pie': assert sum(t['values']) == 100
        assert len(set(t['values'])) == len(t['values'])
        for q, a in qa(s).items():
            if (want := chart_answer(q, t)) is not None: assert a == want, (s['id'], q); checked += 1
    assert len(charts) >= 20 and checked >= 2*len(charts)


def scene_answer(q: str, objs: list[dict]) -> str|None:
    "The answer to a shape-scene question, recounted from the objects; None for an unknown question."
    count = lambda **kw: sum(all(o[k] == v for k, v in kw.items()) for o in objs)
    if q == 'How many shapes are there in the image?': return str(len(objs))
    if m := re.fullmatch(r'How many (\w+) (\w+)s are there\?', q): return str(count(colour=m[1], shape=m[2]))
    if m := re.fullmatch(r'How many (\w+)s are there\?', q): return str(count(shape=m[1]))
    if m := re.fullmatch(r'Is there a (\w+) (\w+)\?', q): return 'Yes.' if count(colour=m[1], shape=m[2]) else 'No.'
    if m := re.fullmatch(r'What colour is the (\w+)\?', q):
        [o] = [o for o in objs if o['shape'] == m[1]]
        return o['colour']
    return None


def test_count_and_colour_answers_recomputed_from_meta():
    scenes = of_kind(GENERAL_SOURCES['instruct_vqa'](150, 32, 4), 'scene')
    checked = 0
    for s, t in scenes:
        boxes = [o['box'] for o in t['objects']]
        for i, a in enumerate(boxes):  # shapes do not overlap, so each one can be counted
            for b in boxes[i + 1:]: assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
        for q, a in qa(s).items():
            want = scene_answer(q, t['objects'])
            assert want is not None, q
            assert a == want, (s['id'], q); checked += 1
    assert len(scenes) >= 15 and checked >= 2*len(scenes)


def test_document_and_book_answers_come_from_meta():
    ss = list(GENERAL_SOURCES['instruct_vqa'](150, 32, 5))
    for s, t in of_kind(ss, 'document'):
        q = qa(s)
        assert q['What is the title of this document?'] == t['title']
        values = [v for _, v in t['fields']]
        for k, a in q.items():
            if k.startswith('Transcribe'): assert a.split('\n') == [t['title']] + [f'{k}: {v}' for k, v in t['fields']]
            elif k != 'What is the title of this document?': assert a in values
    books = of_kind(ss, 'book')
    assert books
    for s, t in books:
        q = qa(s)
        assert q['Who is the author of this book?'] == t['author'] and q['What is the title of this book?'] == t['title']


def test_commonsense_answer_and_rationale_match_the_scenario(samples):
    by_name = {sc.name: sc for sc in SCENARIOS}
    seen = set()
    for s in samples['commonsense_vqa']:
        t = json.loads(s['meta']); sc = by_name[t['scenario']]; seen.add(sc.name)
        (q1, a1), (q2, a2) = [(s['messages'][i]['content'], s['messages'][i + 1]['content']) for i in (0, 2)]
        assert len(set(t['answers'])) == 4 and len(set(t['rationales'])) == 4
        assert a1 == f"{LETTERS[t['answer_index']]}. {t['answers'][t['answer_index']]}"
        assert a2 == f"{LETTERS[t['rationale_index']]}. {t['rationales'][t['rationale_index']]}"
        assert t['answers'][t['answer_index']] == sc.answer
        assert t['question'] in q1 and all(f'{l}. {o}' in q1 for l, o in zip(LETTERS, t['answers']))
        if sc.name == 'birthday':
            assert f"{t['facts']['candles']} lit candle" in t['rationales'][t['rationale_index']]
        focus = t['facts']['people'][t['facts']['focus']]
        if '{tag}' in sc.question: assert f"person {focus['tag']}" in t['question']
        if '{shirt}' in sc.question: assert f"{focus['shirt']} shirt" in t['question']
    assert len(seen) >= 5


def test_captions_describe_the_region_shown(samples):
    regions = {(p.name, r.name): r for p in PHOTOS for r in p.regions}
    for s in samples['dense_captions']:
        t = json.loads(s['meta'])
        assert s['messages'][1]['content'] == regions[t['photo'], t['region']].dense
    for s in samples['web_captions']:
        t = json.loads(s['meta']); cap = s['messages'][1]['content'].lower()
        assert any(short.lower() in cap for short in regions[t['photo'], t['region']].short), cap
        if t['flip']: assert next(p for p in PHOTOS if p.name == t['photo']).flip


def test_photos_ship_with_scikit_image():
    for p in PHOTOS:
        a = photo_array(p.name)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] == 3, p.name


def test_hf_dataset_round_trip(samples, tmp_path):
    rows = [s for name in GENERAL_SOURCES for s in samples[name][:5]]
    ds = samples_to_dataset(rows, 'vlm', cache_dir=tmp_path)
    assert len(ds) == len(rows) and ds['id'] == [s['id'] for s in rows]
    back = ds[0]
    assert back['messages'] == rows[0]['messages'] and back['meta'] == rows[0]['meta']
    assert np.array_equal(np.asarray(back['images'][0].convert('RGB')), np.asarray(rows[0]['images'][0]))


def test_placeholder_mismatch_is_refused():
    im = Image.new('RGB', (4, 4))
    with pytest.raises(EmtError, match='2 <image> placeholders for 1 images'):
        vlm_sample('toy', 3, [im], [(f'{IMAGE}{IMAGE} what?', 'x')], {})
