"""Pipeline wiring: `dvc repro` of the whole toy study on a tiny setting in a throw-away copy of the repository."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def _run(cmd, cwd):
    env = {'PATH': f"{BIN}:/usr/bin:/bin", 'DVC_NO_ANALYTICS': '1', 'HF_HUB_OFFLINE': '1', 'HOME': str(cwd)}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r

@pytest.fixture(scope='module')
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp('repo')
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (d / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, d / f)
    for f in ('metrics', 'reports'): shutil.rmtree(d / f, ignore_errors=True)  # must be produced by the run
    p = yaml.safe_load((d / 'params.yaml').read_text())
    p['data'].update(n_train=64, n_val=16, n_test=48)
    p['sample'].update(n_per_class=4, batch_size=24, seeds=[0, 1])
    p['variants'] = {k: p['variants'][k] for k in ('base', 'vpg')}        # one guided variant is enough for wiring
    p['vpg_sweep'].update(lams=[1.0], ps=[0.5])
    (d / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    _run(['git', 'init', '-q'], d); _run(['git', 'add', '-A'], d)
    _run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'copy'], d)
    _run(['dvc', 'repro'], d)
    return d

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
    out = _run(['dvc', 'status'], repo).stdout
    assert 'changed' not in out, out

def test_real_profile_stops_naming_the_missing_path(repo):
    p = yaml.safe_load((repo / 'params.yaml').read_text()); p['profile'] = 'imagenet256_d16'
    (repo / 'params_real.yaml').write_text(yaml.safe_dump(p))
    r = subprocess.run([str(BIN / 'python'), '-m', 'mvp_vpg.pipeline', 'sample', '--params', 'params_real.yaml'],
                       cwd=repo, capture_output=True, text=True)
    assert r.returncode != 0 and 'profiles.imagenet256_d16.var' in r.stderr
