"""Dress rehearsal of the text-to-image and text-to-video backbones through `dvc repro real/dvc.yaml`, as a user would run
them with real files, in a throw-away copy of the repository. Every asset is a tiny random model in its official file
format: Infinity (`.pth` + BSQ VAE `.pth` + a flan-T5 folder), HART (the released hart-0.7b-1024px folder layout + its
tokenizer folder + a Qwen2 folder) and InfinityStar (a torch_shard folder + the `{'vae': ...}` video VAE `.pth` + a T5
folder). Per profile the generate_backbone@ / generate_video@ stages run to the end, then the GenEval / DPG-Bench / VBench
stage up to the external evaluator, which is not installed: it must stop naming the profile key to fill in."""
import json, re, shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest, torch, yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from _repo import copy_repo, run

pytestmark = pytest.mark.slow            # ~70 s of CPU (eight stage processes) in two repository copies run at once
DATA = Path(__file__).parent / 'data'
INF, HART, STAR = 'infinity_2b', 'hart_0.7b', 'infinitystar'
GENEVAL = ['a red car', 'a blue dog']
VIDEO = 'a cat playing a piano'

def _sub(rec, prefix): return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}

def _infinity(a: Path) -> dict:
    "infinity_2b_reg.pth (flat state dict), infinity_vae_d32_reg.pth ({'vae': ...}) and a flan-t5 folder."
    from mvp_vpg.models.t5_text import make_tiny_t5
    rec = load_file(str(DATA / 'infinity_A.safetensors'))
    torch.save(_sub(rec, 'infinity.'), a / 'infinity_2b_reg.pth')
    torch.save({'vae': _sub(rec, 'vae.')}, a / 'infinity_vae_d32_reg.pth')
    width = json.loads((DATA / 'infinity_A.json').read_text())['config']['text_channels']
    return {'checkpoint': a / 'infinity_2b_reg.pth', 'vae': a / 'infinity_vae_d32_reg.pth',
            'text_encoder': make_tiny_t5(a / 'flan-t5-xl', d_model=width, layers=1)}

def _hart(a: Path) -> dict:
    "hart-0.7b-1024px/{llm,tokenizer} as released, and a Qwen2 folder."
    from transformers import Qwen2Tokenizer, Qwen2Config, Qwen2Model
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    meta = json.loads((DATA / 'hart_A.json').read_text())
    rec = load_file(str(DATA / 'hart_A.safetensors'))
    llm = a / 'hart-0.7b-1024px' / 'llm'; llm.mkdir(parents=True)
    (llm / 'config.json').write_text(json.dumps({**meta['config']['transformer'], 'architectures': ['HARTForT2I']}))
    torch.save(_sub(rec, 'hart.'), llm / 'ema_model.bin')
    tok = a / 'hart-0.7b-1024px' / 'tokenizer'; tok.mkdir()
    (tok / 'config.json').write_text(json.dumps(meta['config']['tokenizer']))
    save_file({'vae.' + k: v.contiguous() for k, v in _sub(rec, 'vae.').items()}, str(tok / 'model.safetensors'))
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}; vocab['<|endoftext|>'] = len(vocab)
    torch.manual_seed(0)
    Qwen2Tokenizer(vocab=vocab, merges=[]).save_pretrained(a / 'qwen2')
    Qwen2Model(Qwen2Config(vocab_size=len(vocab), hidden_size=meta['config']['transformer']['context_dim'], intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)).save_pretrained(a / 'qwen2')
    return {'checkpoint': a / 'hart-0.7b-1024px', 'vae': tok, 'text_encoder': a / 'qwen2'}

def _infinitystar(a: Path) -> dict:
    """infinitystar_8b_480p_weights/ as released (model.safetensors.index.json + 2 shards, unprefixed keys), the
    infinitystar_videovae.pth ({'vae': state_dict}, encoder included) and a flan-t5 folder; random, narrow widths."""
    from mvp_vpg.models.infinitystar import InfinityStar, InfinityStarConfig
    from mvp_vpg.models.video_vae import VideoVAE, VideoVAEConfig
    from mvp_vpg.models.t5_text import make_tiny_t5
    torch.manual_seed(0)
    sd = InfinityStar(InfinityStarConfig(depth=2, embed_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128, block_chunks=2,
                                         text_channels=32, text_maxlen=64)).state_dict()
    d = a / 'infinitystar_8b_480p_weights'; d.mkdir()
    names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    keys = sorted(sd); half = {k: names[k.startswith('block_chunks.1')] for k in keys}
    for n in names: save_file({k: sd[k].contiguous() for k in keys if half[k] == n}, str(d / n))
    (d / 'model.safetensors.index.json').write_text(json.dumps({'metadata': {}, 'weight_map': half}))
    torch.save({'vae': VideoVAE(VideoVAEConfig(block_out_channels=(2, 4, 4, 4, 4))).state_dict()}, a / 'infinitystar_videovae.pth')
    return {'checkpoint': d, 'vae': a / 'infinitystar_videovae.pth', 'text_encoder': make_tiny_t5(a / 'flan-t5-star', d_model=32, layers=1)}

def _prompts(d: Path) -> dict:
    "GenEval's evaluation_metadata.jsonl, DPG-Bench's prompts/ folder and VBench's VBench_full_info.json, tiny."
    d.mkdir()
    (d / 'evaluation_metadata.jsonl').write_text(''.join(json.dumps({'tag': 'colors', 'prompt': t, 'include': []}) + '\n' for t in GENEVAL))
    (d / 'prompts').mkdir(); (d / 'prompts' / 'p0001.txt').write_text('a cat next to a green lamp')
    (d / 'VBench_full_info.json').write_text(json.dumps([{'prompt_en': VIDEO, 'dimension': ['subject_consistency']}]))
    return {'geneval': d / 'evaluation_metadata.jsonl', 'dpg': d / 'prompts', 'vbench': d / 'VBench_full_info.json'}

def _job(model, prompts, layout, n, lam, out, pn='0.06M'):
    return {'model': model, 'prompts': str(prompts), 'layout': layout, 'n_per_prompt': n, 'vpg_lambda': lam, 'vpg_p': 0.5,
            'pn': pn, 'out': out}

def _params(repo: Path, profile: str, assets: dict, prompts: dict, **real):
    "params.yaml with `profile` active, its files filled in, and tiny real_eval jobs."
    p = yaml.safe_load((repo / 'params.yaml').read_text())
    p['profile'] = profile
    p['profiles'][profile].update({k: str(v) for k, v in assets.items()})
    r = p['real_eval']
    r.update(gpus=1, backbones={
        'infinity_geneval': _job('infinity', prompts['geneval'], 'geneval', 2, 0.0, 'outputs/real/infinity_geneval'),
        'infinity_dpg_vpg': _job('infinity', prompts['dpg'], 'dpg', 4, 1.0, 'outputs/real/infinity_dpg_vpg'),
        'hart_geneval': _job('hart', prompts['geneval'], 'geneval', 1, 0.0, 'outputs/real/hart_geneval', pn='')},
        videos={'star_vbench_vpg': {'prompts': str(prompts['vbench']), 'n_per_prompt': 1, 'vpg_lambda': 1.0, 'vpg_p': 0.25,
                                    'vpg_schedule': 'semantic', 'preset': '480p', 'duration': 5, 'pn': '0.06M', 'out': 'outputs/real/vbench'}},
        vbench_videos='outputs/real/vbench', **real)
    (repo / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))

def _repro(repo, *stages):
    r = run(['dvc', 'repro', '-k', *[f'real/dvc.yaml:{s}' for s in stages]], repo, check=False, OMP_NUM_THREADS='1')
    return r.returncode, r.stdout + r.stderr

def _infinity_run(repo, assets, prompts) -> dict:
    _params(repo, INF, assets, prompts, geneval_images='outputs/real/infinity_geneval', dpg_images='outputs/real/infinity_dpg_vpg')
    runs = {INF: _repro(repo, 'geneval', 'dpg')}
    r = run(['dvc', 'status', *[f'real/dvc.yaml:generate_backbone@infinity_{k}' for k in ('geneval', 'dpg_vpg')]], repo, check=False)
    return {**runs, 'status': (r.returncode, r.stdout + r.stderr)}

def _hart_and_star_runs(repo, assets, prompts) -> dict:
    _params(repo, HART, assets[HART], prompts, geneval_images='outputs/real/hart_geneval')
    runs = {HART: _repro(repo, 'geneval')}
    _params(repo, STAR, assets[STAR], prompts)
    return {**runs, STAR: _repro(repo, 'vbench')}

@pytest.fixture(scope='module')
def rehearsal(tmp_path_factory):
    """Two copies of the repository run at once (one per core): Infinity in one, HART then InfinityStar in the other.
    Returns {profile: repo}, each run's (exit status, output), and the assets."""
    d = tmp_path_factory.mktemp('rehearsal')
    one = copy_repo(d / 'one')
    two = d / 'two'; shutil.copytree(one, two, symlinks=True)
    a = d / 'assets'; a.mkdir()
    assets = {INF: _infinity(a), HART: _hart(a), STAR: _infinitystar(a)}
    prompts = _prompts(d / 'prompts')
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(_infinity_run, one, assets[INF], prompts), pool.submit(_hart_and_star_runs, two, assets, prompts)]
        runs = {k: v for j in jobs for k, v in j.result().items()}
    return {INF: one, HART: two, STAR: two}, runs, assets

def _stopped_at_evaluators(runs, profile, stages: dict):
    "dvc failed exactly the evaluator stages, each naming its profile key."
    rc, out = runs[profile]
    failed = re.search(r"failed to reproduce (?:stages: )?(.*)", out)
    assert rc != 0 and failed, out[-3000:]
    assert sorted(re.findall(r"'real/dvc.yaml:(\w+)'", failed.group(1))) == sorted(stages), out[-4000:]
    for key in stages.values(): assert f'profiles.{profile}.{key}' in out, (key, out[-3000:])
    assert 'Traceback' not in out, out[-3000:]

def _lock(repo) -> dict: return yaml.safe_load((repo / 'real' / 'dvc.lock').read_text())['stages']
def _geneval_files(d: Path): return sorted(str(f.relative_to(d)) for f in d.rglob('*.png'))

def test_infinity_geneval_and_dpg_with_vpg(rehearsal):
    repos, runs, _ = rehearsal
    repo = repos[INF]
    _stopped_at_evaluators(runs, INF, {'geneval': 'geneval', 'dpg': 'dpg_bench'})
    g = repo / 'outputs/real/infinity_geneval'
    assert _geneval_files(g) == ['00000/samples/00000.png', '00000/samples/00001.png', '00001/samples/00000.png', '00001/samples/00001.png']
    assert json.loads((g / '00001' / 'metadata.jsonl').read_text())['prompt'] == 'a blue dog'
    man = json.loads((g / 'manifest.json').read_text())
    assert man['complete'] and man['settings']['pn'] == '0.06M' and not man['settings']['guidance'].startswith('VPG')
    assert sorted(man['settings']['files_sha256']) == ['checkpoint', 'vae']
    dpg = repo / 'outputs/real/infinity_dpg_vpg'                         # a prompt longer than the model's text length: cut
    side = Image.open(dpg / 'tiles' / '000000.png').size[0]
    assert sorted(f.name for f in dpg.glob('*.png')) == ['p0001.png'] and Image.open(dpg / 'p0001.png').size == (2 * side, 2 * side)
    assert json.loads((dpg / 'tiles' / 'manifest.json').read_text())['settings']['guidance'].startswith('VPG')
    lock = _lock(repo)['generate_backbone@infinity_dpg_vpg']
    assert lock['outs'][0]['path'] == 'outputs/real/infinity_dpg_vpg' and lock['outs'][0]['nfiles'] == 1 + 4 + 1   # grid + tiles + manifest
    assert "--pn '0.06M'" in lock['cmd'] and '--vpg-lambda 1.0' in lock['cmd']

def test_dvc_tracks_every_file_it_wrote(rehearsal):
    "Whatever the stages wrote is inside a dvc output (the DPG tiles in theirs), dvc then sees those unchanged; no metrics left."
    repos, runs, _ = rehearsal
    expect = {repos[INF]: {'infinity_geneval', 'infinity_dpg_vpg'}, repos[HART]: {'hart_geneval', 'vbench'}}
    for repo, names in expect.items():
        outs = {o['path'] for st in _lock(repo).values() for o in st.get('outs', [])}
        written = {str(p.relative_to(repo)) for p in (repo / 'outputs/real').iterdir()}
        assert written == outs == {f'outputs/real/{n}' for n in names}, (written, outs)
        assert not [p for p in (repo / 'real').rglob('*') if p.is_file() and p.name not in ('dvc.yaml', 'dvc.lock')]
    rc, out = runs['status']
    assert rc == 0 and 'up to date' in out, out

def test_hart_geneval(rehearsal):
    repos, runs, _ = rehearsal
    _stopped_at_evaluators(runs, HART, {'geneval': 'geneval'})
    g = repos[HART] / 'outputs/real/hart_geneval'
    assert _geneval_files(g) == ['00000/samples/00000.png', '00001/samples/00000.png']
    assert json.loads((g / 'manifest.json').read_text())['settings']['model'] == 'hart'
    assert _lock(repos[HART])['generate_backbone@hart_geneval']['outs'][0]['nfiles'] == 2 + 2 + 1   # PNGs + metadata + manifest

def test_infinitystar_vbench_videos(rehearsal):
    from mvp_vpg.utils.video import read_mp4
    repos, runs, _ = rehearsal
    _stopped_at_evaluators(runs, STAR, {'vbench': 'vbench'})
    v = repos[STAR] / 'outputs/real/vbench'
    assert sorted(f.name for f in v.glob('*.mp4')) == [f'{VIDEO}-0.mp4']
    frames = read_mp4(v / f'{VIDEO}-0.mp4')
    assert frames.shape[0] == 16 * 5 + 1 and frames.shape[-1] == 3              # 5 s at 16 fps
    s = json.loads((v / 'manifest.json').read_text())['settings']
    assert s['preset'] == '480p' and s['pn'] == '0.06M' and s['guidance'].startswith('VPG') and sorted(s['files_sha256']) == ['vae']
    lock = _lock(repos[STAR])['generate_video@star_vbench_vpg']
    assert lock['outs'][0]['nfiles'] == 2 and '--preset 480p --duration 5' in lock['cmd'] and '--vpg-schedule semantic' in lock['cmd']

def test_bad_checkpoint_is_named(rehearsal, tmp_path, capsys):
    "A broken checkpoint file: one line naming it, exit status 2, no traceback."
    from mvp_vpg.stages.app import main
    _, _, assets = rehearsal
    bad = tmp_path / 'infinity_2b_reg.pth'; bad.write_text('not a checkpoint')
    with pytest.raises(SystemExit) as e:
        main(['sample', '--model', 'infinity', '--checkpoint', str(bad), '--vae', str(assets[INF]['vae']), '--text-encoder',
              str(assets[INF]['text_encoder']), '--prompt', 'a red car', '--pn', '0.06M', '--out', str(tmp_path / 'out'), '--no-progress'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1, err
