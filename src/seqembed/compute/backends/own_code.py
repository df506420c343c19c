"""Models that ship their own code (`trust_remote_code`), as their authors wrote it for
transformers 4, run on transformers 5.

Checked with the real code of DNABERT-S and DNABERT-2, of Nucleotide Transformer v2 (as far as
public copies rebuild it) and of ESM++ (ESM C), each with random weights of its real shape
(docs/benchmarks.md, "Models run with their own code"):

- **Built on the CPU, not on the meta device.** transformers 5 builds every model on the meta
  device and fills in the weights afterwards. Code that makes tensors in `__init__` from
  Python lists (DNABERT-2's ALiBi slopes, `torch.Tensor(list)`, on the CPU) and mixes them
  with factory calls that the meta device catches (`torch.arange`) fails there ("Tensor on
  device meta is not on the expected device cpu"), and a tensor kept as a plain attribute
  rather than a buffer would never be filled in anyway. So these models are built as
  transformers 4 built them: the meta device is left out of the init context while they
  load, and the non-persistent buffers their code computed are kept (rotary frequencies,
  position ids), which transformers 5 would replace with uninitialised memory.
- **What transformers 5 took away, given back where such code calls it.** Nucleotide
  Transformer v2's code (transformers 4's ESM, changed) imports a head-pruning helper,
  reads `config.is_decoder`, ends `__init__` with `init_weights()` (not `post_init()`, which
  transformers 5 relies on), and calls `get_extended_attention_mask`/`get_head_mask`; each is
  given back in transformers 4's meaning for an encoder, nothing more. Its config names no
  `AutoModel`, and `AutoModel` would then build transformers' own `EsmModel` from the
  config's model type, a different network: the class is taken from the code's own
  `auto_map` (its bare model, else the base model of its masked-LM class).
- **Loaded in float32, then cast; half precision under autocast.** Such code keeps its own
  float32 islands (DNABERT-2 casts its attention bias, mask plus ALiBi, to float32 and so
  multiplies float32 probabilities by half-precision values). Built in float32 its
  plain-attribute tables stay exact; the model is cast but for its rotary frequencies
  (`inv_freq`, float32: Nucleotide Transformer v2 numbers positions in their dtype, and in
  bfloat16 positions 1,000 to 1,002 are one number), and the forward pass runs under
  autocast in the weights' dtype, which puts every matmul in half precision as the code's
  authors ran it.
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

#: config attributes transformers 4 gave every model and transformers 5 dropped, read by
#: code made for 4 (an encoder's values)
TRANSFORMERS4_CONFIG = {"is_decoder": False, "add_cross_attention": False, "pruned_heads": {}}


def _not_pruning(*args, **kwargs):
    raise NotImplementedError("head pruning: seqembed never prunes a model's heads")


def _init_weights_with_tied_keys(original):
    """transformers 5's init_weights reads the tied-weights map that post_init() computes;
    code made for 4 calls init_weights() without post_init()."""

    def init_weights(self):
        if "all_tied_weights_keys" not in self.__dict__:
            self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=False)
        original(self)

    return init_weights


def _keep_computed_buffers(move_from_meta):
    def move_missing_keys(self, *args, **kwargs):
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

    return move_missing_keys


@contextlib.contextmanager
def as_transformers4_built_it():
    """While it is active, transformers builds models with real tensors on the CPU (its own
    init context less the meta device), keeps the non-persistent buffers their code computed
    (transformers 5 replaces them with uninitialised memory after loading and counts on its
    own classes' `_init_weights` to fill them again), lets `init_weights()` run without
    `post_init()`, and has the names code made for 4 imports (see the module's doc)."""
    import transformers.modeling_utils as modeling_utils
    from transformers import PreTrainedModel

    init_context = PreTrainedModel.__dict__["get_init_context"]

    def get_init_context(cls, *args, **kwargs):
        contexts = init_context.__func__(cls, *args, **kwargs)
        return [c for c in contexts if not (isinstance(c, torch.device) and c.type == "meta")]

    replaced = [
        (PreTrainedModel, "get_init_context", classmethod(get_init_context)),
        (
            PreTrainedModel,
            "_move_missing_keys_from_meta_to_device",
            _keep_computed_buffers(PreTrainedModel._move_missing_keys_from_meta_to_device),
        ),
        (
            PreTrainedModel,
            "init_weights",
            _init_weights_with_tied_keys(PreTrainedModel.init_weights),
        ),
    ]
    for name in ("find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(modeling_utils, name):
            replaced.append((modeling_utils, name, _not_pruning))
    before = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in replaced]
    for owner, name, value in replaced:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in before:
            if value is None:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def _extended_attention_mask(self, attention_mask, input_shape=None, device=None, dtype=None):
    """transformers 4's, for an encoder: 0 where attended, the dtype's minimum elsewhere."""
    dtype = dtype or self.dtype
    if attention_mask.dim() == 2:
        mask = attention_mask[:, None, None, :]
    else:
        mask = attention_mask[:, None, :, :]
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


def _inverted_attention_mask(self, encoder_attention_mask):
    return _extended_attention_mask(self, encoder_attention_mask)


def _head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
    if head_mask is not None:
        raise NotImplementedError("head masks: seqembed never masks a model's heads")
    return [None] * num_hidden_layers


TRANSFORMERS4_METHODS = {
    "get_extended_attention_mask": _extended_attention_mask,
    "invert_attention_mask": _inverted_attention_mask,
    "get_head_mask": _head_mask,
}


def with_transformers4_methods(network) -> None:
    """The model's own classes given the attention-mask methods transformers 5 removed, where
    they lack them (they are called in the forward pass, after loading)."""
    from transformers import PreTrainedModel

    for cls in {type(module) for module in network.modules()}:
        for name, method in TRANSFORMERS4_METHODS.items():
            if issubclass(cls, PreTrainedModel) and not hasattr(cls, name):
                setattr(cls, name, method)


def without_triton_kernels(network) -> None:
    """The model's own modules with their Triton kernel unbound (see the module's doc)."""
    for module_name in {type(module).__module__ for module in network.modules()}:
        module = sys.modules.get(module_name)
        if getattr(module, "flash_attn_qkvpacked_func", None) is not None:
            module.flash_attn_qkvpacked_func = None


def own_config(folder: Path):
    """The model's config through its own config class, with transformers 4's defaults."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    for name, value in TRANSFORMERS4_CONFIG.items():
        if not hasattr(config, name):
            setattr(config, name, value)
    return config


def own_model_class(folder: Path, config):
    """The class the code's auto_map names for the bare model, else its masked-LM class."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = getattr(config, "auto_map", None) or {}
    reference = auto_map.get("AutoModel") or auto_map.get("AutoModelForMaskedLM")
    if isinstance(reference, (list, tuple)):
        reference = reference[0]
    return get_class_from_dynamic_module(reference, folder, local_files_only=True)


def _ready(model, dtype):
    """The bare network of a loaded model, given what its code calls, in `dtype`."""
    network = model.base_model
    with_transformers4_methods(network)
    without_triton_kernels(network)
    # rotary frequencies stay float32 (see the module's doc); other buffers take the dtype, as
    # code that scales activations by a buffer before a layer norm needs
    frequencies = [m for m in network.modules() if m._buffers.get("inv_freq") is not None]
    kept = [module._buffers["inv_freq"] for module in frequencies]
    network.to(dtype)
    for module, values in zip(frequencies, kept, strict=True):
        module._buffers["inv_freq"] = values
    return network


def load_own_code(folder: Path, dtype):
    """The network of a model folder with its own code, built on the CPU in float32, its
    parameters then cast to `dtype`; and the tokenizer its code makes, if it makes one (ESM++
    builds its own, as its README uses it), else None."""
    config = own_config(folder)
    with as_transformers4_built_it():
        model_class = own_model_class(folder, config)  # its import needs the names too
        model = model_class.from_pretrained(
            folder, config=config, dtype=torch.float32, local_files_only=True
        )
    return _ready(model, dtype), _own_tokenizer(model)


def _own_tokenizer(model):
    """The tokenizer the model's code makes (ESM++'s model.tokenizer), or None."""
    from transformers import PreTrainedTokenizerBase

    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else None


def build_without_weights(folder: Path):
    """The network built from its config as load_own_code builds it, without reading weights
    (the pre-flight: a model whose code cannot be built stops the run once, not in every job),
    and the tokenizer its code makes, if any."""
    from transformers.initialization import no_init_weights

    config = own_config(folder)
    with as_transformers4_built_it(), no_init_weights():
        model_class = own_model_class(folder, config)
        model = model_class._from_config(config, dtype=torch.float32)
    return _ready(model, torch.float32), _own_tokenizer(model)


def autocast_for(device: torch.device, dtype):
    """Half precision for code that mixes float32 into its matmuls; nothing in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
