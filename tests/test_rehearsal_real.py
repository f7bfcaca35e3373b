"""Dress rehearsal of the real VAR profile (`imagenet256_d16`) through `dvc repro real/dvc.yaml`, on CPU, in a throw-away
copy of the repository. Every asset is a small random-weight file in its official format: a VAR `.pth` (official key
names, 1000 classes, the 256px pyramid 1..16), the VQVAE `.pth`, Inception weights as torch-fidelity reads them, an
ImageNet-style folder (WordNet-id class folders + LOC_synset_mapping.txt), BLIP-2 saved with save_pretrained, an open_clip
local-dir CLIP, the ADM reference batch and a FAKE ADM evaluator script. The run goes captions -> tune (2 ranks) ->
class-conditional, tuned and text-to-image generation (2 ranks) -> ADM packing + evaluator, FID, CLIP score, and the
GenEval / DPG-Bench / VBench stages up to the external evaluator, which is not installed: those stop naming its key."""
import json, math, re
from pathlib import Path
import numpy as np
import pytest, torch, yaml
from PIL import Image
from _repo import copy_repo, run
from _tiny import tiny_blip2

pytestmark = pytest.mark.slow            # ~2 min of CPU: a dozen stage processes; runs in CI like every test

P = 'imagenet256_d16'
WNIDS = {'n01440764': 'tench', 'n01443537': 'goldfish', 'n01484850': 'great white shark'}   # ImageNet classes 0, 1, 4
CLASSES, N_PER_CLASS = '0,1', 2
EVALUATORS = {'geneval': 'geneval', 'dpg': 'dpg_bench', 'vbench': 'vbench'}   # stage -> the profile key it must name

FAKE_ADM = '''"""FAKE stand-in for guided-diffusion's evaluations/evaluator.py (tests only): reads `ref.npz sample.npz` like the real
one and prints its result lines with made-up numbers."""
import sys
import numpy as np
ref, smp = (np.load(f)['arr_0'] for f in sys.argv[1:3])
assert ref.dtype == smp.dtype == np.uint8 and ref.shape[1:] == smp.shape[1:] == (256, 256, 3), (ref.shape, smp.shape)
d = float(abs(ref.astype(float).mean() - smp.astype(float).mean()))
print("warming up TensorFlow... (fake)")
for k, v in (("Inception Score", 1 + d), ("FID", d), ("sFID", 2 * d), ("Precision", 0.5), ("Recall", 0.25)): print(f"{k}: {v}")
'''

def _var_and_vqvae(a: Path) -> dict:
    "var_d16.pth / vae_ch160v4096z32.pth as the official files are: plain state dicts with the official key names."
    from mvp_vpg.models.var import VAR
    from mvp_vpg.models.vqvae import VQVAE
    torch.manual_seed(0)
    torch.save(VAR(depth=1, embed_dim=64, num_heads=1, num_classes=1000).state_dict(), a / 'var_d16.pth')   # 4096 codes, z 32, pn 1..16
    torch.save(VQVAE(ch=32, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=1).state_dict(), a / 'vae_ch160v4096z32.pth')  # ch inferred (official: 160)
    return {'var': a / 'var_d16.pth', 'vae': a / 'vae_ch160v4096z32.pth'}

def _inception(a: Path) -> Path:
    "torch-fidelity's FeatureExtractorInceptionV3 state dict (the format of pt_inception-2015-12-05-6726825d.pth), random."
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    class Random(FeatureExtractorInceptionV3):
        def load_state_dict(self, *a, **k): pass               # keep the random initialisation
    torch.save({}, a / 'empty.pth')
    m = Random('inception-v3-compat', ['2048'], feature_extractor_weights_path=str(a / 'empty.pth'))
    torch.manual_seed(2)
    for mod in m.modules():                                     # variance-keeping init: features differ between images
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)): torch.nn.init.kaiming_normal_(mod.weight, nonlinearity='relu')
    f = a / 'pt_inception-2015-12-05-6726825d.pth'; torch.save(m.state_dict(), f)
    return f

def _imagenet(root: Path) -> Path:
    "train/<wnid>/*.JPEG (4 per class, odd sizes) + val/, with Kaggle ImageNet's LOC_synset_mapping.txt."
    rng = np.random.default_rng(0)
    for split, n in (('train', 4), ('val', 1)):
        for w in WNIDS:
            (root / split / w).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)).save(root / split / w / f'{w}_{i}.JPEG')
    (root / 'LOC_synset_mapping.txt').write_text(''.join(f'{w} {n}, other name\n' for w, n in WNIDS.items()))
    return root

def _assets(a: Path, repo: Path) -> dict:
    a.mkdir()
    rng = np.random.default_rng(3)
    np.savez(a / 'VIRTUAL_imagenet256_labeled.npz', arr_0=rng.integers(0, 255, (4, 256, 256, 3), dtype=np.uint8))
    (a / 'evaluator.py').write_text(FAKE_ADM)
    return {**_var_and_vqvae(a), 'inception': _inception(a), 'adm_evaluator': a / 'evaluator.py',
            'adm_ref': a / 'VIRTUAL_imagenet256_labeled.npz', 'data': _imagenet(a / 'imagenet'), 'blip2': tiny_blip2(a / 'blip2'),
            'clip': repo / 'data/toy/clip'}          # the toy CLIP is an open_clip local-dir folder, the format `clip` takes

def _prompts(d: Path) -> dict:
    d.mkdir()
    (d / 'coco.txt').write_text('a dog on a red sofa\na bowl of fruit\n')
    (d / 'evaluation_metadata.jsonl').write_text(''.join(json.dumps({'tag': 'colors', 'include': [{'class': c, 'count': 1}], 'prompt': f'a photo of a {c}'}) + '\n'
                                                         for c in ('car', 'dog')))
    (d / 'dpg').mkdir(); (d / 'dpg' / 'p0001.txt').write_text('a cat next to a green lamp')
    return {'coco': d / 'coco.txt', 'geneval': d / 'evaluation_metadata.jsonl', 'dpg': d / 'dpg'}

def _params(repo: Path, assets: dict, prompts: dict):
    p = yaml.safe_load((repo / 'params.yaml').read_text())
    p['profile'] = P
    p['profiles'][P].update({k: str(v) for k, v in assets.items()})
    p['sample'].update(batch_size=2, seeds=[0])
    p['mvp_runs'] = {k: p['mvp_runs'][k] for k in ('mvp', 't2i_mvp_ce_only')}   # fewer stages for dvc to collect
    p['variants'] = {k: p['variants'][k] for k in ('base', 'vpg')}
    p['vpg_sweep'].update(lams=[1.0], ps=[0.5])
    m = p['mvp']
    m.update(steps=2, batch_size=2, semantic_batch=2, ckpt_every=1, data={**m['data'], 'n': 4, 'n_val': 2})
    r = p['real_eval']
    r.update(variants=['base'], tune=['mvp', 't2i_mvp_ce_only'], tuned={'mvp_vpg': {'run': 'outputs/real/tune/mvp', 'variant': 'vpg'}},
             evaluate=['mvp_vpg'], n_per_class=N_PER_CLASS, classes=CLASSES, expected=2 * N_PER_CLASS, gpus=2, backbones={}, videos={})
    for k, n in (('coco', 1), ('geneval', 1), ('dpg', 4)):
        r['t2i'][k].update(run='outputs/real/tune/t2i_mvp_ce_only', prompts=str(prompts[k]), n_per_prompt=n)
    (repo / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))

@pytest.fixture(scope='module')
def rehearsal(tmp_path_factory):
    d = tmp_path_factory.mktemp('rehearsal')
    repo = copy_repo(d / 'repo')
    _params(repo, _assets(d / 'assets', repo), _prompts(d / 'prompts'))
    (repo / 'outputs/real/vbench').mkdir(parents=True)        # the vbench stage's videos (none: it stops at the evaluator)
    r = run(['dvc', 'repro', '-k', 'real/dvc.yaml'], repo, check=False)
    return repo, r.stdout + r.stderr, r.returncode

def _json(repo, name): return json.loads((repo / 'real/metrics' / P / name).read_text())
def _pngs(d: Path): return sorted(p.name for p in d.glob('*.png'))
def _finite(d: dict, keys): return all(isinstance(d[k], float) and math.isfinite(d[k]) for k in keys)

def test_only_the_external_evaluators_stop(rehearsal):
    repo, out, rc = rehearsal
    failed = re.search(r"failed to reproduce stages: (.*)", out)
    assert rc != 0 and failed, out[-3000:]
    assert sorted(re.findall(r"'real/dvc.yaml:(\w+)'", failed.group(1))) == sorted(EVALUATORS), out[-4000:]
    for stage, key in EVALUATORS.items():
        assert f'profiles.{P}.{key}' in out, (key, out[-3000:])
    kept = [f'{s}.json' for s in EVALUATORS] + ['geneval.det.jsonl', 'dpg.results', 'vbench.results']   # + the evaluators' own files
    assert not [k for k in kept if (repo / 'real/metrics' / P / k).exists()]      # nothing half-written looks complete

def test_captions_and_two_rank_tuning(rehearsal):
    repo, out, _ = rehearsal
    recs = [json.loads(l) for l in (repo / f'outputs/real/{P}/captions/train.jsonl').read_text().splitlines()]
    assert len(recs) == 12 and recs[0]['class_name'] == 'tench' and recs[-1]['sentence'] == 'a photo of a great white shark'
    for run_, task in (('mvp', 'c2i'), ('t2i_mvp_ce_only', 't2i')):
        m = _json(repo, f'tune_{run_}.json')
        assert m['task'] == task and m['train']['steps'] == 2 and m['train']['world_size'] == 2 and math.isfinite(m['train']['loss_last20'])
        assert m['train']['base_var'].endswith('var_d16.pth') and (repo / f'outputs/real/tune/{run_}/tuned/config.json').exists()

def test_two_rank_class_generation_base_and_tuned(rehearsal):
    repo, out, _ = rehearsal
    for name, guidance in (('base', 'CFG'), ('mvp_vpg', 'VPG')):
        d = repo / f'outputs/real/{P}/{name}'
        assert _pngs(d) == [f'{i:06d}.png' for i in range(2 * N_PER_CLASS)], out[-4000:]
        man = json.loads((d / 'manifest.json').read_text())
        assert man['complete'] and man['world_size'] == 2 and man['settings']['guidance'].startswith(guidance)
        assert man['settings']['conditions']['classes'] == [0, 1] and len(man['settings']['var_sha256']) == 64
        assert Image.open(d / '000003.png').size == (256, 256)
    assert json.loads((repo / f'outputs/real/{P}/mvp_vpg/manifest.json').read_text())['settings']['tuned']   # the run's prompt files, hashed

def test_adm_packing_evaluator_and_fid(rehearsal):
    repo, *_ = rehearsal
    d = repo / f'outputs/real/{P}/mvp_vpg'
    with np.load(d.with_name('mvp_vpg.npz')) as z: arr = z['arr_0']
    assert arr.shape == (4, 256, 256, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr[2], np.asarray(Image.open(d / '000002.png').convert('RGB')))
    adm = _json(repo, 'mvp_vpg_adm.json')
    assert adm['n_samples'] == 4 and _finite(adm, ('fid', 'sfid', 'inception_score', 'precision', 'recall'))
    fid = _json(repo, 'mvp_vpg_fid.json')
    assert fid['n_samples'] == 4 and _finite(fid, ('fid', 'inception_score_mean', 'kid_mean', 'precision', 'recall')) and fid['fid'] > 0

def test_text_to_image_layouts_and_clip_score(rehearsal):
    repo, *_ = rehearsal
    t2i = repo / 'outputs/real/t2i'
    assert _pngs(t2i) == ['000000.png', '000001.png'] and (t2i / 'texts.txt').read_text().splitlines() == ['a dog on a red sofa', 'a bowl of fruit']
    s = _json(repo, 'clipscore.json')
    assert s['n_samples'] == 2 and math.isfinite(s['clip_score'])
    g = repo / 'outputs/real/geneval'
    assert sorted(str(f.relative_to(g)) for f in g.rglob('*.png')) == ['00000/samples/00000.png', '00001/samples/00000.png']
    assert json.loads((g / '00001/metadata.jsonl').read_text())['prompt'] == 'a photo of a dog'
    assert _pngs(repo / 'outputs/real/dpg') == ['p0001.png'] and Image.open(repo / 'outputs/real/dpg/p0001.png').size == (512, 512)

def test_missing_assets_are_named(rehearsal):
    "The same stages with the VAR and CLIP paths emptied stop naming the key to fill in; no stale metrics file is left."
    repo, *_ = rehearsal
    params = (repo / 'params.yaml').read_text()
    p = yaml.safe_load(params); p['profiles'][P].update(var='', clip='')
    try:
        (repo / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
        r = run(['dvc', 'repro', '-k', '-s', 'real/dvc.yaml:generate@base', 'real/dvc.yaml:clipscore'], repo, check=False)
    finally:
        (repo / 'params.yaml').write_text(params)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    for key in (f'profiles.{P}.var', f'profiles.{P}.clip'): assert key in out, (key, out[-3000:])
    assert not (repo / 'real/metrics' / P / 'clipscore.json').exists()   # dvc removed the stale result; the failed stage wrote none
