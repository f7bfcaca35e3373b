"""The real-data captions path: BLIP-2 through transformers from a local folder, on a tiny random BLIP-2 saved in the
same format as a real checkpoint (save_pretrained), over an ImageFolder tree; resumable JSONL."""
import json
import numpy as np
import pytest
from PIL import Image

transformers = pytest.importorskip('transformers', reason='the BLIP-2 captions path needs transformers ([dev] extra)')
from _tiny import tiny_blip2
from mvp_vpg.stages.pipeline import caption_folder_blip2

@pytest.fixture(scope='module')
def blip2_dir(tmp_path_factory): return tiny_blip2(tmp_path_factory.mktemp('blip2'))

def _folder(root, n=3):
    rng = np.random.default_rng(0)
    for c in ('apple', 'dog'):
        (root / 'train' / c).mkdir(parents=True)
        for i in range(n): Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / 'train' / c / f'{c}_{i}.JPEG')
    return root

def test_blip2_captions_jsonl_and_resume(blip2_dir, tmp_path):
    import warnings
    data, out = _folder(tmp_path / 'data'), tmp_path / 'captions.jsonl'
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        caption_folder_blip2(data, blip2_dir, out, batch_size=4, device='cpu')
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    n_empty = sum(not r['caption'] for r in recs)          # a random BLIP-2 often writes nothing: that must be said
    said = [str(w.message) for w in ws if 'BLIP-2 captions' in str(w.message)]
    assert (said != []) == (n_empty > 0) and (not said or said[0].startswith(f'{n_empty} of 6 BLIP-2 captions')), (n_empty, said)
    assert len(recs) == 6 and set(recs[0]) == {'id', 'label', 'class_name', 'sentence', 'caption'}
    assert {r['class_name'] for r in recs} == {'apple', 'dog'} and recs[0]['sentence'] == 'a photo of an apple'
    assert [r['label'] for r in recs] == [0, 0, 0, 1, 1, 1]
    # resume: only images without a line are captioned again
    out.write_text(''.join(l + '\n' for l in out.read_text().splitlines()[:2]))
    caption_folder_blip2(data, blip2_dir, out, batch_size=4, device='cpu')
    again = [json.loads(l) for l in out.read_text().splitlines()]
    assert sorted(r['id'] for r in again) == sorted(r['id'] for r in recs) and len(again) == 6
