"""token_projection (MoMAttention's q | gate | logits GEMM, one backward node for x's gradient) against autograd of
the plain split product, with x's other consumer reading x_alias."""

import pytest
import torch

from mom_ops.token_projection import token_projection


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(37, 24, generator=g, dtype=torch.float64).to(dtype)
    sizes = [64, 72, 3]  # two GEMM groups: [64], [72 | 3 | padding]
    weight = torch.cat([torch.randn(sum(sizes), 24, generator=g, dtype=torch.float64), torch.zeros(5, 24,
                                                                                                  dtype=torch.float64)])
    return x, weight.to(dtype), sizes


def _run(x, weight, sizes, fused, use=(True, True, True), other=True):
    """A scalar loss over the used blocks and (other) a second consumer of x; gradients of x and weight."""
    x, weight = x.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    if fused:
        *blocks, x_other = token_projection(x, weight, sizes)
    else:
        blocks = (x @ weight.t()).split(sizes + [weight.shape[0] - sum(sizes)], 1)[:len(sizes)]
        x_other = x
    g = torch.Generator().manual_seed(1)
    loss = sum((b * torch.randn(b.shape, generator=g, dtype=b.dtype)).sum() for b, u in zip(blocks, use) if u)
    if other:
        loss = loss + (x_other.square() * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum()
    loss.backward()
    return [b.detach() for b in blocks], x.grad, weight.grad


@pytest.mark.parametrize("use", [(True, True, True), (True, False, True), (False, False, True), (False, False, False)])
@pytest.mark.parametrize("other", [True, False])
def test_matches_split_product(use, other):
    if not any(use) and not other:
        pytest.skip("no gradient at all")
    x, weight, sizes = _inputs(torch.float64)
    blocks, dx, dw = _run(x, weight, sizes, True, use, other)
    blocks_ref, dx_ref, dw_ref = _run(x, weight, sizes, False, use, other)
    for b, r in zip(blocks, blocks_ref):
        torch.testing.assert_close(b, r)
    torch.testing.assert_close(dx, dx_ref)
    torch.testing.assert_close(dw, dw_ref)


def test_blocks_are_views_and_the_alias_is_x():
    x, weight, sizes = _inputs(torch.float32)
    *blocks, alias = token_projection(x, weight, sizes)
    assert [b.shape for b in blocks] == [(37, n) for n in sizes]
    assert all(b._base is blocks[0]._base for b in blocks)  # column slices of one product, no copies
    assert alias.data_ptr() == x.data_ptr()


def test_rejects_mismatched_shapes():
    x, weight, sizes = _inputs(torch.float32)
    with pytest.raises(ValueError, match="token_projection"):
        token_projection(x, weight[:, :-1], sizes)
    with pytest.raises(ValueError, match="token_projection"):
        token_projection(x, weight[:20], sizes)
    with pytest.raises(ValueError, match="token_projection"):
        token_projection(x, weight, [70, -3])
    with pytest.raises(ValueError, match="at least one block"):  # (forward ran, backward raised an IndexError)
        token_projection(x, weight, [])
    with pytest.raises(ValueError, match="weight must have x's dtype"):  # (a matmul's dtype error before)
        token_projection(x, weight.double(), sizes)


def test_alias_gradient_shared_or_expanded_is_not_written():
    """By default x_alias's incoming gradient is read, never written: an add hands the same tensor to both operands,
    sum's backward an expanded one, and a gradient the user passes is theirs."""
    x, weight, sizes = _inputs(torch.float64)
    x = x.requires_grad_(True)
    p = torch.randn(x.shape, dtype=x.dtype, requires_grad=True)
    c = p * 1.0
    *blocks, x_alias = token_projection(x, weight, sizes)
    r = torch.randn(x.shape, dtype=x.dtype)
    (((x_alias + c) * r).sum() + blocks[0].sum()).backward()
    torch.testing.assert_close(p.grad, r)  # the add's gradient, untouched by x's
    torch.testing.assert_close(x.grad, r + torch.ones(37, sizes[0], dtype=x.dtype) @ weight[:sizes[0]])

    x.grad = None
    *blocks, x_alias = token_projection(x, weight, sizes)
    (blocks[0].sum() + x_alias.sum()).backward()  # sum's backward: an expanded (stride 0) gradient
    torch.testing.assert_close(x.grad, 1 + torch.ones(37, sizes[0], dtype=x.dtype) @ weight[:sizes[0]])

    *blocks, x_alias = token_projection(x, weight, sizes, alias_grad_in_place=True)
    mine = torch.ones(1, x.shape[1], dtype=x.dtype)
    x.grad = None
    torch.autograd.backward([blocks[0], x_alias], [torch.ones(37, sizes[0], dtype=x.dtype), mine.expand(x.shape)])
    assert torch.equal(mine, torch.ones_like(mine))  # expanded: copied even where in place is allowed
    torch.testing.assert_close(x.grad, 1 + torch.ones(37, sizes[0], dtype=x.dtype) @ weight[:sizes[0]])


def test_alias_gradient_in_place_matches():
    """alias_grad_in_place=True (MoMAttention's stream permute, a fresh gradient) gives the same gradients."""
    x, weight, sizes = _inputs(torch.float64)
    grads = []
    for in_place in (False, True):
        xi = x.clone().requires_grad_(True)
        *blocks, x_alias = token_projection(xi, weight, sizes, alias_grad_in_place=in_place)
        (blocks[1].square().sum() + (x_alias * 3).square().sum()).backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1])
