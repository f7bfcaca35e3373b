"""The Infinity transformers built on the meta device have exactly the official state-dict keys, shapes and parameter
counts (tests/data/official_keys/infinity_{2b,8b}.json, recorded from the official constructors), and the architecture
is inferred back from those shapes."""
import json
from pathlib import Path
import pytest, torch
from mvp_vpg.models.infinity import Infinity, InfinityConfig, INFINITY_2B, INFINITY_8B, infer_infinity_config

KEYS = Path(__file__).parent / 'data' / 'official_keys'

@pytest.mark.parametrize('name,kw', [('infinity_2b', INFINITY_2B), ('infinity_8b', INFINITY_8B)])
def test_meta_build_matches_official_keys(name, kw):
    ref = json.loads((KEYS / f'{name}.json').read_text())
    with torch.device('meta'): m = Infinity(**kw)
    got = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    assert got == [[k, s] for k, s, _ in ref['keys']]                      # names, shapes and order
    assert sum(p.numel() for p in m.parameters()) == ref['total_params']
    assert len(dict(m.named_buffers())) == ref['num_persistent_buffer_keys']
    assert all(k.endswith('zero_k_bias') for k, _ in m.named_buffers())

@pytest.mark.parametrize('name,kw', [('infinity_2b', INFINITY_2B), ('infinity_8b', INFINITY_8B)])
def test_config_inferred_from_official_shapes(name, kw):
    ref = json.loads((KEYS / f'{name}.json').read_text())
    sd = {k: torch.empty(s, device='meta') for k, s, _ in ref['keys']}
    cfg = infer_infinity_config(sd)
    fk = ref['factory_kwargs']
    assert cfg == InfinityConfig(**kw)
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.block_chunks, cfg.text_channels, cfg.text_maxlen, cfg.patchify) == \
           (fk['depth'], fk['embed_dim'], fk['num_heads'], fk['block_chunks'], fk['text_channels'], fk['text_maxlen'], bool(fk['apply_spatial_patchify']))
