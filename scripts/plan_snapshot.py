"""Plans of every builder at a few (N, B, seed, epoch), saved for a bit-identical comparison across a refactor.

    python scripts/plan_snapshot.py /tmp/before.pt      # on the old commit
    python scripts/plan_snapshot.py /tmp/after.pt       # on the new one, then compare the two files
"""
import sys

import torch

from hf_divcl.diversity.window import DiversityWindow
from hf_divcl.planning.plan import plan_epoch

out = {}
for n, b in [(700, 16), (1500, 32)]:
    g = torch.Generator().manual_seed(n)
    centres = torch.randn(12, 24, generator=g)
    x = centres[torch.randint(12, (n,), generator=g)] + 0.7 * torch.randn(n, 24, generator=g)
    x = torch.nn.functional.normalize(x, dim=-1)
    groups = torch.arange(n) // 1  # no duplicates except a few
    groups[5], groups[9] = 3, 3
    for builder, kw in [("random", {}), ("greedy", {"m": 16}), ("pool", {"p": 3}), ("cluster", {}),
                        ("cluster", {"clusters_per_batch": 2})]:
        for seed in (0, 3):
            for epoch in (0, 1):
                window = None if builder == "random" else DiversityWindow(6.0, 10.0)
                p = plan_epoch(x, b, builder=builder, window=window, seed=seed, epoch=epoch, groups=groups,
                               on_infeasible="closest", **kw)
                out[(n, b, builder, str(kw), seed, epoch)] = (torch.cat(p.batches), p.values)
torch.save(out, sys.argv[1])
print(len(out), "plans")
