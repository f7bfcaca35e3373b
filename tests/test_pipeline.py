"""Pipeline wiring: the main job (`dvc repro`, the headline study) and the full study (`dvc repro study/dvc.yaml`) on a tiny
setting in a throw-away copy of the repository."""
import json, subprocess
import pytest, yaml
from _repo import BIN, copy_repo, run as _run

@pytest.fixture(scope='module')
def repo(tmp_path_factory):
    d = copy_repo(tmp_path_factory.mktemp('repo'))      # metrics/, reports/, REPRODUCTION.md: produced by the run
    p = yaml.safe_load((d / 'params.yaml').read_text())
    p['data'].update(n_train=64, n_val=16, n_test=48)
    p['sample'].update(n_per_class=4, batch_size=24, seeds=[0, 1])
    p['variants'] = {k: p['variants'][k] for k in ('base', 'vpg')}        # one guided variant is enough for wiring
    p['vpg_sweep'].update(lams=[1.0], ps=[0.5])
    m = p['mvp']                                                           # MVP study: a few steps of three runs
    m.update(steps=2, batch_size=4, semantic_batch=2, ckpt_every=1, data={**m['data'], 'n': 8, 'n_val': 4},
             eval={**m['eval'], 'n_per_class': 1, 'seeds': [0, 1], 'batch_size': 12, 'n_ref': 24, 'geneval_per_category': 1})
    p['mvp_runs'] = {k: p['mvp_runs'][k] for k in ('base', 'mvp', 't2i_mvp')}
    p['mvp_guided'] = {'mvp_vpg': p['mvp_guided']['mvp_vpg']}
    p['geneval_toy'].update(variants=['base'], n_per_category=2, n_per_prompt=2)
    p['bench_vpg'].update(batch_size=4, repeats=1)
    p['dpg_toy'].update(n_prompts=2, runs={'t2i_mvp': {'run': 'outputs/mvp/t2i_mvp', 'variant': 'vpg'}})
    p['headline'].update(n_per_class=2, seeds=[0, 1], batch_size=12, n_boot=10)
    p['headline_infinity'].update(n_per_category=1, n_per_prompt=2, seeds=[0, 1], batch_size=12, dpg={'n_prompts': 2})
    p['headline_video'].update(n_per_dimension=1, n_per_prompt=1, seeds=[0, 1], batch_size=7, latency={'batch_size': 2, 'repeats': 1})
    p['headline_video_sweep'].update(lams=[1.0], ps=[0.25], schedules=['semantic'])
    st = p['infinity_study']                                               # toy Infinity study: 2 tuning steps, one sweep point
    st['sample'].update(n_per_category=1, n_per_prompt=1, seeds=[0, 1], batch_size=12, dpg={'n_prompts': 2})
    st['sweep'] = {'lams': [2.0], 'ps': [0.5]}
    st['tune'].update(steps=2, batch_size=4, ckpt_every=1, data={**st['tune']['data'], 'n': 8, 'n_val': 4})
    (d / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    _run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'shrunk params'], d)
    _run(['dvc', 'repro'], d)
    assert all((d / f'metrics/headline/{m}.json').exists() for m in ('paired', 'infinity', 'video', 'video_sweep'))
    assert not (d / 'metrics/base.json').exists()   # the main job is the headline only
    _run(['dvc', 'repro', 'study/dvc.yaml'], d)
    return d

def test_headline_study_pairs_the_four_variants(repo):
    h = json.loads((repo / 'metrics/headline/paired.json').read_text())
    assert set(h['variants']) == {'base', 'vpg', 'mvp', 'mvp_vpg'} and h['n_per_variant'] == 2 * 12 * 2
    for k in ('vpg - base', 'mvp - base', 'mvp_vpg - base', 'mvp_vpg - mvp'):
        r = h['pairs'][k]
        assert r['ci95'][0] <= r['ci95'][1] and r['mde80'] >= 0 and len(r['per_seed_delta']) == 2
    md = (repo / 'reports/headline/results.md').read_text()
    assert '| vpg - base |' in md and 'paired bootstrap' in md
    assert (repo / 'reports/headline/paired.png').stat().st_size > 0 and (repo / 'reports/headline/grid.png').stat().st_size > 0
    base0 = sorted((repo / 'outputs/headline/samples/base/seed0').glob('*.png'))
    assert len(base0) == 24
    assert any(f.read_bytes() != (repo / 'outputs/headline/samples/mvp/seed0' / f.name).read_bytes() for f in base0)

def test_headline_infinity_part(repo):
    m = json.loads((repo / 'metrics/headline/infinity.json').read_text())
    assert set(m['geneval']['paired']) == {'overall', 'single_object', 'two_object', 'counting', 'colors', 'position', 'color_attr'}
    assert m['geneval']['variants']['base']['n_images'] == 6 * 2 * 2 and 'dpg_score' in m['dpg']['paired']
    assert m['guidance']['vpg'].startswith('VPG') and 'overall' in m['prompt_following']
    md = (repo / 'reports/headline/infinity.md').read_text()
    assert '| **overall** (mean over categories) |' in md and '| **DPG score** |' in md
    assert (repo / 'reports/headline/infinity_grid.png').stat().st_size > 0 and (repo / 'reports/headline/results.md').exists()
    g = repo / 'outputs/headline/infinity'
    base0 = sorted((g / 'base/seed0/geneval').glob('*/samples/*.png'))
    assert len(base0) == 12 and sorted(p.name for p in (g / 'vpg/seed1/dpg').glob('*.png')) == ['shapes0000.png', 'shapes0001.png']
    assert any(f.read_bytes() != (g / 'vpg' / f.relative_to(g / 'base')).read_bytes() for f in base0)

def test_headline_video_part(repo):
    "The toy InfinityStar on the toy VBench: three variants on common random numbers, paired, with the latency table."
    import numpy as np
    m = json.loads((repo / 'metrics/headline/video.json').read_text())
    assert set(m['variants']) == {'base', 'vpg_all', 'vpg_semantic'} and set(m['paired']) == {'vpg_all', 'vpg_semantic'}
    assert m['settings']['n_clips_per_variant'] == 7 * 1 * 2 and len(m['variants']['base']['total_per_seed']) == 2
    assert 'total_score' in m['paired']['vpg_all'] and m['ground_truth']['total_score'] > 90
    assert m['latency']['ratio']['base'] == 1.0 and "schedule=[1, 4, 5]" in m['guidance']['vpg_semantic']
    md = (repo / 'reports/headline/video.md').read_text()
    assert '| **total_score** |' in md and '## Latency' in md and '(video.md)' in (repo / 'reports/headline/results.md').read_text()
    assert (repo / 'reports/headline/video_frames.png').stat().st_size > 0
    a, b = (np.load(repo / f'outputs/headline/video/{v}/seed0.npz')['videos'] for v in ('base', 'vpg_all'))
    assert a.shape == (7, 5, 32, 32, 3) and not np.array_equal(a, b)
    sw = json.loads((repo / 'metrics/headline/video_sweep.json').read_text())       # the VPG settings sweep, on other prompts
    assert [(g['schedule'], g['vpg_lambda'], g['vpg_p']) for g in sw['grid']] == [('semantic', 1.0, 0.25)]
    assert sw['settings']['prompt_seed'] != sw['settings']['headline_prompt_seed'] and '| semantic | 1.0 | 0.25 |' in (repo / 'reports/headline/video_sweep.md').read_text()

def test_infinity_study_stages(repo):
    m = json.loads((repo / 'metrics/infinity/results.json').read_text())
    assert set(m['paired']) == {'vpg', 'mvp', 'sweep_lam2.0_p0.5'} and m['variants']['base']['geneval']['n_images'] == 6 * 1 * 2
    for v, r in m['paired'].items():
        assert 'overall' in r['geneval'] and 'dpg_score' in r['dpg'] and len(m['variants'][v]['geneval']['overall_per_seed']) == 2
    assert m['tune']['n_trainable'] > 0 and m['tune']['steps'] == 2 and m['guidance']['mvp'] == m['guidance']['base']
    assert m['sweep'][0]['variant'] == 'sweep_lam2.0_p0.5' and m['guidance']['sweep_lam2.0_p0.5'].startswith('VPG(lam=2.0, p=0.5')
    md = (repo / 'reports/infinity/results.md').read_text()
    assert '| **GenEval overall** |' in md and '| **DPG score** |' in md and 'λ × p sweep' in md and 'trainable' in md
    assert (repo / 'reports/infinity/grid.png').stat().st_size > 0 and (repo / 'outputs/infinity/tune/tuned/prompt').is_dir()

def test_repro_writes_metrics_with_spread_over_seeds(repo):
    m = json.loads((repo / 'metrics' / 'base.json').read_text())
    assert m['seeds'] == [0, 1] and m['n_per_seed'] == 48
    for k in ('fid', 'class_accuracy'):
        assert len(m['metrics'][k]['per_seed']) == 2 and m['metrics'][k]['std'] >= 0
    assert 0 <= m['metrics']['class_accuracy']['mean'] <= 1

def test_repro_writes_report_and_figures(repo):
    md = (repo / 'reports' / 'results.md').read_text()
    assert '| base |' in md and '| vpg |' in md and 'FID' in md and 'λ × p sweep' in md
    assert (repo / 'reports' / 'vpg_sweep.csv').read_text().splitlines()[0].startswith('lam,p,fid')
    figs = {p.name for p in (repo / 'reports' / 'figures').iterdir()}
    assert {'base_grid.png', 'fid_per_seed.png', 'base_class00.png'} <= figs

def test_samples_have_no_gaps_and_a_manifest(repo):
    for seed in (0, 1):
        names = sorted(p.name for p in (repo / 'outputs/samples/base' / f'seed{seed}').glob('*.png'))
        assert names == [f'{i:06d}.png' for i in range(48)]
    man = json.loads((repo / 'outputs/samples/base/manifest.json').read_text())
    assert len(man['var_sha256']) == 64 and man['seeds'] == [0, 1]

def test_captions_jsonl_format(repo):
    lines = (repo / 'data/captions/test.jsonl').read_text().splitlines()
    rec = json.loads(lines[0])
    assert len(lines) == 48 and set(rec) == {'id', 'label', 'class_name', 'sentence', 'caption'}
    assert rec['sentence'].startswith('a photo of')

def test_second_repro_is_a_no_op(repo):
    for f in ('dvc.yaml', 'study/dvc.yaml'):
        out = _run(['dvc', 'status', f], repo).stdout
        assert 'changed' not in out, (f, out)
    assert not (repo / 'outputs' / 'real').exists()   # the default repro never enters real/dvc.yaml

def test_real_profile_stops_naming_the_missing_path(repo):
    p = yaml.safe_load((repo / 'params.yaml').read_text()); p['profile'] = 'imagenet256_d16'
    (repo / 'params_real.yaml').write_text(yaml.safe_dump(p))
    r = subprocess.run([str(BIN / 'python'), '-m', 'mvp_vpg.stages', 'sample-variant', '--params', 'params_real.yaml'],
                       cwd=repo, capture_output=True, text=True)
    assert r.returncode != 0 and 'profiles.imagenet256_d16.var' in r.stderr

def test_mvp_runs_train_evaluate_and_feed_the_report(repo):
    m = json.loads((repo / 'metrics/mvp/mvp.json').read_text())
    assert m['train']['steps'] == 2 and m['train']['n_trainable'] > 0 and m['eval']['seeds'] == [0, 1]
    assert m['eval']['metrics']['fid']['std'] >= 0 and (repo / 'outputs/mvp/mvp/tuned/prompt').is_dir()
    t = json.loads((repo / 'metrics/mvp/t2i_mvp.json').read_text())['eval']['metrics']
    assert {'clip_score_caption', 'geneval_overall'} <= set(t)
    g = json.loads((repo / 'metrics/mvp/mvp_vpg.json').read_text())
    assert g['train'] is None and g['eval']['guidance'].startswith('VPG') and g['eval']['tuned_from'] == 'outputs/mvp/mvp'
    md = (repo / 'reports' / 'results.md').read_text()
    assert '## MVP' in md and '| mvp_vpg |' in md
    rep = (repo / 'REPRODUCTION.md').read_text()
    assert 'MVP Table 1' in rep and 'VPG Table 2' in rep and 'train_mvp@' in rep
    rows = {l.split(' | ')[0][2:]: l for l in rep.splitlines() if l.startswith('| ')}   # toy backbones: from their stages' metrics
    inf = json.loads((repo / 'metrics/headline/infinity.json').read_text())['geneval']['paired']['overall']
    assert f"headline: GenEval overall {inf['base']:.3f} → {inf['vpg']:.3f}" in rows['VPG Table 3'], rows['VPG Table 3']
    lat = json.loads((repo / 'metrics/headline/video.json').read_text())['latency']['ratio']
    assert f"VPG semantic-only {lat['vpg_semantic']:.2f}×" in rows['VPG App. B.2'] and 'unguided (CFG) ' in rows['VPG Table 4']
    assert 'toy Infinity, +MVP: GenEval overall' in rows['MVP on Infinity'] and 'generate_video@' in rows['VPG Table 4']

def test_toy_geneval_stage(repo):
    g = json.loads((repo / 'metrics/geneval_toy/geneval_toy_base.json').read_text())
    assert g['n_images'] == 2 * 2 * 2 and 0 <= g['overall'] <= 1
    assert '| base |' in (repo / 'reports' / 'results.md').read_text().split('Toy GenEval')[1]

def test_vpg_latency_stage_feeds_the_report(repo):
    b = json.loads((repo / 'metrics/bench/vpg_latency.json').read_text())
    rows = {r['setting']: r for r in b['rows']}
    assert len(rows) == 4 and rows['CFG only']['latency_ratio'] == 1.0 and b['batch_size'] == 4
    assert all(r['s_per_batch'] > 0 and r['peak_mb'] > 0 for r in rows.values())
    md = (repo / 'reports' / 'results.md').read_text()
    assert 'App. B.2' in md and 'VPG semantic-only' in md.split('App. B.2')[1]

def test_toy_dpg_stage(repo):
    d = json.loads((repo / 'metrics/dpg_toy/dpg_toy_t2i_mvp.json').read_text())
    assert d['n_images'] == 2 and 0 <= d['dpg_score'] <= 100 and d['guidance'].startswith('VPG') and 'l1/relation' in d
    assert sorted(p.name for p in (repo / 'outputs/dpg_toy/t2i_mvp').glob('*.png')) == ['shapes0000.png', 'shapes0001.png']
    assert list((repo / 'outputs/dpg_toy/t2i_mvp').glob('dpg-bench_*_results.txt'))      # DPG-Bench's own result file
    assert '| t2i_mvp |' in (repo / 'reports' / 'results.md').read_text().split('Toy DPG-Bench')[1]

def test_toy_adm_export_stage(repo):
    d = json.loads((repo / 'metrics/npz_toy/base.json').read_text())
    assert d['npz_equals_pngs'] and d['shape'] == [48, 32, 32, 3] and d['dtype'] == 'uint8'
    per_seed = json.loads((repo / 'metrics/base.json').read_text())['metrics']['fid']['per_seed']
    assert abs(d['fid'] - per_seed[0]) < 1e-6                   # the .npz holds exactly the PNGs the evaluate stage scored
    assert 'ADM export' in (repo / 'reports' / 'results.md').read_text()
