"""The public functions' autograd: each op's registered setup_context and backward (torch.library.register_autograd,
which serves torch.ops.mom_ops.* callers) run by a plain torch.autograd.Function. Same gradients; what goes is the
torch.library wrapper's per-call Python work (its generated Function, argument defaults, redispatch): on a CPU,
segment_conv's forward with gradients took 60-103 us through it against 23-46 us here, forward + backward 211-272
against 149-163 us. The MoM layer was host-bound on slow hosts (mom_ops/NOTES.md). `below_autograd` also skips the
op's own registered autograd where it would only redispatch (inside these Functions, in backwards, under no_grad)."""

from __future__ import annotations

from typing import Callable

import torch


def below_autograd(op: Callable, *args):
    """op(*args) past the op's registered autograd kernel where that kernel would record nothing: with grad mode off
    (inside an autograd.Function's forward, in a backward without create_graph, under no_grad). That kernel is
    torch.library's Python wrapper, which then only redispatches: ~9 calls and ~0.5 ms of host time per MoMAttention
    inference forward under cProfile on the H200's host. With grad mode on, or while torch.compile traces, the plain
    call."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def function_of(op: Callable, setup_context: Callable, backward: Callable) -> type[torch.autograd.Function]:
    """An autograd.Function whose forward is op(*args) followed by setup_context(ctx, args, output), and whose
    backward is backward(ctx, *grads): the op's register_autograd pair. Call .apply with every op argument, in the
    schema's order (setup_context unpacks them positionally)."""

    class _OpFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = below_autograd(op, *args)  # this Function is the op's autograd
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    _OpFunction.__name__ = _OpFunction.__qualname__ = f"{getattr(op, '__name__', 'op')}_function"
    return _OpFunction
