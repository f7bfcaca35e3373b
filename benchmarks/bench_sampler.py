"""Sampler throughput: images/s and peak memory of reference vs fast mode, CFG on, for VAR of any depth with random
weights (official architecture, 256px pyramid, full-size tokenizer by default).

    python benchmarks/bench_sampler.py --depth 16 --batch-sizes 1 16 64          # GPU when available
    python benchmarks/bench_sampler.py --depth 2 --batch-sizes 1 8 --tiny-vae    # quick CPU run
"""
import argparse, resource, time
import torch
from mvp_vpg.models.var import VAR, VARConfig
from mvp_vpg.models.vqvae import VQVAE, VQVAEConfig
from mvp_vpg.sampling.sampler import sample, CFG


def peak_mb(dev):
    if dev.type == 'cuda': return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (monotonic on CPU)


def bench(var, vae, B, mode, args, dev):
    kw = dict(guidance=CFG(args.cfg), top_k=args.top_k, top_p=args.top_p, mode=mode)
    labels = torch.arange(B, device=dev) % var.num_classes
    sample(var, vae, labels, seed=0, **kw)  # warm-up (kernels, allocator)
    if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for r in range(args.repeats): sample(var, vae, labels, seed=r + 1, **kw)
    if dev.type == 'cuda': torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.repeats
    return B / dt, dt, peak_mb(dev)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--depth', type=int, default=16)
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 16, 64])
    p.add_argument('--modes', nargs='+', default=['reference', 'fast'], choices=['reference', 'fast'])
    p.add_argument('--cfg', type=float, default=1.5)
    p.add_argument('--top-k', type=int, default=900)
    p.add_argument('--top-p', type=float, default=0.96)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--tiny-vae', action='store_true', help='ch=32 tokenizer instead of the full ch=160 one')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    with dev:
        var = VAR(VARConfig(depth=args.depth)).eval()
        vae = VQVAE(VQVAEConfig(ch=32) if args.tiny_vae else VQVAEConfig()).eval()
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    print(f"VAR-d{args.depth} ({sum(p.numel() for p in var.parameters()) / 1e6:.0f}M params), "
          f"{'tiny' if args.tiny_vae else 'full'} VQVAE, 256px, cfg={args.cfg}, top_k={args.top_k}, top_p={args.top_p}, "
          f"{args.repeats} timed runs, torch {torch.__version__}, {name}")
    mem = 'peak alloc MB' if dev.type == 'cuda' else 'peak RSS MB'
    print(f"| batch | mode | images/s | s/batch | {mem} | speed-up vs reference |")
    print("|---:|---|---:|---:|---:|---:|")
    for B in args.batch_sizes:
        ref = None
        for mode in args.modes:
            ips, dt, mb = bench(var, vae, B, mode, args, dev)
            ref = ips if mode == 'reference' else ref
            ratio = f"{ips / ref:.2f}x" if ref else '-'
            print(f"| {B} | {mode} | {ips:.2f} | {dt:.3f} | {mb:.0f} | {ratio} |", flush=True)


if __name__ == '__main__':
    main()
