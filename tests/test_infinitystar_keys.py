"""The InfinityStar 8B transformer built on the meta device has exactly the official state-dict keys, shapes, order and
parameter count of the 720p and 480p checkpoints (tests/data/official_keys/infinitystar_8b_{720p,480p}.json, recorded
from the official constructors), and the architecture is inferred back from those shapes."""
import json
from pathlib import Path
import pytest, torch
from mvp_vpg.models.infinitystar import InfinityStar, InfinityStarConfig, INFINITYSTAR_8B, infer_infinitystar_config

KEYS = Path(__file__).parent / 'data' / 'official_keys'
NAMES = ['infinitystar_8b_720p', 'infinitystar_8b_480p']

@pytest.mark.parametrize('name', NAMES)
def test_meta_build_matches_official_keys(name):
    ref = json.loads((KEYS / f'{name}.json').read_text())
    with torch.device('meta'): m = InfinityStar(**INFINITYSTAR_8B)
    got = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    assert got == [[k, s] for k, s, _ in ref['keys']]                      # names, shapes and order
    assert sum(p.numel() for p in m.parameters()) == ref['total_params'] == 8_768_382_112
    assert len(dict(m.named_buffers())) == ref['num_persistent_buffer_keys'] == 0

@pytest.mark.parametrize('name', NAMES)
def test_config_inferred_from_official_shapes(name):
    ref = json.loads((KEYS / f'{name}.json').read_text())
    sd = {k: torch.empty(s, device='meta') for k, s, _ in ref['keys']}
    cfg = infer_infinitystar_config(sd)
    d = ref['factory_signature_defaults']
    assert cfg == InfinityStarConfig(**INFINITYSTAR_8B)
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.block_chunks, cfg.mlp_hidden) == \
           (d['depth'], d['embed_dim'], d['num_heads'], d['num_key_value_heads'], d['block_chunks'], int(d['embed_dim'] * d['mlp_ratio']))
    assert (cfg.text_channels, cfg.semantic_bits, cfg.detail_bits) == (ref['factory_kwargs']['text_channels'], 16, 64)
