"""Conformance with the official InfinityStar implementation: tensors recorded from the official code with random weights
(tests/data/infinitystar_A.*, copied from shared/conformance): a 2-block C=128 `infinity_qwen8b`, the 0.06M 1:1
schedule cut to 5 spatial scales per clip (image clip + one 4-frame video clip, 15 steps with repetitions), three
runs (CFG 3 / APG 34 / no guidance). Everything fp32 on CPU. Transformer logits match to fp32 op-order noise; guidance,
draws, codes, next inputs and summed codes are compared exactly, and the full sampler reproduces every recorded bit."""
import json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from mvp_vpg.models.infinity_layers import TextCond
from mvp_vpg.models.infinitystar import InfinityStar, infer_infinitystar_config, load_infinitystar, bit_loss_acc
from mvp_vpg.models.infinitystar_layers import star_schedule, step_rope, text_rope
from mvp_vpg.models.infinitystar_backbone import InfinityStarBackbone, codes_on_grid
from mvp_vpg.models.backbone import ScaleInput
from mvp_vpg.models.checkpoints import CheckpointError
from mvp_vpg.sampling.sampler import draw_tokens
from mvp_vpg.sampling.apg import star_guidance
from mvp_vpg.sampling.infinitystar import sample_infinitystar
from mvp_vpg.vpg.guidance import VPG

DATA = Path(__file__).parent / 'data'
META = json.loads((DATA / 'infinitystar_A.json').read_text())
CFG, RUNS, STEPS = META['config'], META['runs'], META['schedule']['steps']
SCHED = star_schedule(CFG['pn'], CFG['h_div_w'], 1 + 4 * (CFG['pt'] - 1), image_scale_repetition=CFG['image_scale_repetition'],
                      video_scale_repetition=CFG['video_scale_repetition'], semantic_scales=CFG['semantic_scales'],
                      n_scales=CFG['spatial_scales_per_clip'], semantic_bits=CFG['semantic_scale_dim'], detail_bits=CFG['detail_scale_dim'])
K = len(SCHED)

@pytest.fixture(scope='module')
def rec(): return load_file(str(DATA / 'infinitystar_A.safetensors'))

def _sub(rec, prefix): return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}

@pytest.fixture(scope='module')
def model(rec):
    m = InfinityStar(infer_infinitystar_config(_sub(rec, 'model.'))).eval()
    m.load_state_dict(_sub(rec, 'model.'), strict=True)
    return m

@pytest.fixture(scope='module')
def text(rec): return TextCond(rec['text.kv_compact'], [rec['text.kv_compact'].shape[0]])

def _bb(model, j, vae=None):
    return InfinityStarBackbone(model, vae, schedule=SCHED, tau_image=RUNS[j]['tau_image'], tau_video=RUNS[j]['tau_video'])

def test_strict_load_and_inferred_config(rec, tmp_path):
    c, ctor = CFG['model'], META['transformer_constructor']
    cfg = infer_infinitystar_config(_sub(rec, 'model.'))
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.block_chunks, cfg.head_dim, cfg.mlp_hidden, cfg.text_channels) == \
           (c['depth'], c['embed_dim'], c['num_heads'], c['num_key_value_heads'], c['block_chunks'], ctor['head_dim'], ctor['mlp_hidden'], CFG['text_channels'])
    m = InfinityStar(cfg)
    r = m.load_state_dict(_sub(rec, 'model.'), strict=True)
    assert not (r.missing_keys or r.unexpected_keys) and sum(p.numel() for p in m.parameters()) == ctor['n_params']
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in rec.items() if k.startswith('model.')}, str(tmp_path / 'm.safetensors'))
    loaded = load_infinitystar(tmp_path / 'm.safetensors', prefix=ctor['state_dict_prefix'])
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"m.safetensors.*prefix='model.'"):    # no prefix given: named file and fix
        load_infinitystar(tmp_path / 'm.safetensors')

def test_schedule_matches_record():
    assert K == META['schedule']['n_steps']
    for s, r in zip(SCHED, STEPS):
        assert (s.si, s.clip, s.rel_si, [s.t, s.h, s.w], s.L, s.rep, s.reps, s.last_rep, s.rope_scale, [s.frame0, s.frame0 + s.t]) == \
               (r['si'], r['clip'], r['rel_si'], r['thw'], r['L'], r['repeat_idx'], r['repeat_times'], r['last_repetition'], r['rope_scale_index'], r['frames'])
        assert (s.semantic, s.bits, list(s.refs)) == (r['head'] == 'semantic_head2', r['bits'], r['ref_sids'])
    for si, info in META['schedule']['context_info'].items():
        assert [list(s.refs) for s in SCHED if s.si == int(si)][0] == info['ref_sids']

def test_rope_exact(rec):
    assert torch.equal(text_rope(rec['text.kv_compact'].shape[0], META['transformer_constructor']['head_dim']), rec['rope.text'])
    for s in SCHED: assert torch.equal(step_rope(s, META['transformer_constructor']['head_dim']), rec[f'rope.step{s.k:02d}']), s.k

def test_teacher_forward(model, rec, text):
    picked = META['teacher']['picked_repetition']
    steps = [s for s in SCHED if s.rep == picked[s.si]]
    rope = torch.cat([step_rope(s, model.cfg.head_dim) for s in steps], 4)
    assert torch.equal(rope, rec['teacher.visual_rope'])
    with torch.no_grad(): out = model(text, rec['teacher.x_BLC'], steps)
    errs = [(o - rec[f'teacher.logits.scale{i:02d}']).abs().max().item() for i, o in enumerate(out)]
    assert max(errs) <= 1e-5, errs
    loss, acc = bit_loss_acc(out, [rec[f'teacher.gt_bits.scale{i:02d}'] for i in range(len(steps))])
    assert (loss[0] - rec['teacher.loss_per_token']).abs().max() <= 1e-5 and torch.equal(acc[0], rec['teacher.acc_per_token'])

@pytest.mark.parametrize('j', range(len(RUNS)))
def test_kv_cached_steps_guidance_draws_codes(model, rec, text, j):
    "Each step from the recorded input: raw logits (1e-5), guided logits, bits, codes, next input, summed codes (exact)."
    run, p = RUNS[j], f"run{j}"
    bb, two = _bb(model, j), run['cfg'] != 1
    g = star_guidance('apg' if run['use_apg'] else 'cfg', run['cfg'], run.get('apg_norm_threshold') or 0.05)
    c = TextCond.cat([text, bb.null_cond(text)]) if two else text
    cache, state, gen, err = bb.new_cache(), bb.init_state(1), torch.Generator().manual_seed(run['g_seed']), 0.0
    for si, s in enumerate(SCHED):
        q = f"{p}.step{si:02d}"
        raw, tau = rec[f'{q}.logits_raw'], bb.tau[si]
        with torch.no_grad(): lg = bb.step(si, ScaleInput(model.word_embed(rec[f'{q}.input'])).repeat(2 if two else 1), c, cache)
        err = max(err, (lg.reshape(raw.shape) - raw.mul(1 / tau)).abs().max().item() * tau)
        lt = raw.mul(1 / tau).view(raw.shape[0], s.L, s.bits, 2)          # guidance on the official raw logits: exact
        guided = g.combine(dict(zip(['cond', 'uncond'], lt.chunk(2 if two else 1))), si, K)
        assert torch.equal(guided.reshape(1, s.L, -1), rec[f'{q}.logits_guided']), (j, si)
        bits = draw_tokens(rec[f'{q}.logits_guided'].view(1, s.L, s.bits, 2), gen)
        assert torch.equal(bits.to(torch.uint8).view(1, s.t, s.h, s.w, s.bits), rec[f'{q}.bits']), (j, si)
        assert torch.equal(codes_on_grid(rec[f'{q}.bits'], 64, s.full_hw), rec[f'{q}.codes_up']), (j, si)
        state, f = bb.next_features(si, rec[f'{q}.bits'].view(1, s.L, s.bits), state)
        if si + 1 < K: assert torch.equal(f, rec[f"{p}.step{si + 1:02d}.input"]), (j, si)
        assert set(cache.keys()) == ({'t0', 4} if 7 <= si < K - 1 else {'t0'})   # the image clip's last scale (si 4), while read
    assert err <= 1e-5, err
    assert torch.equal(bb.summed_codes(state), rec[f'{p}.summed_codes'])

def test_decode_post_processing(model, rec):
    "The decoded video in [-1, 1] -> [0, 1], first frame replaced by the second (official uint8 output, channels flipped)."
    bb = _bb(model, 0, vae=lambda z: rec['run0.decode.raw'])
    video = bb.decode(bb.replay([rec[f'run0.step{si:02d}.bits'].view(1, s.L, s.bits) for si, s in enumerate(SCHED)]))
    u8 = (video * 255).to(torch.uint8).permute(0, 2, 3, 4, 1).flip(-1)
    assert torch.equal(u8, rec['run0.decode.uint8_bgr'])

def _kw(j):
    r = RUNS[j]
    return dict(guidance='apg' if r['use_apg'] else 'cfg', cfg=r['cfg'], apg_norm_threshold=r.get('apg_norm_threshold') or 0.05,
                tau_image=r['tau_image'], tau_video=r['tau_video'], seed=r['g_seed'], schedule=SCHED)

@pytest.mark.parametrize('j', range(len(RUNS)))
def test_end_to_end_every_bit(model, rec, text, j):
    "The whole sampler (shared sample_scales) from the weights and the text reproduces every recorded bit and the codes."
    out = sample_infinitystar(model, None, text, **_kw(j))
    for si, s in enumerate(SCHED):
        assert torch.equal(out.bits[si].to(torch.uint8).view(1, s.t, s.h, s.w, s.bits), rec[f'run{j}.step{si:02d}.bits']), (j, si)
    assert torch.equal(out.summed_codes, rec[f'run{j}.summed_codes'])

@pytest.mark.parametrize('j', [0, 1])
def test_vpg_off_reproduces_plain_sampling(model, text, j):
    "VPG with lambda = 0, or with p = 0 (cached or per-step recomputed corrupted branches), changes no bit."
    kw = _kw(j)
    plain = sample_infinitystar(model, None, text, **kw)
    base = star_guidance(kw['guidance'], kw['cfg'], kw['apg_norm_threshold'])
    for g in (VPG(lam=0.0, base=base), VPG(lam=2.0, p=0.0, base=base), VPG(lam=2.0, p=0.0, redraw='per_step', base=base, schedule=[3, 9])):
        out = sample_infinitystar(model, None, text, **{**kw, 'guidance_rule': g})
        for si in range(K): assert torch.equal(out.bits[si], plain.bits[si]), (g, si)

@pytest.mark.parametrize('variant', ['position', 'full_embedding', 'codebook'])
def test_vpg_corruption_changes_logits(model, text, variant):
    "A corrupted branch sees other inputs: its logits differ from the clean branch on every guided step with > 1 token."
    seen = {}
    class Spy(VPG):
        def combine(self, logits, si, K):
            if self.active(si, K): seen[si] = (logits['cond'] - logits['cond/corrupt']).abs().max().item()
            return super().combine(logits, si, K)
    kw = _kw(1)
    sample_infinitystar(model, None, text, **{**kw, 'guidance_rule': Spy(lam=1.0, p=0.5, variant=variant, base=star_guidance('apg', 34.0))})
    multi = [si for si in range(1, K) if SCHED[si].L > 1]
    assert sorted(seen) == list(range(1, K)) and min(seen[si] for si in multi) > 1e-4, seen

def test_same_scale_swap_permutes_logits(model, rec, text):
    "Permuting a step's inputs and RoPE rows together permutes its logits; K/V cached from it leave later steps unchanged."
    bb = _bb(model, 2)
    perm = torch.randperm(SCHED[7].L, generator=torch.Generator().manual_seed(0))
    outs = []
    for pos in (None, perm[None]):
        cache = bb.new_cache()
        with torch.no_grad():
            bb.step(0, bb.start_input(text), text, cache)
            x = model.word_embed(rec['run2.step07.input'])
            a = bb.step(7, ScaleInput(x if pos is None else x[:, perm], pos), text, cache)     # image clip's last scale: cached
            b = bb.step(8, ScaleInput(model.word_embed(rec['run2.step08.input'])), text, cache)
        outs.append((a, b))
    assert (outs[1][0] - outs[0][0][:, perm]).abs().max() <= 1e-5
    assert (outs[1][1] - outs[0][1]).abs().max() <= 1e-5

def test_sample_and_decode_with_the_video_vae(model, rec, text):
    "Sampler + the official-layout video VAE (vae.* toy weights): the recorded decode, in [0, 1], frame 0 = frame 1."
    from mvp_vpg.models.video_vae import VideoVAE, infer_video_vae_config
    sd = _sub(rec, 'vae.')
    vae = VideoVAE(infer_video_vae_config(sd), decoder_only=True).eval()
    vae.load_state_dict(sd, strict=True)
    out = sample_infinitystar(model, vae, text, **_kw(0))
    ref = rec['run0.decode.raw'].add(1).mul(0.5).clamp(0, 1)
    assert out.video.shape == ref.shape == (1, 3, 17, 80, 80)
    assert (out.video[:, :, 1:] - ref[:, :, 1:]).abs().max() <= 1e-5 and torch.equal(out.video[:, :, 0], out.video[:, :, 1])

@pytest.mark.gpu
def test_cuda_reference_and_fast_modes(rec, text):
    "On CUDA: the teacher forward in fp32 (no TF32) stays at the record; the bf16 'fast' sampler runs and draws bits."
    m = InfinityStar(infer_infinitystar_config(_sub(rec, 'model.'))).eval()
    m.load_state_dict(_sub(rec, 'model.'), strict=True)
    m = m.cuda()
    t = TextCond(text.kv_compact.cuda(), text.lens)
    picked = META['teacher']['picked_repetition']
    steps = [s for s in SCHED if s.rep == picked[s.si]]
    from mvp_vpg.sampling.sampler import precision
    with torch.no_grad(), precision('reference', 'cuda'): out = m(t, rec['teacher.x_BLC'].cuda(), steps)
    assert max((o.cpu() - rec[f'teacher.logits.scale{i:02d}']).abs().max().item() for i, o in enumerate(out)) <= 1e-4
    for mode in ('reference', 'fast'):
        s = sample_infinitystar(m, None, t, **_kw(1), mode=mode)
        assert [b.shape for b in s.bits] == [(1, st.L, st.bits) for st in SCHED] and s.summed_codes.is_cuda
