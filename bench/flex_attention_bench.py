"""FlexAttention with the RainFusion2.0 masks dumped by attention_gpu_bench.

    python3 bench/flex_attention_bench.py MASK_DIR OUT.json

Reads MASK_DIR/masks.json (written by attention_gpu_bench --mask-dir) and, for
each mask, times torch's compiled flex_attention with a BlockMask built from
the same kv_num_blocks / kv_indices, plus SDPA on the same inputs, with CUDA
events (median of 20 after warm-up). bf16, random inputs, B = 1.

FlexAttention's blocks are uniform 128-token tiles, while ours are cut per
segment (the sink frame starts its own block), so the last rows/columns are
mapped onto the uniform grid: indices past its end are dropped. The number of
computed blocks differs by well under 1%; timings are comparable, outputs are
not compared.
"""
import datetime
import json
import sys

import numpy as np
import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention


def median_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2], times[0], times[-1]


def main(mask_dir, out_path):
    masks = json.load(open(f"{mask_dir}/masks.json"))
    compiled = torch.compile(flex_attention, dynamic=False)
    rows = []
    for m in masks:
        heads, tokens, dim, nb = m["heads"], m["tokens"], m["head_dim"], m["blocks"]
        counts = np.fromfile(m["stem"] + "_counts.bin", dtype=np.int32).reshape(1, heads, nb)
        indices = np.fromfile(m["stem"] + "_indices.bin", dtype=np.int32).reshape(1, heads, nb, nb)
        grid = (tokens + 127) // 128
        kv_num = np.zeros((1, heads, grid), dtype=np.int32)
        kv_idx = np.zeros((1, heads, grid, grid), dtype=np.int32)
        for h in range(heads):
            for r in range(grid):
                kept = [j for j in indices[0, h, r, : counts[0, h, r]] if j < grid]
                kv_num[0, h, r] = len(kept)
                kv_idx[0, h, r, : len(kept)] = kept
        block_mask = BlockMask.from_kv_blocks(
            torch.from_numpy(kv_num).cuda(), torch.from_numpy(kv_idx).cuda(), BLOCK_SIZE=128,
            seq_lengths=(tokens, tokens))
        q, k, v = (torch.randn(1, heads, tokens, dim, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        flex = median_ms(lambda: compiled(q, k, v, block_mask=block_mask))
        sdpa = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        density = kv_num.sum() / (heads * grid * grid)
        flops = 4.0 * tokens * tokens * dim * heads
        rows.append({"workload": m["workload"], "impl": "flex_attention", "inputs": "random",
                     "sparsity": m["sparsity"], "realized_sparsity": float(1 - density),
                     "ms": flex[0], "ms_min": flex[1], "ms_max": flex[2],
                     "tflops": flops * density / flex[0] * 1e-9,
                     "speedup_vs_sdpa": sdpa[0] / flex[0], "sdpa_ms": sdpa[0]})
        print(f"  {m['workload']} flex s={m['sparsity']} real={1 - density:.3f} "
              f"{flex[0]:.3f} ms ({sdpa[0] / flex[0]:.2f}x sdpa {sdpa[0]:.3f} ms)", flush=True)
    json.dump({"benchmark": "attention_gpu_flex", "date": datetime.date.today().isoformat(),
               "machine": torch.cuda.get_device_name(),
               "torch": torch.__version__,
               "command": f"python3 bench/flex_attention_bench.py {mask_dir} {out_path}",
               "rows": rows}, open(out_path, "w"), indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
