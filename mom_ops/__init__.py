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
from mom_ops import _other_gpus  # noqa: F401,E402  (Triton fallbacks on GPUs the CUDA kernels do not run on)
from mom_ops.conv import segment_conv, segment_conv_columns  # noqa: E402
from mom_ops.decode import fused_recurrent_gated_delta_rule, mom_decode_step  # noqa: E402
from mom_ops.gating import gdn_gating  # noqa: E402
from mom_ops.gdn import chunk_gated_delta_rule  # noqa: E402
from mom_ops.readout import memory_mix  # noqa: E402
from mom_ops.routing import RoutingPlan, permute, route, unpermute  # noqa: E402

__version__ = "0.1.0"


def build_info() -> dict:
    """What this build contains: torch/CUDA versions, GPU archs, which ops have CPU/CUDA kernels, and which have a
    Triton fallback for other GPUs."""
    info = dict(_C.build_info())
    kernels = {}
    names = torch._C._dispatch_get_all_op_names()
    for qualname in sorted(n for n in names if n.startswith("mom_ops::") and not n.endswith("_triton")):
        kernels[qualname.split("::")[1]] = [
            key if key == "CPU" or info["cuda"] else "CUDA (Triton fallback)"  # (a build without CUDA kernels)
            for key in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)
        ]
    info["kernels"] = kernels
    # ops that run on GPUs this build's kernels do not (their Triton references; mom_ops/_other_gpus.py)
    info["triton_fallbacks"] = _other_gpus.TRITON_FALLBACKS
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
