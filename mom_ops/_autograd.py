"""The public functions' autograd: each op's registered setup_context and backward (torch.library.register_autograd,
which serves torch.ops.mom_ops.* callers) run by a plain torch.autograd.Function. Same gradients; what goes is the
torch.library wrapper's per-call Python work (its generated Function, argument defaults, redispatch): on a CPU,
segment_conv's forward with gradients took 60-103 us through it against 23-46 us here, forward + backward 211-272
against 149-163 us. The MoM layer was host-bound on slow hosts (mom_ops/NOTES.md). `below_autograd` also skips the
op's own registered autograd where it would only redispatch (inside these Functions, in backwards, under no_grad)."""

from __future__ import annotations

import functools
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


class _NoDoubleBackward(torch.autograd.Function):
    """The identity on a backward's results, linked to what they depend on (the incoming gradients and saved tensors
    that carry a graph), whose own backward raises: the error of a double backward through a backward computed by
    kernels without a derivative."""

    @staticmethod
    def forward(ctx, where, num_links, *links_and_results):
        ctx.where = where
        results = links_and_results[num_links:]
        return tuple(r.view_as(r) if isinstance(r, torch.Tensor) else r for r in results)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"{ctx.where}: double backward (a gradient of a gradient) is not supported: the backward "
                           "kernels have no derivative of their own")


class _SavedOnce:
    """ctx with its saved tensors unpacked once, for the backward and the links both: saved-tensor hooks may allow a
    single unpack (non-reentrant checkpointing raised at a second one) or copy per unpack (save_on_cpu)."""

    def __init__(self, ctx):
        self._ctx, self.saved_tensors = ctx, ctx.saved_tensors

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def once_differentiable(backward: Callable) -> Callable:
    """backward, run without recording a graph; where its incoming gradients or saved tensors carry one (a backward
    with create_graph), its results lead to an error instead. The ops' backward kernels (*_bwd) have no autograd, so a
    double backward through them got zeros or made-up values from autograd's fallback. (torch's once_differentiable
    hangs the error on fresh leaves, which torch.autograd.grad with inputs never reaches: "not used in the graph", or
    None with allow_unused.)"""

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if not torch.is_grad_enabled():  # the usual backward (no create_graph): as it is, no host time added
            return backward(ctx, *grads)
        ctx = _SavedOnce(ctx)
        with torch.no_grad():
            results = backward(ctx, *grads)
        # what the results depend on: the incoming gradients and the saved tensors (with a linear loss the gradients
        # are constants, but the results still depend on the saved inputs / outputs)
        saved = [t for t in ctx.saved_tensors if t is not None]
        links = [t for t in (*grads, *saved) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not links:
            return results
        single = not isinstance(results, tuple)
        # the links as inputs: the graph from the results back to what the gradients depend on passes through the node
        linked = _NoDoubleBackward.apply(backward.__module__, len(links), *links, *((results,) if single else results))
        return linked[0] if single else linked

    return checked


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
