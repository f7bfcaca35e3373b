"""Conformance of the HART transformer, its backbone adapter and `sample_hart` with the official mit-han-lab/hart code:
tensors recorded from the official code with random weights (tests/data/hart_A.*, copied from shared/conformance).
Everything fp32 on CPU."""
import json
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from mvp_vpg.models.backbone import ScaleInput
from mvp_vpg.models.hart import HARTConfig, HARTForT2I, hart_from_state_dict, load_hart
from mvp_vpg.models.hart_tokenizer import tokenizer_from_state_dict
from mvp_vpg.models.hart_backbone import HARTBackbone, ContextRows, _GuidedEps
from mvp_vpg.models.hart_diffusion import sample_residual
from mvp_vpg.models import hart_backbone
from mvp_vpg.sampling.sampler import filter_logits_, draw_tokens
from mvp_vpg.sampling.hart import sample_hart, HARTCFG, official_top_k
from mvp_vpg.vpg.guidance import VPG
from mvp_vpg.mvp.prompts import MultiScalePrompt
from mvp_vpg.models.var import Prompt
from mvp_vpg.sampling.guidance import Window

DATA = Path(__file__).parent / 'data'
META = json.loads((DATA / 'hart_A.json').read_text())
PN = tuple(META['config']['patch_nums'])
K, B = len(PN), META['config']['B']


@pytest.fixture(scope='module')
def rec(): return load_file(str(DATA / 'hart_A.safetensors'))

def _sub(rec, prefix): return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}

def _cfg(): return HARTConfig.from_dict(META['config']['transformer'], vocab_size=META['config']['tokenizer']['vocab_size'],
                                        z_channels=META['config']['tokenizer']['z_channels'])

@pytest.fixture(scope='module')
def model(rec): return hart_from_state_dict(_sub(rec, 'hart.'), _cfg(), 'hart_A')

@pytest.fixture(scope='module')
def tok(rec): return tokenizer_from_state_dict(_sub(rec, 'vae.'), PN, META['config']['tokenizer']['quant_resi'], 'hart_A vae')

@pytest.fixture(scope='module')
def ctx(rec): return ContextRows(rec['io.context'], rec['io.context_mask'], rec['io.context_position_ids'])

def _maxabs(a, b): return (a - b).abs().max().item()


def test_strict_load_with_buffers(rec):
    m = HARTForT2I(_cfg())
    r = m.load_state_dict(_sub(rec, 'hart.'), strict=True)
    assert not (r.missing_keys or r.unexpected_keys)
    assert sorted(m.state_dict()) == sorted(k[5:] for k in META['state_dict_keys']['hart'])


def test_teacher_forcing(model, rec):
    x = rec['teacher.x_BLCv_wo_first_l']
    with torch.no_grad():
        blk0 = torch.cat((model.embed_context(rec['io.context']), model.word_embed(x)), 1) + model.lvl_embed(model.lvl_1L[0])
        logits = model(rec['io.context'], rec['io.context_position_ids'], x)
        mar = model(rec['io.context'], rec['io.context_position_ids'], x, keep_last=rec['teacher_mar.keep_idx'])
    assert _maxabs(blk0, rec['teacher.block0_in']) <= 1e-6
    assert _maxabs(logits, rec['teacher.logits']) <= 1e-5
    n = rec['teacher_mar.keep_idx'].shape[1]
    assert _maxabs(mar[:, -n:], rec['teacher_mar.logits_last']) <= 1e-5


@pytest.mark.parametrize('j', range(len(META['sampling'])))
def test_kv_cached_steps_on_recorded_inputs(model, tok, ctx, rec, j):
    "Backbone steps on the recorded inputs: blocks[0] input and CFG-guided logits at every scale."
    s, bb, seen = META['sampling'][j], HARTBackbone(model, tok), []
    g = HARTCFG(s['cfg'])
    hook = model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        rows, cache = ContextRows.cat([ctx, ctx.null_like()]), bb.new_cache()
        for si in range(K):
            inp = bb.start_input(rows) if si == 0 else ScaleInput(model.word_embed(rec[f'sample{j}.x_in.{si}'])).repeat(2)
            with torch.no_grad(): out = bb.step(si, inp, rows, cache)
            lc, lu = out.chunk(2)
            t = s['guidance_t_per_scale'][si]
            assert g.t(si, K) == t
            assert _maxabs(seen[-1], rec[f'sample{j}.block0_in.{si}']) <= 1e-6, f"scale {si}"
            # guided logits amplify the fp32 rounding of each branch by up to 1 + 2t
            assert _maxabs(g.combine({'cond': lc, 'uncond': lu}, si, K), rec[f'sample{j}.logits.{si}']) <= 1e-5 * (1 + 2 * t), f"scale {si}"
    finally: hook.remove()


@pytest.fixture(scope='module')
def runs(model, tok, ctx):
    "Every recorded run through sample_hart, with spies on the code maps, the diffusion and the decoder input."
    out, orig_code, orig_res, orig_dec = [], HARTBackbone.code_map, hart_backbone.sample_residual, type(tok).fhat_to_img
    for s in META['sampling']:
        spy = {'h': [], 'res': [], 'z': [], 'fhat': []}
        def code_map(self, si, tokens, logits, rng=None):
            h = orig_code(self, si, tokens, logits, rng); spy['h'].append(h.clone()); return h
        def sample_residual(mlp, z, cfg_t, rng=None, steps=8, **kw):
            r = orig_res(mlp, z, cfg_t, rng, steps, **kw); spy['z'].append(z.clone()); spy['res'].append(r.clone()); return r
        def fhat_to_img(self, f):
            spy['fhat'].append(f.clone()); return orig_dec(self, f)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(HARTBackbone, 'code_map', code_map)
            mp.setattr(hart_backbone, 'sample_residual', sample_residual)
            mp.setattr(type(tok), 'fhat_to_img', fhat_to_img)
            o = sample_hart(model, tok, ctx, cfg=s['cfg'], more_smooth=s['more_smooth'], top_p=s['top_p'], seed=s['g_seed'],
                            diffusion_seed=s['torch_global_seed'])
        out.append((o, spy))
    return out


@pytest.mark.parametrize('j', range(len(META['sampling'])))
def test_draws_and_code_mix_from_recorded_logits(model, tok, rec, j):
    "The sampling arithmetic alone: recorded guided logits + the g_seed generator -> every token and Gumbel code mix."
    s, bb = META['sampling'][j], HARTBackbone(model, tok, META['sampling'][j]['more_smooth'])
    rng = torch.Generator().manual_seed(s['g_seed'])
    for si, k in enumerate(official_top_k(K)):
        assert k == s['top_k_per_scale'][si]
        lg = filter_logits_(rec[f'sample{j}.logits.{si}'].clone(), k, s['top_p'])
        idx = draw_tokens(lg, rng)
        assert torch.equal(idx, rec[f'sample{j}.idx.{si}']), f"scale {si}"
        h = bb.code_map(si, idx, lg, rng)
        if si < K - 1: assert _maxabs(h.transpose(1, 2).reshape(rec[f'sample{j}.h.{si}'].shape), rec[f'sample{j}.h.{si}']) <= 1e-6


@pytest.mark.parametrize('j', range(len(META['sampling'])))
def test_guided_residual_from_recorded_condition(model, rec, j):
    "The final hook's eps-CFG (the rule's combine inside the denoiser) on the recorded condition z and noise seed."
    s, z = META['sampling'][j], rec[f'sample{j}.diff.z']
    N = len(z) // 2
    combine = lambda d: HARTCFG(s['cfg']).combine(d, K - 1, K)
    eps = _GuidedEps(model.diffloss.net, {'cond': z[:N], 'uncond': z[N:]}, combine, {'cond': 'cond', 'uncond': 'uncond'})
    res = sample_residual(eps, z, 0.0, torch.Generator().manual_seed(s['torch_global_seed']), model.diffloss.steps)
    direct = sample_residual(model.diffloss.net, z, s['diffusion_cfg'], torch.Generator().manual_seed(s['torch_global_seed']), 8)
    assert torch.equal(res, direct)   # the rule's combine inside the denoiser == the helper's own (1+t) eps_c - t eps_u
    # 1e-5 .. 2e-6 measured; the first IDDPM step's ill-conditioning sets the bound (see tests/test_hart_tokenizer.py)
    assert _maxabs(res, rec[f'sample{j}.diff.out'][:N]) <= 2e-5


@pytest.mark.parametrize('j', range(len(META['sampling'])))
def test_sampled_tokens_codes_residual_and_image(runs, tok, rec, j):
    """End to end through sample_hart: every token equal; the continuous parts within the drift that the 1e-5 logits
    rounding (amplified by CFG, 1+2t <= 8.7, and by the Gumbel temperature, (1+ratio)/tau <= 9) leaves."""
    o, spy = runs[j]
    P = PN[-1]
    for si in range(K):
        assert torch.equal(o.tokens[si], rec[f'sample{j}.idx.{si}']), f"run {j}, scale {si}"
    # Measured max-abs (runs 0/1/2): h 2.6e-5/0/5.1e-5, z 8.7e-6/2.3e-6/1.3e-5, residual 1.2e-5/1.1e-5/4.9e-6,
    # fhat 1.4e-5/1.1e-5/2.6e-5, image 6.0e-6/5.9e-6/1.3e-5. What remains is the recording machine's float32 kernels,
    # not our op order: its MKL sgemm sums K > 128 in blocks of 128 ((bias + sum_k<128) + sum_k>=128) and its MKL VML
    # cos/sin/exp take the generic (non-AVX512) path; emulating both makes the KV-cached guided logits of scales 0-6
    # bit-identical to the recording (the last scale's longer attention and the diffusion keep ~1e-6).
    for si in range(K - 1):   # code maps added to f_hat (embedding, or the Gumbel mix with more_smooth)
        h = spy['h'][si].transpose(1, 2).reshape(rec[f'sample{j}.h.{si}'].shape)
        assert _maxabs(h, rec[f'sample{j}.h.{si}']) <= 6e-5, f"run {j}, scale {si}"
    assert _maxabs(spy['z'][0], rec[f'sample{j}.diff.z']) <= 2e-5
    assert _maxabs(spy['res'][0], rec[f'sample{j}.diff.out'][:B * P * P]) <= 2e-5
    assert _maxabs(spy['fhat'][0], rec[f'sample{j}.fhat']) <= 5e-5
    assert _maxabs(o.images, rec[f'sample{j}.image']) <= 2e-5


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens)) and torch.equal(a.images, b.images)

def test_vpg_off_and_zero_prompt_reproduce_plain_sampling(model, tok, ctx):
    plain = sample_hart(model, tok, ctx, cfg=4.5, seed=5)
    assert _same(sample_hart(model, tok, ctx, guidance=VPG(0.0, 0.5, base=HARTCFG(4.5)), seed=5), plain)
    assert _same(sample_hart(model, tok, ctx, guidance=VPG(1.0, 0.0, base=HARTCFG(4.5)), seed=5), plain)
    assert _same(sample_hart(model, tok, ctx, guidance=VPG(1.0, 0.0, redraw='per_step', base=HARTCFG(4.5)), seed=5), plain)
    zero = MultiScalePrompt(PN, model.C, tau=20, first_scale=True, init_std=0.0)
    assert _same(sample_hart(model, tok, ctx, cfg=4.5, prompt=zero, seed=5), plain)


def test_closing_windows_release_cache_rows(model, tok, ctx):
    "CFG / VPG windows that end early: the sampler drops their KV rows (keep_rows); earlier scales are unchanged."
    plain = sample_hart(model, tok, ctx, cfg=4.5, seed=5)
    short = sample_hart(model, tok, ctx, guidance=HARTCFG(4.5, window=Window(stop=4)), seed=5)   # last scale unguided
    assert all(torch.equal(plain.tokens[si], short.tokens[si]) for si in range(4))
    assert torch.isfinite(short.images).all()
    vpg = sample_hart(model, tok, ctx, guidance=VPG(1.0, 0.5, schedule=3, base=HARTCFG(4.5)), seed=5)
    assert torch.equal(vpg.tokens[0], plain.tokens[0]) and not _same(vpg, plain)


def test_official_t_equal_one_takes_the_unguided_diffusion_path(model, tok, ctx, monkeypatch):
    "Official oddity: a last-stage t of exactly 1.0 (cfg = 7/6 with 8 scales) denoises all 2N rows unguided, cond half kept."
    calls, orig = [], hart_backbone.sample_residual
    monkeypatch.setattr(hart_backbone, 'sample_residual', lambda mlp, z, t, *a, **k: (calls.append((type(mlp).__name__, len(z), t)), orig(mlp, z, t, *a, **k))[1])
    sample_hart(model, tok, ctx, cfg=7 / 6, seed=5)
    sample_hart(model, tok, ctx, cfg=1.2, seed=5)
    n = B * PN[-1] ** 2
    assert calls == [('DiffusionMLP', 2 * n, 1.0), ('_GuidedEps', 2 * n, 0.0)]


def test_vpg_corruption_changes_logits(model, tok, ctx):
    class Spy(VPG):
        diffs = []
        def combine(self, logits, si, K):
            if si > 0 and 'cond/corrupt' in logits and logits['cond'].ndim == 3:
                self.diffs.append(_maxabs(logits['cond'], logits['cond/corrupt']))
            return super().combine(logits, si, K)
    for variant in ('full_embedding', 'position', 'codebook'):
        Spy.diffs = []
        sample_hart(model, tok, ctx, guidance=Spy(1.0, 0.5, variant=variant, base=HARTCFG(4.5)), seed=5)
        assert len(Spy.diffs) == K - 1 and min(Spy.diffs[1:]) > 1e-4, (variant, Spy.diffs)


def test_prompt_offsets_and_prefix_cached_equal_teacher_forced(model, tok, ctx, rec):
    "MVP offsets (scale 0's on the last context slot) and prefix tokens: KV-cached backbone steps == teacher-forced forward."
    mvp = MultiScalePrompt(PN, model.C, tau=20, first_scale=True, init_std=0.5)
    pre = torch.randn(1, 3, model.C, generator=torch.Generator().manual_seed(0))
    class Both(Prompt):
        def offset(self, si): return mvp.offset(si)
        def prefix_tokens(self, cond): return pre.expand(len(cond), -1, -1)
        def n_prefix(self): return 3
    x, bb = rec['teacher.x_BLCv_wo_first_l'], HARTBackbone(model, tok)
    with torch.no_grad():
        ref = model(rec['io.context'], rec['io.context_position_ids'], x, prompt=Both())
        cache, outs, b = bb.new_cache(3), [], 0
        for si, pn in enumerate(PN):
            inp = bb.start_input(ctx) if si == 0 else ScaleInput(model.word_embed(x[:, b:b + pn * pn]))
            if si: b += pn * pn
            outs.append(bb.step(si, inp, ctx, cache, mvp.offset(si), pre.expand(B, -1, -1) if si == 0 else None))
    assert _maxabs(torch.cat(outs, 1), ref) <= 1e-5
    with torch.no_grad(): plain = model(rec['io.context'], rec['io.context_position_ids'], x)
    assert _maxabs(plain, ref) > 1e-3


def test_mvp_prompt_tuning_lowers_the_loss(model, rec):
    "A few Adam steps on an MVP prompt (model frozen) through the teacher-forced forward lower the token cross-entropy."
    target = torch.cat([rec[f'encode.idx.{si}'] for si in range(K)], 1)
    prompt = MultiScalePrompt(PN, model.C, tau=20, first_scale=True, init_std=0.0)
    for p in model.parameters(): p.requires_grad_(False)
    opt = torch.optim.Adam(prompt.parameters(), lr=3e-2)
    def loss():
        lg = model(rec['io.context'], rec['io.context_position_ids'], rec['teacher.x_BLCv_wo_first_l'], prompt=prompt)
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), target.reshape(-1))
    losses = []
    for _ in range(6):
        opt.zero_grad(); l = loss(); l.backward(); opt.step(); losses.append(l.item())
    with torch.no_grad(): losses.append(loss().item())
    assert losses[-1] < losses[0] - 1e-3, losses


def test_load_released_layout(rec, tmp_path, model):
    "hart-0.7b layout: llm/config.json (full HARTForT2IConfig) + ema_model.bin / model.safetensors."
    llm = tmp_path / 'llm'; llm.mkdir()
    conf = {**META['config']['transformer'], 'architectures': ['HARTForT2I'], 'model_type': 'hart_transformer_t2i'}
    (llm / 'config.json').write_text(json.dumps(conf))
    sd = _sub(rec, 'hart.')
    torch.save(sd, llm / 'ema_model.bin')
    save_file({k: v for k, v in sd.items() if k != 'attn_bias_for_masking'}, str(llm / 'model.safetensors'))
    x = (rec['io.context'], rec['io.context_position_ids'], rec['teacher.x_BLCv_wo_first_l'])
    with torch.no_grad():
        ref = model(*x)
        for m in (load_hart(tmp_path), load_hart(llm, weights='model')): assert torch.equal(m(*x), ref)
    (llm / 'ema_model.bin').unlink()
    with pytest.raises(Exception, match='ema_model.bin'): load_hart(tmp_path)
    save_file(_sub(rec, 'vae.'), str(llm / 'model.safetensors'))
    with pytest.raises(Exception, match='tokenizer'): load_hart(tmp_path, weights='model')


@pytest.mark.gpu
def test_cuda_reference_and_fast_modes(rec):
    "On CUDA: reference mode is reproducible per seed (CUDA generators: other draws than the CPU recording), fast mode runs."
    m = hart_from_state_dict(_sub(rec, 'hart.'), _cfg(), 'hart_A', device='cuda')
    t = tokenizer_from_state_dict(_sub(rec, 'vae.'), PN, META['config']['tokenizer']['quant_resi'], 'hart_A vae', device='cuda')
    c = ContextRows(rec['io.context'], rec['io.context_mask'], rec['io.context_position_ids'])
    a, b = sample_hart(m, t, c, seed=1), sample_hart(m, t, c, seed=1)
    assert _same(a, b) and a.images.is_cuda
    v = sample_hart(m, t, c, guidance=VPG(1.0, 0.5, base=HARTCFG(4.5)), seed=1)
    f = sample_hart(m, t, c, guidance=VPG(1.0, 0.5, redraw='per_step', base=HARTCFG(4.5)), seed=1, mode='fast')
    for o in (v, f): assert torch.isfinite(o.images).all() and [x.shape for x in o.tokens] == [x.shape for x in a.tokens]
