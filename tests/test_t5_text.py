"""T5 text features -> Infinity: a tiny random T5 (tokenizer trained offline) feeds a tiny random Infinity end to end."""
import pytest, torch
from mvp_vpg.models.t5_text import T5TextEncoder, make_tiny_t5
from mvp_vpg.models.infinity import Infinity
from mvp_vpg.models.infinity_layers import TextCond
from mvp_vpg.sampling.infinity import sample_infinity

@pytest.fixture(scope='module')
def encoder(tmp_path_factory):
    return T5TextEncoder(make_tiny_t5(tmp_path_factory.mktemp('t5'), d_model=128), max_length=512)

def test_varlen_condition(encoder):
    tc = encoder(['a red cat on the table', 'a dog'])
    one = [len(encoder.tokenizer(p).input_ids) for p in ('a red cat on the table', 'a dog')]
    assert tc.lens == one and tc.kv_compact.shape == (sum(one), 128)
    assert tc.cu_seqlens.tolist() == [0, one[0], sum(one)]
    # padding to 512 is masked: each row equals the prompt encoded alone
    assert (encoder(['a dog']).kv_compact - tc.kv_compact[one[0]:]).abs().max() <= 1e-5

def test_t5_to_infinity_sampling(encoder):
    torch.manual_seed(0)
    model = Infinity(depth=2, embed_dim=64, num_heads=2, d=8, text_channels=128, text_maxlen=512, block_chunks=2).eval()
    tc = encoder(['a red cat', 'two small dogs', 'a house'])
    out = sample_infinity(model, None, tc, cfg=3.0, tau=0.5, top_p=0.97, seed=0, pn='0.06M', n_scales=4)
    assert [b.shape for b in out.bits] == [(3, n, 8) for n in (1, 4, 16, 36)]
    again = sample_infinity(model, None, tc.as_tuple(), cfg=3.0, tau=0.5, top_p=0.97, seed=0, pn='0.06M', n_scales=4)
    assert all(torch.equal(a, b) for a, b in zip(out.bits, again.bits))        # the official tuple works the same

def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='config.json missing'): T5TextEncoder(tmp_path)
