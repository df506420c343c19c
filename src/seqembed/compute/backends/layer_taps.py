"""The hidden states of the layers a run asks for, numbered as fair-esm numbers them: 0 is
what enters the first block (the embedding output), i what block i gives, N the model's
output (after ESM's final layer norm).

Taken by hooks on the blocks, not by transformers' `output_hidden_states`: that keeps all
N + 1 layers, and where a model has its own code, the code decides what they hold (ESM++
changed it between versions: its first entry was the first block's output, now it is the
embedding output). A hook sees what the block gives, whatever the version.

A model's own code may keep its blocks' states in another form than one row per token
(DNABERT-2 removes the padding: [tokens of the batch, D]); such layers cannot be read, and
`check_layers_readable` finds out before a run by running the built model once.
"""

from __future__ import annotations

import torch

from seqembed.errors import ModelError


def find_blocks(network, depth: int) -> list:
    """The transformer blocks in order: `encoder.layer` where BERT-like models keep them, else
    the one list of `depth` modules (ESM++'s `transformer.blocks`); none if not found."""
    encoder = getattr(network, "encoder", None)
    blocks = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
    if blocks is None:
        lists = [m for m in network.modules() if isinstance(m, torch.nn.ModuleList)]
        lists = [m for m in lists if len(m) == depth]
        blocks = lists[0] if len(lists) == 1 else None
    return list(blocks) if blocks is not None and len(blocks) == depth else []


def hidden_states(output) -> torch.Tensor:
    """The hidden states of a block's or a model's output (a tensor, a tuple, a ModelOutput)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _entering(args: tuple, kwargs: dict) -> torch.Tensor:
    """What a block is called with: its first tensor argument (ESM++ names it `x`)."""
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise ModelError("a block was called without hidden states")


class LayerTaps:
    """While active, keeps the requested layers' hidden states of one forward pass."""

    def __init__(self, blocks: list, layers: list[int], depth: int):
        self.blocks, self.layers, self.depth = blocks, layers, depth
        self.taken: dict[int, torch.Tensor] = {}
        self._handles = []

    def _keep(self, layer: int):
        return lambda module, inputs, output: self.taken.__setitem__(layer, hidden_states(output))

    def __enter__(self) -> LayerTaps:
        self.taken = {}
        if 0 in self.layers:
            self._handles.append(
                self.blocks[0].register_forward_pre_hook(
                    lambda module, args, kwargs: self.taken.__setitem__(0, _entering(args, kwargs)),
                    with_kwargs=True,
                )
            )
        for layer in self.layers:
            if 0 < layer < self.depth:
                self._handles.append(
                    self.blocks[layer - 1].register_forward_hook(self._keep(layer))
                )
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def representations(self, output, tokens: torch.Tensor, name: str) -> dict:
        """layer -> [B, T, D], the model's output as layer N; a layer the code keeps in another
        form is a ModelError naming it."""
        self.taken[self.depth] = hidden_states(output)
        for layer, values in self.taken.items():
            if layer != self.depth and tuple(values.shape[:2]) != tuple(tokens.shape):
                raise ModelError(
                    f"{name}: layer {layer} cannot be read: the model's own code keeps its "
                    f"layers as {list(values.shape)}, not one row per token (the last layer, "
                    f"{self.depth}, can be)"
                )
        return self.taken


def check_layers_readable(network, layers: list[int], name: str) -> None:
    """Run the built model once on two short sequences, one padded, and read the layers as a
    job would: a ModelError if they cannot be read (weights need not be loaded)."""
    depth = network.config.num_hidden_layers
    if all(layer == depth for layer in layers):
        return
    blocks = find_blocks(network, depth)
    if not blocks:
        raise ModelError(f"{name}: only the last layer ({depth}) can be read: no blocks found")
    tokens = torch.arange(4, 10).remainder(network.config.vocab_size).repeat(2, 1)
    attention = torch.ones_like(tokens)
    attention[1, 4:] = 0
    with torch.inference_mode(), LayerTaps(blocks, layers, depth) as taps:
        output = network(input_ids=tokens, attention_mask=attention)
        taps.representations(output, tokens, name)
