"""Per-kernel GPU time of the CUDA scan backward (forward rerun, chain, grads, glue) on the bench's gdn cases:
    python scripts/gdn_bwd_profile.py [T H D n ...]   (default: the three bench cases)"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

import mom_ops  # noqa: F401  (registers the ops)
from bench.cases import _gdn_inputs


def profile_case(T, H, D, n):
    inp, cu = _gdn_inputs(T, H, D, n)
    do = torch.randn_like(inp["v"])
    args = (inp["q"], inp["k"], inp["v"], inp["g"], inp["beta"], D ** -0.5, None, do, None, True, False, cu, None)
    for _ in range(3):
        torch.ops.mom_ops.chunk_gated_delta_rule_bwd(*args)
    torch.cuda.synchronize()
    reps = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            torch.ops.mom_ops.chunk_gated_delta_rule_bwd(*args)
        torch.cuda.synchronize()
    print(f"== gdn_T{T}_H{H}_D{D}_n{n}: CUDA time per backward call, by kernel")
    total = 0.0
    for evt in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
        if evt.device_time_total <= 0:
            continue
        ms = evt.device_time_total / reps / 1000
        total += ms
        print(f"  {ms:8.4f} ms  {evt.key[:100]}")
    print(f"  {total:8.4f} ms  total")


if __name__ == "__main__":
    nums = [int(x) for x in sys.argv[1:]]
    cases = [tuple(nums[i:i + 4]) for i in range(0, len(nums), 4)] or [(32768, 16, 128, 32), (32768, 4, 256, 32),
                                                                        (32768, 16, 128, 1)]
    for case in cases:
        profile_case(*case)
