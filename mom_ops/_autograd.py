"""The public functions' autograd: each op's registered setup_context and backward (torch.library.register_autograd,
which serves torch.ops.mom_ops.* callers) run by a plain torch.autograd.Function. Same gradients; what goes is the
torch.library wrapper's per-call Python work (its generated Function, argument defaults, redispatch): on a CPU,
segment_conv's forward with gradients took 60-103 us through it against 23-46 us here, forward + backward 211-272
against 149-163 us. The MoM layer was host-bound on slow hosts (mom_ops/NOTES.md)."""

from __future__ import annotations

from typing import Callable

import torch


def function_of(op: Callable, setup_context: Callable, backward: Callable) -> type[torch.autograd.Function]:
    """An autograd.Function whose forward is op(*args) followed by setup_context(ctx, args, output), and whose
    backward is backward(ctx, *grads): the op's register_autograd pair. Call .apply with every op argument, in the
    schema's order (setup_context unpacks them positionally)."""

    class _OpFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = op(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    _OpFunction.__name__ = _OpFunction.__qualname__ = f"{getattr(op, '__name__', 'op')}_function"
    return _OpFunction
