"""Sampling latency and peak memory of CFG-only vs CFG+VPG (all scales per_scale / per_step, semantic-only scheduled)
with the overhead ratio against CFG-only measured in the same run (VPG paper App. B.2).

    python benchmarks/bench_vpg.py --depth 16 --batch-size 16                     # random weights, GPU when available
    python benchmarks/bench_vpg.py --depth 2 --tiny --batch-size 4 --repeats 2    # random weights, CPU, toy size
    python benchmarks/bench_vpg.py --toy data/toy --json metrics/bench/vpg_latency.json   # the committed toy models (dvc stage)

On CPU every setting runs in a fresh subprocess, so its peak RSS is its own (the high-water mark of one process never
goes down); on CUDA the peak allocated memory is reset between settings.
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path
import torch
from mvp_vpg.models.var import VAR, VARConfig
from mvp_vpg.models.vqvae import VQVAE, VQVAEConfig
from mvp_vpg.sampling.sampler import sample, CFG
from mvp_vpg.vpg.guidance import VPG


def settings(args) -> dict:
    base = CFG(args.cfg)
    return {
        'CFG only': base,
        'VPG all scales (per_scale)': VPG(args.lam, args.p, redraw='per_scale', base=base),
        'VPG all scales (per_step)': VPG(args.lam, args.p, redraw='per_step', base=base),
        f'VPG semantic-only (first {args.semantic} scales)': VPG(args.lam, args.p, schedule=args.semantic, base=base),
    }


def models(args, dev):
    "(var, vae, description): the committed toy models (`--toy`) or random weights of the official architecture."
    if args.toy:
        from mvp_vpg.models.checkpoints import load_var, load_vqvae
        var = load_var(Path(args.toy) / 'var', device=dev).eval()
        return var, load_vqvae(Path(args.toy) / 'vqvae', patch_nums=var.patch_nums, device=dev).eval(), f'toy VAR ({args.toy})'
    torch.manual_seed(0)
    pns = (1, 2, 3, 4, 5, 6, 8) if args.tiny else (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    with dev:
        var = VAR(VARConfig(depth=args.depth, patch_nums=pns, **({'num_classes': 12, 'vocab_size': 512, 'z_channels': 16} if args.tiny else {}))).eval()
        vcfg = VQVAEConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), patch_nums=pns) if args.tiny else VQVAEConfig()
        vae = VQVAE(vcfg).eval()
    return var, vae, f'VAR-d{args.depth} (random weights)'


def run(var, vae, g, B, args, dev) -> tuple[float, float]:
    "(seconds per batch, peak MB) of `args.repeats` timed batches after one warm-up."
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


def measure_isolated(label: str, argv: list[str]) -> dict:
    "Run one setting in a fresh process (its own peak RSS) and read back its row: s_per_batch, peak_mb, model."
    out = subprocess.run([sys.executable, __file__, *argv, '--only', label], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--depth', type=int, default=16)
    p.add_argument('--tiny', action='store_true', help='toy pyramid (1,2,3,4,5,6,8) and a ch=32 tokenizer (random weights)')
    p.add_argument('--toy', default=None, help='folder with the committed toy models (var/, vqvae/) instead of random weights')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--cfg', type=float, default=1.5)
    p.add_argument('--lam', type=float, default=1.0)
    p.add_argument('--p', type=float, default=0.5)
    p.add_argument('--semantic', type=int, default=4, help='scheduled VPG guides the first n scales')
    p.add_argument('--top-k', type=int, default=900)
    p.add_argument('--top-p', type=float, default=0.96)
    p.add_argument('--mode', default='fast', choices=['reference', 'fast'])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--json', default=None, help='also write the table as JSON (atomically) to this path')
    p.add_argument('--only', default=None, help=argparse.SUPPRESS)   # internal: one setting, print its row as JSON
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gs = settings(args)
    if args.only is not None:
        var, vae, what = models(args, dev)
        dt, mb = run(var, vae, gs[args.only], args.batch_size, args, dev)
        print(json.dumps({'s_per_batch': dt, 'peak_mb': mb, 'model': f"{what}, patch_nums {tuple(var.patch_nums)}"})); return
    # on CPU the settings run in child processes: the parent never builds the models
    model = None
    if dev.type == 'cuda':
        var, vae, what = models(args, dev); model = f"{what}, patch_nums {tuple(var.patch_nums)}"
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    mem = 'peak alloc MB' if dev.type == 'cuda' else 'peak RSS MB (own process)'
    rows, base = [], None
    for label, g in gs.items():
        if dev.type == 'cuda': dt, mb = run(var, vae, g, args.batch_size, args, dev)
        else:
            r = measure_isolated(label, argv); dt, mb, model = r['s_per_batch'], r['peak_mb'], r['model']
        if base is None:
            header = (f"{model}, batch {args.batch_size}, cfg {args.cfg}, VPG lam {args.lam} p {args.p}, mode {args.mode}, "
                      f"{args.repeats} timed runs, torch {torch.__version__}, {name}")
            print(header); print(f"| setting | s/batch | images/s | {mem} | latency vs CFG only |"); print("|---|---:|---:|---:|---:|")
        base = base or dt
        rows.append({'setting': label, 'guidance': repr(g), 's_per_batch': dt, 'images_per_s': args.batch_size / dt,
                     'peak_mb': mb, 'latency_ratio': dt / base})
        print(f"| {label} | {dt:.3f} | {args.batch_size / dt:.2f} | {mb:.0f} | {dt / base:.2f}x |", flush=True)
    if args.json:
        out = Path(args.json); out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f'.{out.name}.tmp{os.getpid()}')
        tmp.write_text(json.dumps({'setup': header, 'device': dev.type, 'memory': mem, 'batch_size': args.batch_size,
                                   'repeats': args.repeats, 'rows': rows}, indent=1))
        os.replace(tmp, out)


if __name__ == '__main__':
    main()
