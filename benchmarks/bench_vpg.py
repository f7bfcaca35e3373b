"""Sampling latency and peak memory of CFG-only vs CFG+VPG (all scales per_scale / per_step, semantic-only scheduled)
with the overhead ratio against CFG-only measured in the same run. Random weights, official architecture.

    python benchmarks/bench_vpg.py --depth 16 --batch-size 16                     # GPU when available
    python benchmarks/bench_vpg.py --depth 2 --tiny --batch-size 4 --repeats 2    # CPU, toy size
"""
import argparse, resource, time
import torch
from mvp_vpg.var import VAR, VARConfig
from mvp_vpg.vqvae import VQVAE, VQVAEConfig
from mvp_vpg.sampling import sample, CFG
from mvp_vpg.vpg import VPG


def settings(args):
    base = CFG(args.cfg)
    return {
        'CFG only': base,
        'VPG all scales (per_scale)': VPG(args.lam, args.p, redraw='per_scale', base=base),
        'VPG all scales (per_step)': VPG(args.lam, args.p, redraw='per_step', base=base),
        f'VPG semantic-only (first {args.semantic} scales)': VPG(args.lam, args.p, schedule=args.semantic, base=base),
    }


def run(var, vae, g, B, args, dev):
    labels = torch.arange(B, device=dev) % var.num_classes
    kw = dict(guidance=g, top_k=args.top_k, top_p=args.top_p, mode=args.mode)
    sample(var, vae, labels, seed=0, **kw)  # warm-up
    if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for r in range(args.repeats): sample(var, vae, labels, seed=r + 1, **kw)
    if dev.type == 'cuda': torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.repeats
    mem = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dt, mem


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--depth', type=int, default=16)
    p.add_argument('--tiny', action='store_true', help='toy pyramid (1,2,3,4,5,6,8) and a ch=32 tokenizer')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--cfg', type=float, default=1.5)
    p.add_argument('--lam', type=float, default=1.0)
    p.add_argument('--p', type=float, default=0.5)
    p.add_argument('--semantic', type=int, default=4, help='scheduled VPG guides the first n scales')
    p.add_argument('--top-k', type=int, default=900)
    p.add_argument('--top-p', type=float, default=0.96)
    p.add_argument('--mode', default='fast', choices=['reference', 'fast'])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    pns = (1, 2, 3, 4, 5, 6, 8) if args.tiny else (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    with dev:
        var = VAR(VARConfig(depth=args.depth, patch_nums=pns, **({'num_classes': 12, 'vocab_size': 512, 'z_channels': 16} if args.tiny else {}))).eval()
        vcfg = VQVAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), patch_nums=pns) if args.tiny else VQVAEConfig()
        vae = VQVAE(vcfg).eval()
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    print(f"VAR-d{args.depth}, patch_nums {pns}, batch {args.batch_size}, cfg {args.cfg}, VPG lam {args.lam} p {args.p}, "
          f"mode {args.mode}, {args.repeats} timed runs, torch {torch.__version__}, {name}")
    mem = 'peak alloc MB' if dev.type == 'cuda' else 'peak RSS MB'
    print(f"| setting | s/batch | images/s | {mem} | latency vs CFG only |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for label, g in settings(args).items():
        dt, mb = run(var, vae, g, args.batch_size, args, dev)
        base = base or dt
        print(f"| {label} | {dt:.3f} | {args.batch_size / dt:.2f} | {mb:.0f} | {dt / base:.2f}x |", flush=True)


if __name__ == '__main__':
    main()
