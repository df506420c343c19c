"""Models that ship their own code (`trust_remote_code`), as their authors wrote it for
transformers 4, run on transformers 5.

Checked with DNABERT-S's and DNABERT-2's own files (docs/benchmarks.md, "Models run with their
own code"):

- **Built on the CPU, not on the meta device.** transformers 5 builds every model on the meta
  device and fills in the weights afterwards. Code that makes tensors in `__init__` from
  Python lists (DNABERT-2's ALiBi slopes, `torch.Tensor(list)`, on the CPU) and mixes them
  with factory calls that the meta device catches (`torch.arange`) fails there ("Tensor on
  device meta is not on the expected device cpu"), and a tensor kept as a plain attribute
  rather than a buffer would never be filled in anyway. So these models are built as
  transformers 4 built them: the meta device is left out of the init context while they
  load, and the non-persistent buffers their code computed are kept (ESM++'s and Nucleotide
  Transformer v2's rotary frequencies, position ids), which transformers 5 would replace with
  uninitialised memory; nothing else of transformers' loading changes.
- **Loaded in float32, then cast; half precision under autocast.** Such code keeps its own
  float32 islands (DNABERT-2 casts its attention bias, mask plus ALiBi, to float32 and so
  multiplies float32 probabilities by half-precision values). Built in half precision its
  plain-attribute tables are computed in half precision too (DNABERT-2's ALiBi off by up to
  1.7); built in float32 they stay exact, the weights are cast, and the forward pass runs
  under autocast in the weights' dtype, which puts every matmul in half precision as the
  code's authors ran it under mixed precision.
- **No Triton kernel.** DNABERT-2/-S's code calls a Triton flash-attention kernel whenever
  Triton imports (it does beside every CUDA build of torch), and that kernel fails on current
  Triton (`dot() got an unexpected keyword argument 'trans_b'`, MAGICS-LAB/DNABERT_S#19; on
  the CPU a bare `assert q.is_cuda`). The code falls back to plain PyTorch attention when the
  kernel is None: it is made so.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch


@contextlib.contextmanager
def built_on_the_cpu():
    """While it is active, transformers builds models with real tensors on the CPU (its own
    init context less the meta device), as transformers 4 did, and keeps the non-persistent
    buffers their code computed: transformers 5 replaces every one of them with uninitialised
    memory after loading (`_move_missing_keys_from_meta_to_device`) and counts on its own
    classes' `_init_weights` to fill them again, which code made for transformers 4 does not
    (rotary frequencies, position ids: the outputs would be silently wrong)."""
    from transformers import PreTrainedModel

    init_context = PreTrainedModel.__dict__["get_init_context"]
    move_from_meta = PreTrainedModel.__dict__["_move_missing_keys_from_meta_to_device"]

    def get_init_context(cls, *args, **kwargs):
        contexts = init_context.__func__(cls, *args, **kwargs)
        return [c for c in contexts if not (isinstance(c, torch.device) and c.type == "meta")]

    def keep_computed_buffers(self, *args, **kwargs):
        computed = {
            name: buffer.detach().clone()
            for name, buffer in self.named_non_persistent_buffers()
            if buffer.device.type != "meta"
        }
        move_from_meta(self, *args, **kwargs)
        for name, value in computed.items():
            owner, _, attribute = name.rpartition(".")
            module = self.get_submodule(owner) if owner else self
            module._buffers[attribute] = value.to(module._buffers[attribute].device)

    PreTrainedModel.get_init_context = classmethod(get_init_context)
    PreTrainedModel._move_missing_keys_from_meta_to_device = keep_computed_buffers
    try:
        yield
    finally:
        PreTrainedModel.get_init_context = init_context
        PreTrainedModel._move_missing_keys_from_meta_to_device = move_from_meta


def without_triton_kernels(network) -> None:
    """The model's own modules with their Triton kernel unbound (see the module's doc)."""
    for module_name in {type(module).__module__ for module in network.modules()}:
        module = sys.modules.get(module_name)
        if getattr(module, "flash_attn_qkvpacked_func", None) is not None:
            module.flash_attn_qkvpacked_func = None


def load_own_code(folder: Path, dtype, options: dict):
    """The network of a model folder with its own code: built on the CPU in float32, then cast
    to `dtype` (plain-attribute tables stay float32)."""
    from transformers import AutoModel

    with built_on_the_cpu():
        network = AutoModel.from_pretrained(folder, dtype=torch.float32, **options)
    without_triton_kernels(network)
    return network.to(dtype)


def build_without_weights(folder: Path) -> None:
    """Build the model from its config as load_own_code does, without reading weights (the
    pre-flight: a model whose code cannot be built stops the run once, not in every job)."""
    from transformers import AutoConfig, AutoModel
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    with built_on_the_cpu(), no_init_weights():
        AutoModel.from_config(config, trust_remote_code=True, dtype=torch.float32)


def autocast_for(device: torch.device, dtype):
    """Half precision for code that mixes float32 into its matmuls; nothing in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
