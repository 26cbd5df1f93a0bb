"""Several seeds' copies of one network trained as one computation, and the random streams each
seed draws from.

Streams: every seed has its own generator per purpose, derived from the seed and the purpose's
name alone: the weights a network starts from, the order of the training batches, and the noise
of training and of the fixed samples a model is scored on. One seed then gives the same batch
order in every configuration (latent_dim changes the weights' shapes, not the order) and the same
noise wherever the shapes agree, so a paired comparison across configurations shares what it can.

Stacks: S copies of a module with one architecture become one set of parameters with a leading
seed dimension. Linear layers become one batched matmul over the seeds (StackedLinear), inside a
copy of the module whose own forward code runs unchanged; a module with other weighted layers
(convolutions) runs through `torch.func.vmap` over `functional_call`. One optimiser steps the
stacked parameters, on the sum of the seeds' losses, never their mean, so each seed's gradient is
its own; Adam is elementwise, so each seed's update is the one it gets alone. Each copy starts
from the weights the module is built with, drawn as for a seed trained alone.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

# What a seed's streams are for. The name is part of every result: it fixes the numbers drawn.
PURPOSES = ("weights", "batches", "noise", "samples")


def stream_seed(seed: int, purpose: str) -> int:
    """The seed of `seed`'s generator for `purpose` (one of PURPOSES, optionally with a qualifier
    such as "gan/weights"), a 63-bit integer: independent of every other purpose's."""
    if purpose.split("/")[-1] not in PURPOSES:
        raise ValueError(f"unknown stream purpose {purpose!r}; known: {', '.join(PURPOSES)}")
    digest = hashlib.sha256(f"{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def stream(seed: int, purpose: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A new generator on `device` for `seed`'s `purpose` (stream_seed)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose))


def build_seeded(build: Callable[[], nn.Module], seed: int, purpose: str = "weights") -> nn.Module:
    """`build()` with its weights drawn from `seed`'s stream for `purpose`: PyTorch's layers draw
    their initial weights from the global generator, which is seeded for the call and restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, purpose))
        return build()


class StackedLinear(nn.Module):
    """S linear layers as one: x (S, ..., in) -> (S, ..., out) with one batched matmul
    (torch.baddbmm), each seed's rows through its own weights. The weights are held transposed,
    `weight_t` (S, in, out), so that neither the product nor its gradient copies them; bias (S, out)."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        self.weight_t = nn.Parameter(torch.stack([layer.weight.detach().t() for layer in layers]).contiguous())
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (S, N, in)
        out = torch.baddbmm(self.bias.unsqueeze(1), rows, self.weight_t)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def seed_state(self, index: int) -> dict[str, torch.Tensor]:
        """Seed `index`'s layer as an nn.Linear's state_dict."""
        return {"weight": self.weight_t[index].detach().t().clone(), "bias": self.bias[index].detach().clone()}


# Layers that act on each image alone, whatever leads its dimensions: they apply to (S, B, ...) as is.
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity)


def _stacked_layer(layers: list[nn.Module]) -> nn.Module | None:
    """One layer of the seeds' copies (the same layer of each) as a layer taking a leading seed
    dimension, or None when it has no such form here (a convolution: the stack then uses vmap)."""
    first = layers[0]
    if type(first) is nn.Linear:
        return StackedLinear(layers)
    if isinstance(first, _ELEMENTWISE):
        return first
    if type(first) is nn.Flatten:
        return nn.Flatten(first.start_dim + 1 if first.start_dim >= 0 else first.start_dim, first.end_dim)
    if type(first) is nn.Unflatten:
        return nn.Unflatten(first.dim + 1 if first.dim >= 0 else first.dim, first.unflattened_size)
    return None


def _stack_children(stacked: nn.Module, modules: Sequence[nn.Module]) -> bool:
    """Replace, in `stacked` (a copy of modules[0]), every layer by its stacked form holding each
    seed's weights; False when one has none (the copy is then of no use)."""
    for name, child in modules[0].named_children():
        siblings = [getattr(module, name) for module in modules]
        if list(child.children()):
            if any(True for _ in child.parameters(recurse=False)) or not _stack_children(getattr(stacked, name),
                                                                                          siblings):
                return False
            continue
        layer = _stacked_layer(siblings)
        if layer is None:
            return False
        setattr(stacked, name, layer)
    return True


def _stacked_module(modules: Sequence[nn.Module]) -> nn.Module | None:
    """A copy of modules[0] whose every layer takes a leading seed dimension, holding each seed's
    weights; None when a layer has no stacked form, or a module weights of its own besides its layers."""
    if any(True for _ in modules[0].parameters(recurse=False)):
        return None
    stacked = copy.deepcopy(modules[0])
    return stacked if _stack_children(stacked, modules) else None


class Stack:
    """S modules of one architecture as one: `params` maps each parameter's name to a leaf tensor
    (S, *shape) that an optimiser steps; calling the stack maps inputs with a leading seed
    dimension (S, B, ...) to outputs (S, B, ...), each seed's through its own weights.

    Networks of linear layers (the MLP architecture) run as a copy of the module whose linear layers
    are batched matmuls over the seeds (StackedLinear), its own forward code unchanged; others
    (convolutions) through `torch.func.vmap` over `functional_call`, whose per-call overhead the
    batched matmuls avoid (docs/benchmarks.md)."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.size = len(modules)
        self._native = _stacked_module(modules)
        if self._native is not None:
            self.params = dict(self._native.named_parameters())
            self.buffers = dict(self._native.named_buffers())
            return
        params, buffers = stack_module_state(list(modules))
        self.params, self.buffers = params, buffers
        base = copy.deepcopy(modules[0]).to("meta")  # the architecture, without storage

        def one(params, buffers, *inputs):
            return functional_call(base, (params, buffers), inputs)

        self._call = vmap(one)

    def __call__(self, *inputs: torch.Tensor):
        if self._native is not None:
            return self._native(*inputs)
        return self._call(self.params, self.buffers, *inputs)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within: the stack's parameters need no gradient, so a graph built through it (a GAN
        generator's loss through the discriminators) computes the inputs' gradients alone, the
        same numbers, without the weight gradients that would be thrown away."""
        for value in self.params.values():
            value.requires_grad_(False)
        try:
            yield
        finally:
            for value in self.params.values():
                value.requires_grad_(True)

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Seed `index`'s weights, as its own module's state_dict (detached copies)."""
        if self._native is None:
            return {name: value[index].detach().clone() for name, value in (self.params | self.buffers).items()}
        state = {}
        for path, module in self._native.named_modules():
            if isinstance(module, StackedLinear):
                state |= {f"{path}.{name}": value for name, value in module.seed_state(index).items()}
        return state

    def load_into(self, index: int, module: nn.Module) -> nn.Module:
        """`module` with seed `index`'s current weights; returns it."""
        module.load_state_dict(self.state_dict(index))
        return module
