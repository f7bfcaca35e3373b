"""Conformance of InfinityStar's video VAE decoder (models/video_vae*.py) with the official code: the decode of the
recorded summed codes with the recorded random toy weights (tests/data/infinitystar_A.*, from shared/conformance),
the official key list of the released `infinitystar_videovae.pth` (tests/data/official_keys/), bad files, and the
MP4 writer (utils/video.py). Everything fp32 on CPU."""
import json
from pathlib import Path
import numpy as np
import pytest, torch
from safetensors.torch import load_file
from mvp_vpg.models.checkpoints import CheckpointError
from mvp_vpg.models.video_vae import VideoVAE, VideoVAEConfig, infer_video_vae_config, load_video_vae, to_uint8_frames
from mvp_vpg.utils.video import read_mp4, vbench_name, write_mp4

DATA = Path(__file__).parent / 'data'
META = json.loads((DATA / 'infinitystar_A.json').read_text())
OFFICIAL = json.loads((DATA / 'official_keys' / 'infinitystar_videovae.json').read_text())
TOL = 1e-4        # measured: 2.0e-6 (fp32 op order)

@pytest.fixture
def one_thread():
    "The recording ran on one thread."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def rec(): return load_file(str(DATA / 'infinitystar_A.safetensors'))

def _vae_sd(rec): return {k[len('vae.'):]: v for k, v in rec.items() if k.startswith('vae.')}

@pytest.fixture(scope='module')
def vae(rec):
    sd = _vae_sd(rec)
    v = VideoVAE(infer_video_vae_config(sd), decoder_only=True)   # the fixture stores the decode-side tensors only
    v.load_state_dict(sd, strict=True)
    return v.eval()

def test_config_inferred_and_strict_load(rec, vae):
    sd = _vae_sd(rec)
    assert len(sd) == META['vae']['stored_keys']
    assert vae.cfg == VideoVAEConfig(block_out_channels=tuple(META['config']['vae_block_out_channels']))
    r = VideoVAE(vae.cfg, decoder_only=True).load_state_dict(sd, strict=True)
    assert not (r.missing_keys or r.unexpected_keys)

def test_decode_reproduces_official_video(rec, vae, one_thread):
    codes = rec['run0.summed_codes']                               # (1, 64, 5, 5, 5)
    raw = vae.decode(codes)
    ref = rec['run0.decode.raw']                                   # (1, 3, 17, 80, 80)
    assert raw.shape == ref.shape == (1, 3, 1 + 4 * (codes.shape[2] - 1), 16 * codes.shape[3], 16 * codes.shape[4])
    assert (raw - ref).abs().max() <= TOL

def test_uint8_postprocessing_is_official(rec):
    assert torch.equal(to_uint8_frames(rec['run0.decode.raw']), rec['run0.decode.uint8_bgr'])

@pytest.mark.parametrize('j', [0, 1, 2])
def test_uint8_video_of_each_run(rec, vae, j, one_thread):
    "From the codes: equal but for a handful of values on a truncation boundary (the raw decode differs by ~2e-6)."
    u = to_uint8_frames(vae.decode(rec[f'run{j}.summed_codes']))
    ref = rec[f'run{j}.decode.uint8_bgr']
    diff = (u.int() - ref.int()).abs()
    assert u.shape == ref.shape and diff.max() <= 1 and (diff > 0).float().mean() < 1e-4

def test_decoding_is_per_sample_and_chunk_consistent(rec, vae, one_thread):
    "A batch decodes like its samples alone; the first latent frames decode the same whatever follows (causality)."
    codes = rec['run0.summed_codes']
    two = vae.decode(torch.cat([codes, rec['run1.summed_codes']]))
    assert (two[:1] - vae.decode(codes)).abs().max() <= 1e-5
    first3 = vae.decode(codes[:, :, :3])                           # 3 latent frames -> 9 video frames
    assert (first3 - two[:1, :, :9]).abs().max() <= 1e-5

def test_released_architecture_matches_official_keys():
    with torch.device('meta'): m = VideoVAE()
    ours = [[k, list(v.shape), str(v.dtype).replace('torch.', '')] for k, v in m.state_dict().items()]
    assert ours == OFFICIAL['keys']                                # names, shapes, dtypes and order
    assert sum(p.numel() for p in m.parameters()) == OFFICIAL['total_params'] == 184_659_383
    assert infer_video_vae_config(m.state_dict()) == VideoVAEConfig()

@pytest.fixture(scope='module')
def tiny_file(tmp_path_factory, rec):
    "A full (encoder included) toy VAE saved like the official file: {'vae': state_dict}."
    d = tmp_path_factory.mktemp('vae')
    m = VideoVAE(VideoVAEConfig(block_out_channels=tuple(META['config']['vae_block_out_channels'])))
    m.load_state_dict(_vae_sd(rec), strict=False)
    torch.save({'vae': m.state_dict()}, d / 'videovae.pth')
    return d / 'videovae.pth', m.state_dict()

def test_load_video_vae(tiny_file, rec, one_thread):
    path, _ = tiny_file
    full = load_video_vae(path)
    assert not full.decoder_only and hasattr(full, 'encoder')
    dec = load_video_vae(path, decoder_only=True)
    assert not hasattr(dec, 'encoder')
    assert (dec.decode(rec['run0.summed_codes']) - rec['run0.decode.raw']).abs().max() <= TOL

def _one_line_error(path, *contains):
    with pytest.raises(CheckpointError) as e: load_video_vae(path)
    msg = str(e.value)
    assert '\n' not in msg and str(path) in msg, msg
    for c in contains: assert c in msg, msg

def test_bad_files(tmp_path, tiny_file):
    _, sd = tiny_file
    (tmp_path / 'empty.pth').write_bytes(b'')
    _one_line_error(tmp_path / 'empty.pth', 'empty')
    (tmp_path / 'text.pth').write_text('hello')
    _one_line_error(tmp_path / 'text.pth', 'not a PyTorch checkpoint')
    torch.save({'vae': sd}, tmp_path / 'full.pth')
    (tmp_path / 'trunc.pth').write_bytes((tmp_path / 'full.pth').read_bytes()[:5000])
    _one_line_error(tmp_path / 'trunc.pth', 'truncated or damaged')
    torch.save({'vae': {k: v for k, v in sd.items() if k != 'encoder.conv_out.conv.bias'}}, tmp_path / 'missing.pth')
    _one_line_error(tmp_path / 'missing.pth', 'missing keys (1): encoder.conv_out.conv.bias')
    torch.save({'vae': {**sd, 'extra.weight': torch.zeros(1)}}, tmp_path / 'extra.pth')
    _one_line_error(tmp_path / 'extra.pth', 'unexpected keys (1): extra.weight')
    torch.save({'vae': {**sd, 'proj_up_two.bias': torch.zeros(3)}}, tmp_path / 'shape.pth')
    _one_line_error(tmp_path / 'shape.pth', 'shape mismatches', 'proj_up_two.bias')
    torch.save({'model.word_embed.weight': torch.zeros(2, 2), 'block_chunks.0.module.0.attn.q_proj.weight': torch.zeros(2, 2)}, tmp_path / 'gpt.pth')
    _one_line_error(tmp_path / 'gpt.pth', 'transformer')
    torch.save({'vae': {'encoder.down.0.block.0.conv1.weight': torch.zeros(2)}}, tmp_path / 'img.pth')
    _one_line_error(tmp_path / 'img.pth', 'Infinity image (BSQ) VAE')
    torch.save({'vae': sd, 'args': object.__new__(VideoVAEConfig)}, tmp_path / 'code.pth')
    _one_line_error(tmp_path / 'code.pth', 'code execution')
    with pytest.raises(FileNotFoundError, match='infinitystar_videovae.pth'): load_video_vae(tmp_path / 'nope.pth')

def test_mp4_round_trip(tmp_path):
    t, h, w = 17, 80, 80                                           # the toy decode's size
    yy, xx = np.mgrid[:h, :w]
    frames = np.stack([np.stack([(xx * 3 + 4 * i) % 256, yy * 3, np.full_like(xx, 40 + 8 * i)], -1) for i in range(t)]).astype(np.uint8)
    path = write_mp4(frames, tmp_path / vbench_name('a panda drinking coffee in a cafe in Paris', 0), fps=16)
    assert path.name == 'a panda drinking coffee in a cafe in Paris-0.mp4'
    back = read_mp4(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4    # lossy codec, loose
    assert [p.name for p in tmp_path.iterdir()] == [path.name]        # nothing temporary left
