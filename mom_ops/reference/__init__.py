"""Naive fp32 PyTorch references: the ground truth every kernel is tested against. Short and obviously right,
not fast. One file per op family."""

from mom_ops.reference.conv import segment_conv_ref, segment_conv_torch
from mom_ops.reference.decode import mom_decode_step_ref
from mom_ops.reference.gating import gdn_gating_ref
from mom_ops.reference.gdn import chunk_gated_delta_rule_ref, l2norm, recurrent_gated_delta_rule_ref
from mom_ops.reference.gdn_backward import chunk_gated_delta_rule_bwd_ref
from mom_ops.reference.gdn_pieces import chunk_gated_delta_rule_pieces_ref
from mom_ops.reference.layer import MoMConfig, MoMLayerCache, init_mom_params, mom_layer_ref
from mom_ops.reference.readout import memory_mix_ref
from mom_ops.reference.routing import permute_ref, plan_ref, route_ref, router_ref, unpermute_ref

__all__ = [
    "MoMConfig",
    "MoMLayerCache",
    "chunk_gated_delta_rule_bwd_ref",
    "chunk_gated_delta_rule_pieces_ref",
    "chunk_gated_delta_rule_ref",
    "gdn_gating_ref",
    "init_mom_params",
    "l2norm",
    "memory_mix_ref",
    "mom_decode_step_ref",
    "mom_layer_ref",
    "permute_ref",
    "plan_ref",
    "recurrent_gated_delta_rule_ref",
    "route_ref",
    "router_ref",
    "segment_conv_ref",
    "segment_conv_torch",
    "unpermute_ref",
]
