"""Stand-in for Nucleotide Transformer v2's esm_config.py (see ../README.md)."""

from transformers import PretrainedConfig


class EsmConfig(PretrainedConfig):
    model_type = "esm"

    def __init__(
        self,
        vocab_size=None,
        mask_token_id=None,
        pad_token_id=None,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1026,
        layer_norm_eps=1e-12,
        position_embedding_type="rotary",
        add_bias_fnn=True,
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, mask_token_id=mask_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.add_bias_fnn = add_bias_fnn
