"""Conformance with the official Infinity implementation: tensors recorded from the official code with random weights
(tests/data/infinity_A.*, copied from shared/conformance; 5 scales of the 0.06M 1:1 schedule, d = 14, C = 128).
Everything fp32 on CPU. The official cross-attention rounds q, k/v and its output to bf16 even in fp32; we reproduce
that (`bf16_cross_attn`), but ulp-level differences of the CPU kernels then flip a few bf16 roundings, so float
checks with those casts have a tolerance; with the casts off the transformer matches the official fp32 diagnostic
tightly. Bits, next-scale inputs and summed codes are compared exactly."""
import json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from mvp_vpg.models.infinity import Infinity, InfinityConfig, infer_infinity_config, load_infinity
from mvp_vpg.models.infinity_layers import TextCond, rope_table
from mvp_vpg.models.infinity_backbone import InfinityBackbone
from mvp_vpg.models.infinity_vae import InfinityVAE, infer_infinity_vae_config
from mvp_vpg.models.backbone import ScaleInput
from mvp_vpg.sampling.sampler import filter_logits_, draw_tokens
from mvp_vpg.sampling.infinity import sample_infinity, infinity_cfg
from mvp_vpg.sampling.guidance import Guidance
from mvp_vpg.vpg.guidance import VPG
from mvp_vpg.mvp.prompts import MultiScalePrompt

DATA = Path(__file__).parent / 'data'
META = json.loads((DATA / 'infinity_A.json').read_text())
SCHED = [tuple(s[1:]) for s in META['scale_schedule']]
K, d = len(SCHED), META['derived']['d_bits']

@pytest.fixture(scope='module')
def rec(): return load_file(str(DATA / 'infinity_A.safetensors'))

def _sub(rec, prefix): return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}

@pytest.fixture(scope='module')
def models(rec):
    model = Infinity(infer_infinity_config(_sub(rec, 'infinity.'))).eval()
    model.load_state_dict(_sub(rec, 'infinity.'), strict=True)
    vae = InfinityVAE(infer_infinity_vae_config(_sub(rec, 'vae.'))).eval()
    vae.load_state_dict(_sub(rec, 'vae.'), strict=True)
    return model, vae

@pytest.fixture(scope='module')
def text(rec): return TextCond(rec['text.kv_compact'], rec['text.lens'])

def test_strict_load_and_inferred_config(rec):
    c, kw = META['config'], META['infinity_constructor_kwargs']
    cfg = infer_infinity_config(_sub(rec, 'infinity.'))
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.block_chunks, cfg.text_channels, cfg.text_maxlen, cfg.d) == \
           (c['depth'], c['embed_dim'], c['num_heads'], c['block_chunks'], c['text_channels'], c['text_maxlen'], c['vae_type'])
    m = Infinity(depth=kw['depth'], embed_dim=kw['embed_dim'], num_heads=kw['num_heads'], d=c['vae_type'],
                 text_channels=kw['text_channels'], text_maxlen=kw['text_maxlen'], block_chunks=kw['block_chunks'])
    r = m.load_state_dict(_sub(rec, 'infinity.'), strict=True)
    assert not (r.missing_keys or r.unexpected_keys)
    assert sorted(m.state_dict()) == sorted(_sub(rec, 'infinity.'))

def test_rope_table_exact(rec):
    assert torch.equal(rope_table(META['derived']['head_dim'], 1.0)[:, :121], rec['rope.freqs_grid'])

def test_teacher_forward(models, rec, text):
    model, _ = models
    with torch.no_grad():
        assert (model.text_features(text).cond - rec['teacher.sos_pool']).abs().max() <= 1e-6
        logits = model(text, rec['teacher.x_BLC_wo_prefix'], SCHED)
        err = (logits - rec['teacher.logits']).abs()
        # Our casts are the official ones (q, k/v and the kernel output rounded to bf16, fp32 kernel): max 2.29e-3,
        # median 1.1e-6 on an AVX512 CPU. The max comes from a few bf16 rounding flips set off by ulp-level differences
        # between CPU kernels, so 2e-3 cannot hold everywhere: 1-ulp noise on the text gives maxima 1.2e-3..2.7e-3
        # (median 2.3e-3), MKL_CBWR=COMPATIBLE 1.4e-3; the official code's own two paths differ by 1.5e-3. The median
        # tells the cast pattern apart: a bf16 kernel, bf16 probabilities or no output rounding give medians >= 1.2e-3.
        assert err.max() <= 3e-3 and err.median() <= 2e-5, (err.max(), err.median())
        model.cfg.bf16_cross_attn = False
        for mod in model.modules():
            if hasattr(mod, 'bf16_round'): mod.bf16_round = False
        try: plain = model(text, rec['teacher.x_BLC_wo_prefix'], SCHED)
        finally:
            model.cfg.bf16_cross_attn = True
            for mod in model.modules():
                if hasattr(mod, 'bf16_round'): mod.bf16_round = True
    assert (plain - rec['teacher.logits_nobf16ca']).abs().max() <= 1e-5     # measured 2.9e-6..5.6e-6 across CPU dispatch paths

_COMPATIBLE_CHECK = """
import json, sys, torch
from safetensors.torch import load_file
from mvp_vpg.models.infinity import Infinity, infer_infinity_config
from mvp_vpg.models.infinity_layers import TextCond
d = sys.argv[1]; meta = json.load(open(d + '/infinity_A.json')); rec = load_file(d + '/infinity_A.safetensors')
sub = {k[9:]: v for k, v in rec.items() if k.startswith('infinity.')}
m = Infinity(infer_infinity_config(sub)).eval(); m.load_state_dict(sub, strict=True)
text = TextCond(rec['text.kv_compact'], rec['text.lens'])
with torch.no_grad():
    pool_exact = torch.equal(m.text_features(text).cond, rec['teacher.sos_pool'])
    err = (m(text, rec['teacher.x_BLC_wo_prefix'], [tuple(s[1:]) for s in meta['scale_schedule']]) - rec['teacher.logits']).abs()
    from mvp_vpg.models.infinity_vae import InfinityVAE, infer_infinity_vae_config
    from mvp_vpg.sampling.infinity import sample_infinity
    vs = {k[4:]: v for k, v in rec.items() if k.startswith('vae.')}
    vae = InfinityVAE(infer_infinity_vae_config(vs)).eval(); vae.load_state_dict(vs, strict=True)
    runs = []
    for j, s in enumerate(meta['sampling']):      # free-running, end to end
        out = sample_infinity(m, vae, text, cfg=s['cfg'], tau=s['tau'], top_k=s['top_k'], top_p=s['top_p'], seed=s['g_seed'],
                              pn=meta['config']['pn'], n_scales=len(meta['scale_schedule']))
        runs.append({'bit_diffs': [int((b != rec[f'sample{j}.bits.{k}']).sum()) for k, b in enumerate(out.bits)],
                     'image': (out.images * 2 - 1 - rec[f'sample{j}.image']).abs().max().item()})
print(json.dumps({'pool_exact': pool_exact, 'max': err.max().item(), 'median': err.median().item(), 'runs': runs}))
"""

def test_teacher_forward_on_the_recorders_kernel_path():
    """The issue's 2e-3 bound, on MKL's reproducible code path (MKL_CBWR=COMPATIBLE), which is the path the recording
    machine's kernels match (there the text pool is bit-exact). The bf16 roundings of the official cross-attention
    then flip as they did when recorded: 1.43e-3 max measured (2.29e-3 on this CPU's default AVX-512 path), and free-running
    sampling draws every recorded bit of every scale in all recorded settings (on the default path 1 of 112 bits
    differs at scale 1 of setting 1 and the runs diverge from there, as the JSON warns)."""
    import os, subprocess, sys
    r = subprocess.run([sys.executable, '-c', _COMPATIBLE_CHECK, str(DATA)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'MKL_CBWR': 'COMPATIBLE', 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if not res['pool_exact']:   # this CPU/MKL does not reproduce the recorder's kernels even on the compatible path
        pytest.skip(f"MKL_CBWR=COMPATIBLE does not reproduce the recorder's text pool here (max {res['max']:.2e})")
    assert res['max'] <= 2e-3 and res['median'] <= 2e-5, res
    for j, r in enumerate(res['runs']):
        assert r['bit_diffs'] == [0] * K, (j, r)
        assert r['image'] <= 1e-5, (j, r)

def _teacher_forced(bb, rec, text, j, cfg):
    "KV-cached steps on the recorded bits of setting j -> CFG-combined logits, word_embed inputs, x_block0, final state."
    B, two = len(text), cfg != 1
    c = TextCond.cat([text, bb.null_cond(text)]) if two else text
    cache, state, inp, out, feats, xb0 = bb.new_cache(), bb.init_state(B), None, [], [], []
    for si in range(bb.K):
        inp = bb.start_input(c) if si == 0 else inp.repeat(2 if two else 1)
        xb0.append(inp.visual + bb.model.lvl_embed.weight[si])
        lg = bb.step(si, inp, c, cache)
        out.append(cfg * lg[:B] + (1 - cfg) * lg[B:] if two else lg)
        state, inp = bb.next_input(si, rec[f'sample{j}.bits.{si}'], None, state)
        if inp is not None: feats.append(bb.embed_codes(si + 1, state))
    return out, feats, xb0, state

@pytest.mark.parametrize('j', range(len(META['sampling'])))
def test_kv_cached_steps_next_inputs_and_decode(models, rec, text, j):
    model, vae = models
    s = META['sampling'][j]
    bb = InfinityBackbone(model, vae, pn=META['config']['pn'], n_scales=K, tau=s['tau'])
    with torch.no_grad(): out, feats, xb0, state = _teacher_forced(bb, rec, text, j, s['cfg'])
    amp = (abs(s['cfg']) + abs(1 - s['cfg'])) / s['tau']      # how CFG and 1/tau scale a model-logit difference
    for si in range(K):
        assert (out[si].reshape(2, -1, 2) - rec[f'sample{j}.logits.{si}']).abs().max() <= 5e-3 * amp, (s, si)
        if si: assert torch.equal(feats[si - 1], rec[f'sample{j}.word_embed_in.{si}']), (s, si)
        if f'sample{j}.x_block0.{si}' in rec: assert (xb0[si] - rec[f'sample{j}.x_block0.{si}']).abs().max() <= 1e-6
    assert torch.equal(state, rec[f'sample{j}.summed_codes'])
    with torch.no_grad(): img = bb.decode(state)
    assert (img * 2 - 1 - rec[f'sample{j}.image']).abs().max() <= 1e-5

@pytest.mark.parametrize('j', range(len(META['sampling'])))
def test_filter_and_draw_exact(rec, j):
    s = META['sampling'][j]
    rng = torch.Generator().manual_seed(s['g_seed'])
    for si in range(K):
        lg = rec[f'sample{j}.logits.{si}'].view(2, -1, d, 2).clone()
        filter_logits_(lg, s['top_k'], s['top_p'])
        assert torch.equal(lg.view(2, -1, 2), rec[f'sample{j}.filtered_logits.{si}'])
        assert torch.equal(draw_tokens(lg, rng).view(2, -1, d), rec[f'sample{j}.bits.{si}'])

def _kw(j=1):
    s = META['sampling'][j]
    return dict(cfg=s['cfg'], tau=s['tau'], top_k=s['top_k'], top_p=s['top_p'], seed=s['g_seed'], pn=META['config']['pn'], n_scales=K)

def test_end_to_end(models, rec, text):
    "Free-running: the first scale is the official draw; later scales may diverge (see the JSON notes), not by much."
    model, vae = models
    out = sample_infinity(model, vae, text, **_kw(1))
    assert torch.equal(out.bits[0], rec['sample1.bits.0'])
    assert (out.bits[1] == rec['sample1.bits.1']).float().mean() >= 0.95
    assert out.images.shape == (2, 3, 128, 128) and 0 <= out.images.min() and out.images.max() <= 1

def test_vpg_off_and_zero_prompt_reproduce_plain_sampling(models, text):
    model, _ = models
    kw = _kw(1)
    plain = sample_infinity(model, None, text, **kw)
    base = infinity_cfg(kw['cfg'], K)
    zero = MultiScalePrompt(tuple(h for h, _ in SCHED), model.C, tau=None)
    with torch.no_grad():
        for p in zero.parameters(): p.zero_()
    for other in (dict(guidance=VPG(lam=0.0, base=base)), dict(guidance=VPG(lam=2.0, p=0.0, base=base)),
                  dict(guidance=VPG(lam=2.0, p=0.0, redraw='per_step', base=base)), dict(prompt=zero)):
        out = sample_infinity(model, None, text, **{**kw, **other})
        for si in range(K): assert torch.equal(out.bits[si], plain.bits[si]), (other, si)

@pytest.mark.parametrize('variant', ['position', 'full_embedding'])
def test_vpg_corruption_changes_logits(models, text, variant):
    "A corrupted branch sees other inputs: its logits differ from the clean branch on the guided scales."
    model, _ = models
    seen = []
    class Spy(VPG):
        def combine(self, logits, si, K):
            if si >= 2: seen.append((logits['cond'] - logits['cond/corrupt']).abs().max().item())
            return super().combine(logits, si, K)
    sample_infinity(model, None, text, **{**_kw(1), 'guidance': Spy(lam=1.0, p=0.5, variant=variant, base=infinity_cfg(3.0, K))})
    assert len(seen) == K - 2 and min(seen) > 1e-3

def test_position_index_moves_rope_rows(models, text):
    "Permuting visual rows and the position index together permutes the logits; positions alone change them."
    model, _ = models
    bb = InfinityBackbone(model, None, pn='0.06M', n_scales=K)
    vis = bb.random_visual(1, 2, 4, torch.Generator().manual_seed(0))
    perm = torch.tensor([[2, 0, 3, 1], [1, 2, 3, 0]])
    outs = []
    with torch.no_grad():
        for inp in (ScaleInput(vis), ScaleInput(vis.gather(1, perm[..., None].expand(-1, -1, vis.shape[-1])), perm), ScaleInput(vis, perm)):
            cache = bb.new_cache(); bb.step(0, bb.start_input(text), text, cache)
            outs.append(bb.step(1, inp, text, cache))
    assert (outs[1] - outs[0].gather(1, perm[..., None, None].expand(-1, -1, d, 2))).abs().max() <= 1e-4
    assert (outs[2] - outs[0]).abs().max() > 1e-3

def test_prefix_tokens_take_no_position(models, text):
    "MVP prefix tokens (scale 0 only) run in front of the SOS with the identity rotation and fill the cache's extra rows."
    model, _ = models
    bb = InfinityBackbone(model, None, pn='0.06M', n_scales=K)
    pre = torch.randn(2, 3, model.C) * 0.1
    with torch.no_grad():
        cache = bb.new_cache(extra_len=3)
        out = bb.step(0, bb.start_input(text), text, cache, prefix=pre)
        assert out.shape == (2, 1, d, 2) and cache.len == 4
        shuffled = bb.step(0, bb.start_input(text), text, bb.new_cache(extra_len=3), prefix=pre[:, [2, 0, 1]])
        plain = bb.step(0, bb.start_input(text), text, bb.new_cache())
    assert (out - plain).abs().max() > 1e-4                                   # the prefix is attended to
    assert (shuffled - out).abs().max() <= 1e-5                               # ... without positions: order is irrelevant

def test_official_pth_roundtrip_and_errors(rec, tmp_path):
    sd = _sub(rec, 'infinity.')
    torch.save(sd, tmp_path / 'infinity_tiny.pth')
    m = load_infinity(tmp_path / 'infinity_tiny.pth')
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    torch.save({k: v for k, v in sd.items() if k != 'block_chunks.1.module.0.ca.v_bias'}, tmp_path / 'short.pth')
    with pytest.raises(ValueError, match=r'missing keys \(1\): block_chunks.1.module.0.ca.v_bias'):
        load_infinity(tmp_path / 'short.pth')
    torch.save(_sub(rec, 'vae.'), tmp_path / 'vae.pth')
    with pytest.raises(ValueError, match='looks like the BSQ VAE'):
        load_infinity(tmp_path / 'vae.pth')

@pytest.mark.gpu
def test_cuda_reference_and_fast_modes(models, rec, text):
    "On CUDA: the fp32 teacher forward matches the recording; fast mode (bf16 autocast) samples finite images."
    model, vae = models
    model, vae = model.cuda(), vae.cuda()
    try:
        with torch.no_grad():
            t = TextCond(text.kv_compact.cuda(), text.lens)
            logits = model(t, rec['teacher.x_BLC_wo_prefix'].cuda(), SCHED).cpu()
        fast = sample_infinity(model, vae, text, **_kw(1), mode='fast')
    finally: model.cpu(); vae.cpu()
    assert (logits - rec['teacher.logits']).abs().max() <= 5e-3
    assert torch.isfinite(fast.images).all() and [b.shape for b in fast.bits] == [(2, h * w, d) for h, w in SCHED]
