"""Sharded generation at the process level: `torchrun` with 2 CPU ranks (gloo) against 1 process, and a run killed
with SIGKILL, damaged, and resumed. A tiny random VAR + VQVAE is saved to a temporary toy profile."""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest, torch, yaml

from mvp_vpg.models.checkpoints import save_pretrained
from mvp_vpg.generation.generate import image_ok
from mvp_vpg.generation.layouts import index_name
from mvp_vpg.models.var import VAR
from mvp_vpg.models.vqvae import VQVAE

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES, N_PER_CLASS, BS = 3, 6, 4          # 18 images in 5 global batches (the last one partial)
N = N_CLASSES * N_PER_CLASS
NAMES = [index_name(i) for i in range(N)]

def _env():
    # identical numerics in every process: one thread each (torchrun sets OMP_NUM_THREADS=1 for its workers anyway)
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1',
            'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _cmd(params, out, nproc=None, *extra):
    gen = ['-m', 'mvp_vpg.stages', 'generate', '--params', str(params), '--variant', 'vpg', '--out', str(out), '--no-progress', *extra]
    if nproc is None: return [sys.executable, *gen]
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_addr', '127.0.0.1',
            '--master_port', str(_free_port()), *gen]

def _run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r

def _process_tree(pid: int) -> list:
    "`pid` and all its descendants (torchrun starts each worker in a session of its own, so a process-group kill misses them)."
    kids = {}
    for st in Path('/proc').glob('[0-9]*/stat'):
        try: kids.setdefault(int(st.read_text().rsplit(')', 1)[1].split()[1]), []).append(int(st.parent.name))
        except (OSError, ValueError, IndexError): continue
    tree, todo = [], [pid]
    while todo:
        q = todo.pop(); tree.append(q); todo += kids.get(q, [])
    return tree

def _pngs(d: Path) -> list:
    return sorted(p.name for p in d.iterdir() if p.suffix == '.png')

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp('scale')
    torch.manual_seed(0)
    var = VAR(depth=1, embed_dim=64, num_heads=1, num_classes=N_CLASSES, vocab_size=16, z_channels=4, patch_nums=(1, 2, 4))
    for p in var.parameters(): torch.nn.init.normal_(p, std=0.05)
    vae = VQVAE(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1, 1), patch_nums=(1, 2, 4))
    save_pretrained(var.eval(), d / 'ck' / 'var'); save_pretrained(vae.eval(), d / 'ck' / 'vqvae')
    params = {'profile': 'toy', 'profiles': {'toy': {'checkpoints': str(d / 'ck')}},
              'sample': {'n_per_class': N_PER_CLASS, 'batch_size': BS, 'cfg': 1.5, 'top_k': 8, 'top_p': 0.0, 'seeds': [7],
                         'mode': 'reference'},
              'variants': {'base': {'vpg_lambda': 0}, 'vpg': {'vpg_lambda': 1.0, 'vpg_p': 0.5}}}
    (d / 'params.yaml').write_text(yaml.safe_dump(params))
    _run(_cmd(d / 'params.yaml', d / 'one'))                       # the reference: one plain process
    return d

def test_two_ranks_equal_one_rank(world):
    out = world / 'two'
    _run(_cmd(world / 'params.yaml', out, 2))
    assert _pngs(out) == NAMES                                    # every index once, nothing else
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES + ['manifest.json'])   # no temporary leftovers
    assert all(image_ok(out / n) for n in NAMES)
    for n in NAMES: assert (out / n).read_bytes() == (world / 'one' / n).read_bytes(), n
    man = json.loads((out / 'manifest.json').read_text())
    assert man['complete'] and man['world_size'] == 2 and man['n_missing'] == 0
    shards = sorted(man['shards'], key=lambda s: s['rank'])
    assert [s['rank'] for s in shards] == [0, 1]
    assert [i for s in shards for i in range(*s['indices'])] == list(range(N))          # disjoint and complete
    assert sum(s['written_files'] for s in shards) == N
    assert len(man['settings']['var_sha256']) == 64 and man['settings']['seed'] == 7
    one = json.loads((world / 'one' / 'manifest.json').read_text())
    assert one['settings'] == man['settings'] and one['world_size'] == 1

@pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='finds the torchrun workers through /proc')
def test_killed_run_resumes_without_loss(world):
    out = world / 'killed'
    # each rank draws one batch, then blocks: SIGKILL torchrun and its workers once those files exist
    p = subprocess.Popen(_cmd(world / 'params.yaml', out, 2, '--max-batches', '1', '--hang-at-max'), cwd=ROOT, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (out.is_dir() and sum(image_ok(out / n) for n in NAMES) >= 2 * BS):
            assert p.poll() is None, f"generation exited early:\n{p.stdout.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, "no files appeared"
            time.sleep(0.2)
    finally:
        for q in _process_tree(p.pid):
            try: os.kill(q, signal.SIGKILL)
            except ProcessLookupError: pass
        p.wait()
    done = [n for n in NAMES if (out / n).exists()]
    assert len(done) == 2 * BS < N                                # interrupted half-way
    man = json.loads((out / 'manifest.json').read_text())
    assert not man['complete']
    # damage: truncate one finished file, delete another, leave a stale temporary file as a killed write would
    (out / done[1]).write_bytes((out / done[1]).read_bytes()[:40])
    (out / done[-1]).unlink()
    (out / f'.{Path(done[0]).stem}.k1ll3d.png').write_bytes(b'\x89PNG partial')
    _run(_cmd(world / 'params.yaml', out))                         # resume with another world size: 1 process
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES + ['manifest.json'])
    for n in NAMES: assert (out / n).read_bytes() == (world / 'one' / n).read_bytes(), n
    man = json.loads((out / 'manifest.json').read_text())
    assert man['complete'] and man['world_size'] == 1 and sum(s['drawn_batches'] for s in man['shards']) == 5   # 3 never drawn + 2 damaged

def test_other_settings_are_refused(world):
    r = subprocess.run(_cmd(world / 'params.yaml', world / 'one', None, '--seed', '8'), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'differs in: seed' in r.stderr, r.stderr[-2000:]

def test_text_to_image_generation_two_ranks_then_clip_score(world):
    """Per-prompt generation with a text-to-image run (`--prompts`): 2 ranks equal 1, texts.txt feeds the CLIP score."""
    import shutil
    from mvp_vpg.models.checkpoints import load_var
    from mvp_vpg.mvp.tuner import Tuner
    if not (world / 'ck' / 'clip').exists(): shutil.copytree(ROOT / 'data/toy/clip', world / 'ck' / 'clip')
    torch.manual_seed(1)
    t = Tuner(load_var(world / 'ck' / 'var'), 'mvp', 't2i', text_dim=64)            # the toy CLIP's text width
    for p in t.adapter.parameters(): torch.nn.init.normal_(p, std=0.5)
    t.save(world / 't2i_run' / 'tuned')
    prompts = ['a red circle', 'two blue squares on black', 'a small green triangle']
    (world / 'prompts.txt').write_text('\n'.join(prompts) + '\n')
    extra = ('--tuned', str(world / 't2i_run'), '--prompts', str(world / 'prompts.txt'), '--n-per-prompt', '3')
    _run(_cmd(world / 'params.yaml', world / 't2i_one', None, *extra))
    _run(_cmd(world / 'params.yaml', world / 't2i_two', 2, *extra))
    names = [index_name(i) for i in range(9)]
    for d in ('t2i_one', 't2i_two'):
        assert sorted(p.name for p in (world / d).iterdir()) == sorted(names + ['manifest.json', 'texts.txt'])
    for n in names: assert (world / 't2i_two' / n).read_bytes() == (world / 't2i_one' / n).read_bytes(), n
    man = json.loads((world / 't2i_two' / 'manifest.json').read_text())
    assert man['complete'] and man['settings']['conditions']['kind'] == 'prompt' and man['settings']['conditions']['n_per_prompt'] == 3
    assert (world / 't2i_two' / 'texts.txt').read_text().splitlines() == prompts
    out = world / 'clip.json'
    _run([sys.executable, '-m', 'mvp_vpg.stages', 'evaluate', 'clipscore', '--params', str(world / 'params.yaml'), '--samples',
          str(world / 't2i_two'), '--texts', str(world / 't2i_two' / 'texts.txt'), '--n-per-text', '3', '--out', str(out)])
    res = json.loads(out.read_text())
    assert res['n_samples'] == 9 and -100 <= res['clip_score'] <= 100
    # a class-conditional run cannot draw from prompts, and a t2i run needs them
    r = subprocess.run(_cmd(world / 'params.yaml', world / 't2i_bad', None, '--tuned', str(world / 't2i_run')), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and 'give --prompts' in r.stderr and not (world / 't2i_bad').exists(), r.stderr[-2000:]
    r = subprocess.run(_cmd(world / 'params.yaml', world / 't2i_bad', None, '--tuned', str(world / 't2i_run'), '--prompts', ''),
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)   # real_eval.t2i.<name>.prompts left empty
    assert r.returncode == 2 and 'real_eval.t2i.<name>.prompts' in r.stderr and not (world / 't2i_bad').exists(), r.stderr[-2000:]
