"""Sampling latency and peak memory of the text-to-image backbones (Infinity, HART) with random weights: the official
CFG alone vs + VPG (per_scale, per_step, first-n scales), all measured in the same run; ratios against CFG.

    python benchmarks/bench_backbones.py --size tiny                 # CPU, seconds (toy-size models, 256px schedules)
    python benchmarks/bench_backbones.py --size large --mode fast    # GPU: Infinity-2B / HART-0.7B widths at 1024px
"""
import argparse, resource, statistics, time
import torch
from mvp_vpg.models.infinity import Infinity, INFINITY_2B
from mvp_vpg.models.infinity_layers import TextCond
from mvp_vpg.models.infinity_vae import InfinityVAE, InfinityVAEConfig
from mvp_vpg.models.hart import HARTForT2I, HARTConfig
from mvp_vpg.models.hart_tokenizer import HARTTokenizer, HART_PATCH_NUMS_1024
from mvp_vpg.sampling.infinity import sample_infinity, infinity_cfg
from mvp_vpg.sampling.hart import sample_hart, HARTCFG
from mvp_vpg.vpg.guidance import VPG

SIZES = {  # backbone -> size -> constructor arguments
    'infinity': {'tiny': dict(model=dict(depth=2, embed_dim=128, num_heads=2, d=16, text_channels=128, text_maxlen=32, block_chunks=2),
                              vae=dict(codebook_dim=16, base_ch=32, encoder_ch_mult=(1, 1, 2, 2, 2), decoder_ch_mult=(1, 1, 2, 2, 2), num_res_blocks=1),
                              pn='0.06M', text_channels=128),
                 'large': dict(model=dict(INFINITY_2B, text_channels=2048), vae={}, pn='1M', text_channels=2048)},
    'hart': {'tiny': dict(model=dict(context_token=32, context_dim=64, depth=2, embed_dim=128, num_heads=4, diff_width=64, diff_depth=2,
                                     patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), vocab_size=512, z_channels=16),
                          tok=dict(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 1, 2, 2, 4))),
             'large': dict(model=dict(context_token=300, context_dim=1536, depth=24, embed_dim=1536, num_heads=24, diff_width=1024,
                                      diff_depth=6, patch_nums=HART_PATCH_NUMS_1024, vocab_size=4096, z_channels=32),
                           tok=dict(vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4)))},
}
HART_FLAGS = dict(attn_type='llama', mlp_type='llama', disable_aln=True, use_timestep_embed=True, use_context_norm=True)


def peak_mb(dev):
    if dev.type == 'cuda': return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(name, size, dev, dtype):
    s = SIZES[name][size]
    if name == 'infinity':
        m = Infinity(**s['model']).to(dev, dtype).eval(); v = InfinityVAE(InfinityVAEConfig(**s['vae'])).to(dev).eval()
        def run(B, g, seed, mode):
            text = TextCond(torch.randn(B * 16, s['text_channels'], device=dev), [16] * B)
            return sample_infinity(m, v, text, guidance=g, tau=1.0, top_k=900, top_p=0.97, seed=seed, mode=mode, pn=s['pn'])
        base = infinity_cfg(4.0, 1)
        K = m.cfg.n_levels
    else:
        m = HARTForT2I(HARTConfig(**s['model'], **HART_FLAGS)).to(dev, dtype).eval()
        t = HARTTokenizer(patch_nums=s['model']['patch_nums'], **s['tok']).to(dev).eval()
        def run(B, g, seed, mode):
            T = m.cfg.context_token
            ctx = (torch.randn(B, T, m.cfg.context_dim, device=dev), torch.ones(B, T, dtype=torch.bool, device=dev),
                   torch.arange(T, device=dev).expand(B, T))
            return sample_hart(m, t, ctx, guidance=g, seed=seed, mode=mode)
        base = HARTCFG(4.5)
    return run, base


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--backbones', nargs='+', default=['infinity', 'hart'], choices=list(SIZES))
    p.add_argument('--size', default='tiny', choices=['tiny', 'large'])
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--mode', default='reference', choices=['reference', 'fast'])
    p.add_argument('--first-n', type=int, default=4, help='scheduled VPG guides scales 1..n-1')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args()
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.mode == 'fast' and dev.type == 'cuda' else torch.float32
    print(f"| backbone | size | rule | s / batch of {a.batch_size} (median of {a.repeats}) | x CFG | peak MB |\n|---|---|---|---:|---:|---:|")
    for name in a.backbones:
        run, base = build(name, a.size, dev, dtype)
        rules = [('CFG', base), ('+VPG per_scale', VPG(1.0, 0.5, base=base)), ('+VPG per_step', VPG(1.0, 0.5, redraw='per_step', base=base)),
                 (f'+VPG first {a.first_n}', VPG(1.0, 0.5, schedule=a.first_n, base=base))]
        for _, g in rules: run(a.batch_size, g, 0, a.mode)   # warm-up of every rule
        times, peaks = {l: [] for l, _ in rules}, {}
        for r in range(a.repeats):                             # round-robin, so background load hits every rule alike
            for label, g in rules:
                if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(dev)
                t0 = time.perf_counter(); run(a.batch_size, g, r + 1, a.mode)
                if dev.type == 'cuda': torch.cuda.synchronize()
                times[label].append(time.perf_counter() - t0); peaks[label] = peak_mb(dev)
        ref = statistics.median(times['CFG'])
        for label, _ in rules:
            dt = statistics.median(times[label])
            print(f"| {name} | {a.size} | {label} | {dt:.3f} | {dt / ref:.2f} | {peaks[label]:.0f} |", flush=True)

if __name__ == '__main__':
    main()
