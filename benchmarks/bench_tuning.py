"""Training cost of MVP vs the prefilled prompt vs LoRA vs full fine-tuning on a frozen VAR (random weights, official
architecture): trainable parameters, sequence length, step time and memory, with ratios against MVP measured in the
same run. One teacher-forced AdamW step = forward + CE + backward + optimizer step (the CLIP terms are left out: they
cost the same for every method).

    python benchmarks/bench_tuning.py --depth 16 --batch-size 16                # GPU when available
    python benchmarks/bench_tuning.py --depth 4 --tiny --batch-size 32          # CPU, toy size
    python benchmarks/bench_tuning.py --depth 16 --batch-size 2 --steps 2       # CPU, VAR-d16 size (slow)

Memory: on CUDA the peak allocated memory of the step; on CPU (no allocator statistics) the bytes the autograd graph
saves for backward (activations, counted once per storage) plus gradients and AdamW state of the trainable parameters —
the part of training memory that differs between methods.
"""
import argparse, time
import numpy as np
import torch
import torch.nn.functional as F
from mvp_vpg.models.var import VAR, VARConfig
from mvp_vpg.mvp.tuner import Tuner
from mvp_vpg.mvp.config import mvp_section, method_lr


class SavedBytes:
    "Bytes of the distinct storages autograd saves for backward while active."
    def __init__(self): self.seen, self.bytes = set(), 0
    def pack(self, t):
        s = t.untyped_storage()
        key = (s.data_ptr(), s.nbytes())
        if key not in self.seen: self.seen.add(key); self.bytes += s.nbytes()
        return t
    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t); self.ctx.__enter__(); return self
    def __exit__(self, *a): self.ctx.__exit__(*a)


def build(method, args, dev, cfg):
    torch.manual_seed(0)
    pns = (1, 2, 3, 4, 5, 6, 8) if args.tiny else (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    extra = {'num_classes': 12, 'vocab_size': 512, 'z_channels': 16, 'embed_dim': 128, 'num_heads': 2} if args.tiny else {}
    with dev: var = VAR(VARConfig(depth=args.depth, patch_nums=pns, **extra))
    return Tuner(var, method, 'c2i', cfg)


def step_once(tuner, opt, x_in, labels, target, saved=None):
    with (saved or torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)):
        logits = tuner.logits(x_in, labels=labels)
        loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()


def measure(method, args, dev, cfg):
    t = build(method, args, dev, cfg)
    var = t.var
    B, L, first = args.batch_size, var.L, var.patch_nums[0] ** 2
    g = torch.Generator().manual_seed(1)
    x_in = torch.randn(B, L - first, var.Cvae, generator=g).to(dev) * 0.1
    labels = torch.randint(0, var.num_classes, (B,), generator=g).to(dev)
    target = torch.randint(0, var.head.out_features, (B, L), generator=g).to(dev)
    params = [p for _, p in t.named_trainable()]
    opt = torch.optim.AdamW(params, lr=method_lr(cfg, method))
    t.train()
    step_once(t, opt, x_in, labels, target)            # warm-up (allocates grads and optimizer state)
    if dev.type == 'cuda': torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step_once(t, opt, x_in, labels, target)
        if dev.type == 'cuda': torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    n_tr = sum(p.numel() for p in params)
    if dev.type == 'cuda': mem = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        sb = SavedBytes()
        with sb: step_once(t, opt, x_in, labels, target, saved=sb)
        mem = (sb.bytes + n_tr * 4 * 3) / 2**20              # activations + grad + AdamW (exp_avg, exp_avg_sq), fp32
    seq = L + (t.prompt.n_prefix() if method == 'prefilled' else 0)
    res = dict(method=method, trainable=n_tr, pct=100 * n_tr / t.n_backbone(), seq=seq, step_s=float(np.median(times)), mem_mb=mem)
    del t, var, opt
    if dev.type == 'cuda': torch.cuda.empty_cache()
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--depth', type=int, default=16)
    p.add_argument('--tiny', action='store_true', help='toy pyramid (1,2,3,4,5,6,8), width 128, 12 classes')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--steps', type=int, default=5, help='timed steps per method (after one warm-up step)')
    p.add_argument('--tau', type=int, default=20)
    p.add_argument('--methods', nargs='+', default=['mvp', 'prefilled', 'lora', 'full'])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args()
    dev = torch.device(args.device)
    cfg = mvp_section({'mvp': {'tau': args.tau}})
    rows = [measure(m, args, dev, cfg) for m in args.methods]
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    kind = 'peak allocated' if dev.type == 'cuda' else 'saved activations + grads + AdamW state'
    print(f"\nVAR-d{args.depth}{' (toy size)' if args.tiny else ''}, batch {args.batch_size}, tau {args.tau}, {name}, fp32; memory = {kind}")
    ref = next((r for r in rows if r['method'] == 'mvp'), rows[0])
    print(f"| method | trainable | % of VAR | sequence | step (s) | memory (MB) | time ÷ {ref['method']} | memory ÷ {ref['method']} |")
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['method']} | {r['trainable']:,} | {r['pct']:.3f} | {r['seq']} | {r['step_s']:.3f} | {r['mem_mb']:.1f} | "
              f"{r['step_s'] / ref['step_s']:.2f} | {r['mem_mb'] / ref['mem_mb']:.2f} |")


if __name__ == '__main__':
    main()
