"""Conformance with the official VAR implementation: tensors recorded from the official code with random weights
(tests/data/var_A.*, copied from shared/conformance). Everything fp32 on CPU."""
import json
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from mvp_vpg.models.checkpoints import infer_var_config, infer_vqvae_config, load_strict, write_safetensors, load_var, load_vqvae
from mvp_vpg.models.vqvae import VQVAE
from mvp_vpg.models.var import VAR
from mvp_vpg.sampling.sampler import sample, CFG, Guidance

DATA = Path(__file__).parent / 'data'
META = json.loads((DATA / 'var_A.json').read_text())
K = len(META['config']['patch_nums'])

@pytest.fixture(scope='module')
def rec(): return load_file(str(DATA / 'var_A.safetensors'))

def _sub(rec, prefix): return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}

@pytest.fixture(scope='module')
def models(rec):
    c = META['config']
    vae_sd, var_sd = _sub(rec, 'vae.'), _sub(rec, 'var.')
    vcfg = infer_vqvae_config(vae_sd, c['patch_nums'])
    assert (vcfg.vocab_size, vcfg.z_channels, vcfg.ch, vcfg.share_quant_resi) == (c['V'], c['Cvae'], c['ch'], c['share_quant_resi'])
    tcfg = infer_var_config(var_sd)
    assert (tcfg.depth, tcfg.num_classes, tcfg.shared_aln, tcfg.attn_l2_norm) == (c['depth'], c['num_classes'], c['shared_aln'], c['attn_l2_norm'])
    vae = load_strict(VQVAE(vcfg), vae_sd, 'var_A vae').eval()
    var = load_strict(VAR(tcfg), var_sd, 'var_A var').eval()
    return vae, var

def test_strict_load_of_both_state_dicts(rec):
    c = META['config']
    vae = VQVAE(vocab_size=c['V'], z_channels=c['Cvae'], ch=c['ch'], share_quant_resi=c['share_quant_resi'], patch_nums=c['patch_nums'])
    var = VAR(depth=c['depth'], num_classes=c['num_classes'], vocab_size=c['V'], z_channels=c['Cvae'], patch_nums=c['patch_nums'],
              shared_aln=c['shared_aln'], attn_l2_norm=c['attn_l2_norm'])
    r1 = vae.load_state_dict(_sub(rec, 'vae.'), strict=True); r2 = var.load_state_dict(_sub(rec, 'var.'), strict=True)
    assert not (r1.missing_keys or r1.unexpected_keys or r2.missing_keys or r2.unexpected_keys)

def test_encoder_indices_equal(models, rec):
    vae, _ = models
    idx = vae.img_to_idx(rec['io.image'])
    for si in range(K): assert torch.equal(idx[si], rec[f'encode.idx.{si}']), f"scale {si}"

def test_decoded_image_close(models, rec):
    vae, _ = models
    with torch.no_grad(): img = vae.idx_to_img([rec[f'encode.idx.{si}'] for si in range(K)])
    assert (img - rec['decode.image']).abs().max() <= 1e-5

def test_teacher_forcing_inputs_and_logits(models, rec):
    vae, var = models
    x = vae.quantize.var_inputs([rec[f'encode.idx.{si}'] for si in range(K)])
    assert (x - rec['teacher.x_BLCv_wo_first_l']).abs().max() <= 1e-6
    with torch.no_grad(): logits = var(rec['io.label'], rec['teacher.x_BLCv_wo_first_l'])
    assert (logits - rec['teacher.logits']).abs().max() <= 1e-5

@pytest.mark.parametrize('j', range(len(META['sampling'])))
def test_sampled_tokens_and_images(models, rec, j):
    vae, var = models
    s = META['sampling'][j]
    out = sample(var, vae, rec['io.label'], guidance=CFG(s['cfg']), top_k=s['top_k'], top_p=s['top_p'], seed=s['g_seed'], mode='reference')
    for si in range(K): assert torch.equal(out.tokens[si], rec[f'sample{j}.idx.{si}']), f"setting {s}, scale {si}"
    assert (out.images - rec[f'sample{j}.image']).abs().max() <= 1e-5

def test_kv_cached_logits_equal_masked_forward(models, rec):
    vae, var = models
    class Record(Guidance):
        seen = []
        def combine(self, logits, si, K): self.seen.append(logits['cond'].clone()); return logits['cond']
    g = Record()
    out = sample(var, vae, rec['io.label'], guidance=g, top_k=5, seed=3)
    with torch.no_grad(): teacher = var(out.labels, vae.quantize.var_inputs(out.tokens))
    assert (torch.cat(g.seen, 1) - teacher).abs().max() <= 1e-5

def test_official_pth_files_roundtrip(models, rec, tmp_path):
    "The same tensors written as an official bare .pth and as a training checkpoint load and sample identically."
    vae, var = models
    torch.save(_sub(rec, 'var.'), tmp_path / 'var_d2.pth')
    torch.save({'epoch': 0, 'iter': 0, 'trainer': {'var_wo_ddp': _sub(rec, 'var.'), 'vae_local': _sub(rec, 'vae.')}, 'args': None}, tmp_path / 'ckpt.pth')
    write_safetensors(_sub(rec, 'vae.'), tmp_path / 'vae.safetensors')
    s = META['sampling'][1]
    for var_file, vae_file in (('var_d2.pth', 'vae.safetensors'), ('ckpt.pth', 'ckpt.pth')):
        v = load_var(tmp_path / var_file); q = load_vqvae(tmp_path / vae_file, patch_nums=v.patch_nums)
        out = sample(v, q, rec['io.label'], guidance=CFG(s['cfg']), top_k=s['top_k'], top_p=s['top_p'], seed=s['g_seed'])
        assert all(torch.equal(out.tokens[si], rec[f'sample1.idx.{si}']) for si in range(K))
