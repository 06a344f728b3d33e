"""mom_ops: fast kernels for Mixture-of-Memories (MoM) gated-delta linear attention.

Public functions take PyTorch tensors and go through dispatcher ops (`torch.ops.mom_ops.*`), so autograd,
torch.compile and CUDA graphs see them.
"""

import torch

try:
    from mom_ops import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as e:  # pragma: no cover - only hit on a broken install
    raise ImportError(
        f"mom_ops._C could not be loaded ({e}). Rebuild the extension against the installed torch "
        f"{torch.__version__}: `pip install --no-build-isolation -e .` from the mom_ops checkout."
    ) from e

from mom_ops import _fake  # noqa: F401,E402  (fake kernels for torch.compile / meta tensors)
from mom_ops import _interim_cuda_backward  # noqa: F401,E402  (Triton scan backward on CUDA until #5)
from mom_ops.conv import segment_conv, segment_conv_columns  # noqa: E402
from mom_ops.decode import fused_recurrent_gated_delta_rule, mom_decode_step  # noqa: E402
from mom_ops.gating import gdn_gating  # noqa: E402
from mom_ops.gdn import chunk_gated_delta_rule  # noqa: E402
from mom_ops.readout import memory_mix  # noqa: E402
from mom_ops.routing import RoutingPlan, permute, route, unpermute  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """What this build contains: torch/CUDA versions, GPU archs, and which ops have CPU/CUDA kernels."""
    info = dict(_C.build_info())
    kernels = {}
    for qualname in sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mom_ops::")):
        kernels[qualname.split("::")[1]] = [
            key for key in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)
        ]
    info["kernels"] = kernels
    if _interim_cuda_backward.INTERIM_TRITON_BACKWARD:
        info["interim"] = {"chunk_gated_delta_rule_bwd": "CUDA key served by the Triton reference (issue #5)"}
    return info


__all__ = [
    "RoutingPlan",
    "build_info",
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "gdn_gating",
    "memory_mix",
    "mom_decode_step",
    "permute",
    "route",
    "segment_conv",
    "segment_conv_columns",
    "unpermute",
]
