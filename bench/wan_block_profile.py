"""Per-kernel time of one Wan2.1-1.3B transformer block at the W1 shape
(CFG batch 2, 32760 tokens, bf16) written with plain PyTorch ops, to see
where a denoising step's non-attention time goes (GEMMs, cross-attention,
element-wise). Run on the GPU machine: python3 bench/wan_block_profile.py
"""
import torch
import torch.nn.functional as F

B, N, C, FF, L, H = 2, 32760, 1536, 8960, 512, 12
D = C // H
dev, dt = "cuda", torch.bfloat16
torch.manual_seed(0)


def w(o, i):
    return torch.randn(o, i, device=dev, dtype=dt) * 0.02


Wq, Wk, Wv, Wo = (w(C, C) for _ in range(4))
Wqkv = torch.cat([Wq, Wk, Wv])
Cq, Ck, Cv, Co = (w(C, C) for _ in range(4))
W1, W2 = w(FF, C), w(C, FF)
b1, b2 = torch.zeros(FF, device=dev, dtype=dt), torch.zeros(C, device=dev, dtype=dt)
x = torch.randn(B, N, C, device=dev, dtype=dt)
ctx = torch.randn(B, L, C, device=dev, dtype=dt)


def heads(t, n):
    return t.view(B, n, H, D).transpose(1, 2)


def block(x):
    h = F.layer_norm(x, (C,))
    q, k, v = F.linear(h, Wq), F.linear(h, Wk), F.linear(h, Wv)
    a = F.scaled_dot_product_attention(heads(q, N), heads(k, N), heads(v, N))
    x = x + F.linear(a.transpose(1, 2).reshape(B, N, C), Wo)
    h = F.layer_norm(x, (C,))
    q, k, v = F.linear(h, Cq), F.linear(ctx, Ck), F.linear(ctx, Cv)
    a = F.scaled_dot_product_attention(heads(q, N), heads(k, L), heads(v, L))
    x = x + F.linear(a.transpose(1, 2).reshape(B, N, C), Co)
    h = F.layer_norm(x, (C,))
    f = F.linear(F.gelu(F.linear(h, W1, b1), approximate="tanh"), W2, b2)
    return x + f


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps


h = torch.randn(B, N, C, device=dev, dtype=dt)
g = torch.randn(B, N, FF, device=dev, dtype=dt)
for name, fn, flops in [
    ("linear 1536->1536", lambda: F.linear(h, Wq), 2 * B * N * C * C),
    ("linear qkv fused 1536->4608", lambda: F.linear(h, Wqkv), 6 * B * N * C * C),
    ("linear 1536->8960", lambda: F.linear(h, W1, b1), 2 * B * N * C * FF),
    ("addmm_act gelu 1536->8960",
     lambda: torch._addmm_activation(b1, h.view(-1, C), W1.t(), use_gelu=True), 2 * B * N * C * FF),
    ("linear 8960->1536", lambda: F.linear(g, W2, b2), 2 * B * N * C * FF),
    ("cross sdpa L=512",
     lambda: F.scaled_dot_product_attention(heads(h, N), heads(ctx, L), heads(ctx, L)),
     4 * B * N * L * C),
    ("self sdpa", lambda: F.scaled_dot_product_attention(heads(h, N), heads(h, N), heads(h, N)),
     4 * B * N * N * C),
    ("add", lambda: h + h, 0),
    ("layer_norm", lambda: F.layer_norm(h, (C,)), 0),
]:
    ms = timed(fn)
    tf = flops / ms / 1e9 if flops else 0
    gbs = 3 * h.numel() * 2 / ms / 1e6
    print(f"{name:32s} {ms:8.3f} ms  {tf:7.1f} TF/s  ({gbs:6.0f} GB/s if 3 passes of x)")

print(f"block {timed(lambda: block(x), 5):.3f} ms")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(3):
        block(x)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
