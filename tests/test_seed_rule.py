"""One seed rule for every path that writes samples: `mvp-vpg sample`, `mvp-vpg generate`, the pipeline's
`sample-variant` stage, `generation.generate.generate` and the bare Python API (`sampling.sampler.sample` with
`seed=batch_seed(seed, b)` per batch, `utils.images` to PNG) give byte-identical PNG files on the committed toy models,
with and without VPG."""
from pathlib import Path
import pytest, torch, yaml
from typer.testing import CliRunner

from mvp_vpg.models.checkpoints import load_var, load_vqvae
from mvp_vpg.sampling.sampler import sample, CFG
from mvp_vpg.vpg.guidance import VPG
from mvp_vpg.utils.images import to_uint8, save_png
from mvp_vpg.generation.generate import batch_seed, generate, class_conditions, var_sampler, made_by
from mvp_vpg.generation.layouts import index_name
from mvp_vpg.stages import pipeline
from mvp_vpg.stages.app import app

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / 'data' / 'toy'
SEED, BS, CFG_S, N_PER_CLASS = 3, 5, 1.5, 1          # 12 classes x 1 = 12 images in 3 batches (the last one partial)
VPG_SPEC = {'vpg_lambda': 1.0, 'vpg_p': 0.5}
pytestmark = pytest.mark.skipif(not (TOY / 'var' / 'model.safetensors').exists(), reason='needs the committed toy models')

@pytest.fixture(scope='module')
def models():
    torch.set_num_threads(1)
    var = load_var(TOY / 'var')
    return var, load_vqvae(TOY / 'vqvae', patch_nums=var.patch_nums)

def _guidance(vpg: bool):
    g = CFG(CFG_S)
    return VPG(VPG_SPEC['vpg_lambda'], VPG_SPEC['vpg_p'], base=g) if vpg else g

def _params(tmp_path) -> Path:
    p = {'profile': 'toy', 'profiles': {'toy': {'checkpoints': str(TOY)}},
         'sample': {'n_per_class': N_PER_CLASS, 'batch_size': BS, 'cfg': CFG_S, 'top_k': 0, 'top_p': 0.0, 'seeds': [SEED],
                    'mode': 'reference'},
         'variants': {'base': {}, 'vpg': dict(VPG_SPEC)}}
    f = tmp_path / 'params.yaml'; f.write_text(yaml.safe_dump(p))
    return f

def _files(folder: Path, n: int) -> list[bytes]:
    return [(folder / index_name(i)).read_bytes() for i in range(n)]

@pytest.mark.parametrize('vpg', [False, True], ids=['cfg', 'cfg+vpg'])
def test_every_path_writes_the_same_pngs(models, tmp_path, vpg):
    var, vae = models
    n = var.num_classes * N_PER_CLASS
    variant = 'vpg' if vpg else 'base'
    # 1. the Python API, batch by batch with the rule written out
    api = tmp_path / 'api'
    labels = torch.tensor(class_conditions(range(var.num_classes), N_PER_CLASS))
    for b, lab in enumerate(labels.split(BS)):
        res = sample(var, vae, lab, seed=batch_seed(SEED, b), guidance=_guidance(vpg), top_k=0, top_p=0.0, mode='reference')
        for j, arr in enumerate(to_uint8(res.images)): save_png(arr, api / index_name(b * BS + j))
    ref = _files(api, n)
    assert len(set(ref)) == n                                       # distinct images, so the comparison means something
    # 2. generation.generate.generate (the function behind `mvp-vpg generate`)
    gen = tmp_path / 'gen'
    generate(gen, class_conditions(range(var.num_classes), N_PER_CLASS), var_sampler(var, vae, _guidance(vpg), 0, 0.0, 'reference'),
             SEED, BS, {'weights': made_by(var, vae)}, progress=False)
    assert _files(gen, n) == ref
    # 3. the pipeline's stage function for a variant
    params = yaml.safe_load(_params(tmp_path).read_text())
    pipeline.stage_sample(params, variant, out_root=tmp_path / 'stage')
    assert _files(tmp_path / 'stage' / variant / f'seed{SEED}', n) == ref
    # 4. the command line: `mvp-vpg sample` and `mvp-vpg generate`
    run = CliRunner().invoke
    opts = ['--batch-size', str(BS), '--seed', str(SEED), '--cfg', str(CFG_S), '--top-k', '0', '--top-p', '0', '--mode', 'reference']
    vpg_opts = ['--vpg-lambda', str(VPG_SPEC['vpg_lambda']), '--vpg-p', str(VPG_SPEC['vpg_p'])] if vpg else []
    r = run(app, ['sample', '--var', str(TOY / 'var'), '--vae', str(TOY / 'vqvae'), '--out', str(tmp_path / 'cli'), '--device', 'cpu',
                  '--no-progress', *opts, *vpg_opts])
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / 'cli' / 'images', n) == ref
    r = run(app, ['generate', '--params', str(_params(tmp_path)), '--variant', variant, '--out', str(tmp_path / 'cli_gen'), '--no-progress'])
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / 'cli_gen', n) == ref

def test_sample_records_the_batch_seeds(models, tmp_path):
    import json
    r = CliRunner().invoke(app, ['sample', '--var', str(TOY / 'var'), '--vae', str(TOY / 'vqvae'), '--out', str(tmp_path / 'o'),
                                 '--classes', '0,5', '--n-per-class', '2', '--batch-size', '3', '--seed', '7', '--device', 'cpu',
                                 '--top-k', '0', '--top-p', '0', '--no-progress'])
    assert r.exit_code == 0, r.output
    recs = json.loads((tmp_path / 'o' / 'samples.json').read_text())['samples']
    assert [x['class'] for x in recs] == [0, 0, 5, 5]
    assert [x['batch_seed'] for x in recs] == [batch_seed(7, 0)] * 3 + [batch_seed(7, 1)]
    r = CliRunner().invoke(app, ['sample', '--var', str(TOY / 'var'), '--vae', str(TOY / 'vqvae'), '--out', str(tmp_path / 'o'),
                                 '--classes', '0,5', '--n-per-class', '2', '--batch-size', '3', '--seed', '8', '--device', 'cpu',
                                 '--top-k', '0', '--top-p', '0', '--no-progress'])
    assert r.exit_code == 2 and 'differs in: seed' in r.output, r.output
