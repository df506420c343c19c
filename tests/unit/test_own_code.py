"""Model code made for transformers 4 (the stand-ins of tests/standins), loaded in this
process: what such code needs from seqembed's loading beyond loading it at all (the workflow
tests run each once through `snakemake` against its own documentation's recipe)."""

import random

import pytest
import torch
from standin_models import write_tiny_esm_plusplus, write_tiny_nt_v2

from seqembed.compute.backends import load_backend
from seqembed.demo import random_protein
from seqembed.demo_hf import random_dna

#: writer, random sequence, longest sequence (NT v2: 6,000 bp, 1,000 6-mers, so positions
#: beyond 256, which bfloat16 no longer numbers exactly)
STANDINS = {
    "nucleotide-transformer-v2": (write_tiny_nt_v2, random_dna, 6000),
    "esm-plusplus": (write_tiny_esm_plusplus, random_protein, 1500),
}


@pytest.mark.parametrize("standin", list(STANDINS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_keeps_rotary_positions_exact(tmp_path, standin, precision):
    """Cast whole, Nucleotide Transformer v2's code would number positions in bfloat16
    (1,000 to 1,002 one number); its frequencies stay float32, the weights are cast, and the
    forward pass runs under autocast. (With its frequencies cast, the stand-in's bfloat16
    error is 4e-2 here; kept float32, 7.6e-3.)"""
    write, random_sequence, longest = STANDINS[standin]
    folder = write(tmp_path / f"{standin}-{precision}")
    rng = random.Random(8)
    sequences = [random_sequence(rng, rng.randint(10, longest)) for _ in range(6)]
    options = {"device": "cpu", "truncation": 100_000, "trust_remote_code": True}
    exact = load_backend(str(folder), precision="fp32", **options)
    half = load_backend(str(folder), precision=precision, **options)
    frequencies = [m.inv_freq for m in half.network.modules() if hasattr(m, "inv_freq")]
    assert frequencies and all(f.dtype == torch.float32 for f in frequencies)
    assert {p.dtype for p in half.network.parameters()} == {half.dtype}
    depth = exact.num_layers
    expected, got = exact.embed(sequences, [depth])[depth], half.embed(sequences, [depth])[depth]
    relative = ((got - expected).norm(dim=1) / expected.norm(dim=1)).max().item()
    assert relative <= 1e-2, relative


def test_what_each_cannot_do_is_refused_before_the_run(tmp_path):
    """per_tok is for protein models, which ESM C is and Nucleotide Transformer v2 is not."""
    from conftest import REPO

    from seqembed.run.config import validate_config
    from seqembed.run.preflight import PreflightError, check_hf_model

    schema = REPO / "workflow/schemas/config.schema.yaml"
    nt = write_tiny_nt_v2(tmp_path / "nt-refusals")
    settings = {"model": str(nt), "trust_remote_code": True, "include": ["per_tok"]}
    with pytest.raises(PreflightError, match="per_tok is written for protein models"):
        check_hf_model(validate_config(settings, schema))
    esm_c = write_tiny_esm_plusplus(tmp_path / "esm-c-refusals")
    settings = {"model": str(esm_c), "trust_remote_code": True, "layers": [0, 1, 2, 3]}
    assert check_hf_model(validate_config({**settings, "include": ["per_tok"]}, schema))
    settings["layers"] = [4]
    with pytest.raises(PreflightError, match="layers"):
        check_hf_model(validate_config(settings, schema))


def test_a_protein_tokenizer_without_an_end_token_is_refused_before_the_run(tmp_path, hf_esm):
    """Read residue by residue, a protein model needs BOS, EOS and padding tokens; without
    them every job would fail alike."""
    import json
    import shutil

    from conftest import REPO

    from seqembed.run.config import validate_config
    from seqembed.run.preflight import PreflightError, check_hf_model

    folder = tmp_path / "no-eos"
    shutil.copytree(hf_esm, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "eos_token": None}))
    (folder / "special_tokens_map.json").unlink(missing_ok=True)
    config = validate_config({"model": str(folder)}, REPO / "workflow/schemas/config.schema.yaml")
    with pytest.raises(PreflightError, match="its tokenizer has no beginning, end or padding"):
        check_hf_model(config)
