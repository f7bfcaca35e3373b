"""Conformance of Infinity's BSQ tokenizer (models/infinity_vae.py, models/bsq.py) with the official code: tensors
recorded from it with random weights (tests/data/infinity_A.*, from shared/conformance) and the official key lists of
the released tokenizers (tests/data/official_keys/). Everything fp32 on CPU."""
import argparse, json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from mvp_vpg.models.bsq import bits_to_codes, resize_codes
from mvp_vpg.models.checkpoints import CheckpointError
from mvp_vpg.models.infinity_vae import (INFINITY_VAES, InfinityVAE, InfinityVAEConfig, infer_infinity_vae_config,
                                         load_infinity_vae)

DATA = Path(__file__).parent / 'data'
META = json.loads((DATA / 'infinity_A.json').read_text())
SCHED = [tuple(s[1:]) for s in META['scale_schedule']]          # (t, h, w) -> (h, w)
TOL = 1e-6   # the official channels-last decoder input changes the image by ~1.8e-5 vs a contiguous one (self_checks)

@pytest.fixture
def one_thread():
    "The recording ran on one thread; conv reductions split over threads differ by ~1e-6 (bit-exact on one thread here)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def rec(): return load_file(str(DATA / 'infinity_A.safetensors'))

def _sub(rec, prefix): return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}

@pytest.fixture(scope='module')
def vae(rec):
    sd = _sub(rec, 'vae.')
    v = InfinityVAE(infer_infinity_vae_config(sd))
    v.load_state_dict(sd, strict=True)
    return v.eval()

def test_config_inferred_and_strict_load(rec, vae):
    a = META['vae_args']
    assert vae.cfg == InfinityVAEConfig(codebook_dim=a['codebook_dim'], base_ch=a['base_ch'], num_res_blocks=a['num_res_blocks'],
                                        encoder_ch_mult=a['encoder_ch_mult'], decoder_ch_mult=a['decoder_ch_mult'])
    assert vae.cfg.patch_size == a['patch_size'] and not vae.cfg.spatial_patchify
    r = InfinityVAE(vae.cfg).load_state_dict(_sub(rec, 'vae.'), strict=True)
    assert not (r.missing_keys or r.unexpected_keys)

def test_encoder_features_and_bits(rec, vae, one_thread):
    f = vae.encode_raw_features(rec['io.image'])
    assert (f - rec['encode.raw_features']).abs().max() <= TOL
    bits = vae.encode_bits(rec['io.image'], META['scale_schedule'])
    for si, b in enumerate(bits): assert torch.equal(b, rec[f'encode.bits.{si}']), f"scale {si}"

def test_decode_reproduces_official_image(rec, vae, one_thread):
    img = vae.decode(rec['decode.summed_codes'])
    assert (img - rec['decode.image']).abs().max() <= TOL
    assert img.abs().max() <= 1

def test_summed_codes_from_bits(rec, vae):
    bits = [rec[f'encode.bits.{si}'] for si in range(len(SCHED))]
    assert torch.equal(vae.sum_codes(bits, SCHED), rec['decode.summed_codes'])

@pytest.mark.parametrize('j', [0, 1, 2])
def test_sampler_accumulation_and_next_inputs(rec, j):
    "The sampler's path: summed codes += trilinear-upsampled codes (the last scale as is); next input = trilinear resize."
    B, d = rec['io.image'].shape[0], META['derived']['d_bits']
    total = 0
    for si, (h, w) in enumerate(SCHED):
        codes = bits_to_codes(rec[f'sample{j}.bits.{si}'].view(B, h, w, d))
        total = total + (codes if si == len(SCHED) - 1 else resize_codes(codes, SCHED[-1]))
        if si + 1 < len(SCHED):
            nxt = resize_codes(total, SCHED[si + 1]).flatten(2).transpose(1, 2)
            assert torch.equal(nxt, rec[f'sample{j}.word_embed_in.{si + 1}']), f"scale {si + 1}"
    assert torch.equal(total, rec[f'sample{j}.summed_codes'])

def test_teacher_inputs_from_encode_bits(rec):
    "flip_requant: the upsampled codes are made contiguous before accumulating (an ulp-level difference otherwise)."
    B, d = rec['io.image'].shape[0], META['derived']['d_bits']
    total, xs = 0, []
    for si, (h, w) in enumerate(SCHED):
        total = total + resize_codes(bits_to_codes(rec[f'encode.bits.{si}'].view(B, h, w, d)), SCHED[-1]).contiguous()
        if si + 1 < len(SCHED): xs.append(resize_codes(total, SCHED[si + 1]).flatten(2).transpose(1, 2))
    assert torch.equal(torch.cat(xs, 1), rec['teacher.x_BLC_wo_prefix'])

@pytest.mark.parametrize('name', ['infinity_vae_d32', 'infinity_vae_d56_f8_14_patchify'])
def test_released_architectures_on_meta(name):
    ref = json.loads((DATA / 'official_keys' / f'{name}.json').read_text())
    cfg = INFINITY_VAES[name]
    with torch.device('meta'): m = InfinityVAE(cfg)
    rows = [[k, list(v.shape), str(v.dtype).removeprefix('torch.')] for k, v in m.state_dict().items()]
    assert rows == ref['keys']
    assert sum(p.numel() for p in m.parameters()) == ref['total_params']
    kw = ref['factory_kwargs']
    assert (cfg.codebook_dim, cfg.patch_size, list(cfg.encoder_ch_mult), list(cfg.decoder_ch_mult)) == \
           (kw['codebook_dim'], kw['patch_size'], kw['encoder_ch_mult'], kw['decoder_ch_mult'])
    assert cfg.spatial_patchify == bool(ref['args_read_by_loader'].get('apply_spatial_patchify', 0))
    with torch.device('meta'):
        sd = {k: torch.empty(s, dtype=getattr(torch, t)) for k, s, t in ref['keys']}
    assert infer_infinity_vae_config(sd) == cfg

def test_official_pth_both_spellings(rec, vae, tmp_path):
    sd = _sub(rec, 'vae.')
    torch.save({'vae': sd, 'args': argparse.Namespace(vae_type=14)}, tmp_path / 'official.pth')
    bare = {k.replace('.conv.weight', '.weight').replace('.conv.bias', '.bias').replace('.norm.weight', '.weight')
            .replace('.norm.bias', '.bias'): v for k, v in sd.items() if k != 'quantize.lfq.mask'}
    torch.save({'vae': bare}, tmp_path / 'bare.pth')
    torch.save({'vae': sd}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)   # pre-1.6 format
    for f in ('official.pth', 'bare.pth', 'legacy.pth'):
        v = load_infinity_vae(tmp_path / f)
        assert v.cfg == vae.cfg
        assert torch.equal(v.decode(rec['decode.summed_codes']), vae.decode(rec['decode.summed_codes'])), f

class _Opaque:
    "An object whose unpickling would run this module's code."

def _bad_files(rec, tmp):
    sd = _sub(rec, 'vae.')
    (tmp / 'empty.pth').write_bytes(b'')
    (tmp / 'notes.pth').write_text('these are not weights\n')
    torch.save({'vae': sd}, tmp / 'good.pth')
    (tmp / 'truncated.pth').write_bytes((tmp / 'good.pth').read_bytes()[:100_000])
    torch.save({'vae': sd}, tmp / 'legacy.pth', _use_new_zipfile_serialization=False)
    (tmp / 'truncated_legacy.pth').write_bytes((tmp / 'legacy.pth').read_bytes()[:100_000])
    torch.save(_sub(rec, 'infinity.'), tmp / 'infinity_2b_reg.pth')
    torch.save({'vae': {**sd, 'decoder.conv_out.conv.weight': torch.zeros(3, 32, 1, 1)}}, tmp / 'shape.pth')
    torch.save({'vae': {k: v for k, v in sd.items() if not k.startswith('decoder.mid.')} | {'extra.weight': torch.zeros(1)}}, tmp / 'keys.pth')
    torch.save({'vae': sd, 'obj': _Opaque()}, tmp / 'pickle.pth')
    return {'empty.pth': 'is empty', 'notes.pth': 'is not a PyTorch checkpoint', 'truncated.pth': 'not a readable PyTorch checkpoint',
            'truncated_legacy.pth': 'not a readable PyTorch checkpoint',
            'infinity_2b_reg.pth': 'transformer checkpoint, not the BSQ VAE',
            'shape.pth': 'decoder.conv_out.conv.weight (3, 32, 1, 1) vs model (3, 32, 3, 3)',
            'keys.pth': 'missing keys (16): decoder.mid.block_1', 'pickle.pth': 'needs code execution'}

def test_bad_files_give_one_line_errors(rec, tmp_path):
    for name, expected in _bad_files(rec, tmp_path).items():
        with pytest.raises(CheckpointError) as e: load_infinity_vae(tmp_path / name)
        msg = str(e.value)
        assert expected in msg and str(tmp_path / name) in msg and '\n' not in msg, (name, msg)
    with pytest.raises(CheckpointError, match='unexpected keys'): load_infinity_vae(tmp_path / 'keys.pth')
    with pytest.raises(FileNotFoundError, match='not found'): load_infinity_vae(tmp_path / 'nothing.pth')

@pytest.mark.gpu
def test_decode_on_gpu_close_to_cpu(rec, vae):
    g = InfinityVAE(vae.cfg).cuda().eval()
    g.load_state_dict(vae.state_dict())
    img = g.decode(rec['decode.summed_codes'].cuda()).cpu()
    assert (img - rec['decode.image']).abs().max() <= 1e-3
    bits = g.encode_bits(rec['io.image'].cuda(), SCHED)
    agree = sum((b.cpu() == rec[f'encode.bits.{si}']).float().mean() for si, b in enumerate(bits)) / len(bits)
    assert agree >= 0.99
