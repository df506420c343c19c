"""Models in Hugging Face format, built here with transformers' own classes: ESM-2 through
transformers equal to the fair-esm backend on the same weights, a byte-pair DNA model equal
to transformers called directly one sequence at a time, and the ways a model folder fails."""

import contextlib
import gzip
import random
import shutil

import pytest
import torch
from reference import recipe_network, reference_outputs
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from seqembed.compute.backends import DNA_ALPHABET, PROTEIN_ALPHABET, alphabet_for, load_backend
from seqembed.compute.backends.esm import EsmBackend
from seqembed.compute.batch_loop import embed_all
from seqembed.compute.batching import fixed_budget
from seqembed.demo import random_protein
from seqembed.demo_hf import random_dna, write_tiny_dna_model
from seqembed.errors import InputError, ModelError
from seqembed.fasta import FastaRecords, read_fasta

LAYERS = [0, 1, 2, 3]


def proteins() -> list[str]:
    rng = random.Random(4)
    return [random_protein(rng, rng.randint(5, 300)) for _ in range(20)] + ["M" * 1100]


def nucleotides() -> list[str]:
    rng = random.Random(5)
    return [random_dna(rng, rng.randint(10, 600)) for _ in range(20)] + ["ACGTNNNNNNACGT"]


def test_esm2_through_transformers_equals_the_fair_esm_backend(hf_esm, tiny_model):
    hf = load_backend(str(hf_esm), device="cpu", precision="fp32", truncation=1022)
    esm = EsmBackend.load(str(tiny_model), device="cpu", precision="fp32", truncation=1022)
    assert (hf.name, hf.num_layers, hf.embed_dim, hf.pooling) == ("tiny-esm2", 3, 32, "residues")
    assert hf.alphabet == PROTEIN_ALPHABET and alphabet_for(str(hf_esm)) == PROTEIN_ALPHABET
    # on the CPU both compute through packed products, in batches padded to 16 positions
    assert hf.packed and esm.packed
    sequences = proteins()
    assert hf.token_counts(sequences) == esm.token_counts(sequences)
    kinds = ("mean", "bos", "per_tok")
    got = hf.forward(hf.prepare(sequences), LAYERS, kinds)
    expected = esm.forward(esm.prepare(sequences), LAYERS, kinds)
    for kind in kinds:
        for layer in LAYERS:
            difference = (got[kind][layer] - expected[kind][layer]).abs().max().item()
            assert difference <= 1e-5, (kind, layer, difference)
    # and the last layer against fair-esm's own forward pass, one sequence at a time
    reference = reference_outputs(tiny_model, sequences, [3], 1022)
    assert (got["mean"][3] - reference["mean"][3]).abs().max().item() <= 1e-5


def direct(folder, sequences, trust=False, residues_only=False):
    """transformers called directly, one sequence at a time, no padding."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    network = recipe_network(folder, trust)
    rows = []
    with torch.no_grad():
        for sequence in sequences:
            hidden = network(tokenizer(sequence, return_tensors="pt")["input_ids"])[0][0]
            rows.append(hidden[1:-1].mean(0) if residues_only else hidden.mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("fixture", ["dna_model", "dna_remote"])
def test_dna_model_equals_transformers_one_sequence_at_a_time(fixture, request):
    folder = request.getfixturevalue(fixture)
    trust = fixture == "dna_remote"
    sequences = nucleotides()
    backend = load_backend(
        str(folder), device="cpu", precision="fp32", truncation=1022, trust_remote_code=trust
    )
    assert backend.alphabet == DNA_ALPHABET and backend.pooling == "all_tokens"
    assert alphabet_for(str(folder)) == DNA_ALPHABET
    # transformers' own classes are packed on the CPU; a model's own code keeps its layers
    assert backend.packed != trust
    # batches are sized by what the model sees: byte-pair tokens, not letters
    counts = backend.token_counts(sequences)
    assert counts == [len(AutoTokenizer.from_pretrained(folder)(s)["input_ids"]) for s in sequences]
    assert sum(counts) < 0.6 * sum(map(len, sequences))
    records = FastaRecords([f"n{i}" for i in range(len(sequences))], sequences)
    result = embed_all(backend, records, [2], fixed_budget(600), truncation=1022)
    assert result.batches > 1 and result.real_tokens == sum(counts)
    expected = direct(folder, sequences, trust)
    assert (result.pooled["mean"][2] - expected).abs().max().item() <= 1e-5

    residues = load_backend(
        str(folder),
        device="cpu",
        precision="fp32",
        truncation=1022,
        trust_remote_code=trust,
        pooling="residues",
    )
    got = residues.embed(sequences, [2])[2]
    assert (got - direct(folder, sequences, trust, residues_only=True)).abs().max() <= 1e-5


def test_dna_layers_are_numbered_as_for_esm(dna_model):
    backend = load_backend(str(dna_model), device="cpu", precision="fp32", truncation=1022)
    network = AutoModel.from_pretrained(dna_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(dna_model)
    sequence = nucleotides()[3]
    with torch.no_grad():
        hidden = network(**tokenizer(sequence, return_tensors="pt"), output_hidden_states=True)
    got = backend.embed([sequence], [0, 1, 2])
    for layer in (0, 1, 2):
        expected = hidden.hidden_states[layer][0].mean(0)
        assert (got[layer][0] - expected).abs().max().item() <= 1e-5
    with pytest.raises(ModelError, match="layer 3 does not exist"):
        backend.resolve_layers([3])


def test_model_code_runs_only_when_trusted(dna_remote):
    with pytest.raises(ModelError) as error:
        load_backend(str(dna_remote), device="cpu", precision="fp32", truncation=1022)
    assert "ships its own code (modeling_tinydna.TinyDnaModel): set trust_remote_code" in str(
        error.value
    )
    backend = load_backend(
        str(dna_remote), device="cpu", precision="fp32", truncation=1022, trust_remote_code=True
    )
    # DNABERT-2's code unpads inside its encoder: its blocks keep no row per token
    with pytest.raises(ModelError, match="layer 1 cannot be read: the model's own code keeps"):
        backend.embed(nucleotides()[:2], [1, 2])
    assert backend.embed(nucleotides()[:2], [2])[2].shape == (2, 32)


def test_the_failing_triton_kernel_of_dnabert_code_is_not_called(tmp_path):
    # a folder of its own name: transformers keeps a model's code module by the folder's name,
    # and the other tests' loads have already cleared the kernel in theirs
    dna_remote = write_tiny_dna_model(tmp_path / "kernel-check", remote_code=True)
    config = AutoConfig.from_pretrained(dna_remote, trust_remote_code=True)
    network = AutoModel.from_config(config, trust_remote_code=True).eval()  # kernel bound
    tokens = AutoTokenizer.from_pretrained(dna_remote)("ACGTACGT", return_tensors="pt")
    with pytest.raises(TypeError, match="trans_b"):
        network(tokens["input_ids"])
    backend = load_backend(
        str(dna_remote), device="cpu", precision="fp32", truncation=1022, trust_remote_code=True
    )
    assert backend.embed(["ACGTACGT"], [2])[2].shape == (1, 32)


def cached_hub(folder, cache, repo="tiny-org/tiny-esm2"):
    """A hub id in a Hugging Face cache as `hf download` leaves it: refs/main naming a
    snapshot folder."""
    owner, name = repo.split("/")
    root = cache / f"models--{owner}--{name}"
    commit = "0" * 40
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return repo


def test_a_hub_id_is_read_from_the_cache_and_never_downloaded(hf_esm, tmp_path, monkeypatch):
    repo = cached_hub(hf_esm, tmp_path / "hub")
    backend = load_backend(
        repo, device="cpu", precision="fp32", truncation=1022, model_cache=str(tmp_path / "hub")
    )
    assert backend.name == repo
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelError) as error:
        load_backend("facebook/esm2_t6_8M_UR50D", device="cpu", precision="fp32", truncation=1)
    assert str(error.value) == (
        f"model facebook/esm2_t6_8M_UR50D is not in the Hugging Face cache {tmp_path / 'empty'}, "
        "and jobs never download: fill it where there is internet with `hf download "
        f"facebook/esm2_t6_8M_UR50D` (HF_HUB_CACHE={tmp_path / 'empty'}), or set model to a "
        "local model folder"
    )


def test_nucleotide_input_is_checked_against_acgtn(tmp_path):
    path = tmp_path / "reads.fna"
    path.write_text(">r1\nacgtn\nACGT\n>r2\nACGU\n")
    with pytest.raises(InputError) as error:
        read_fasta(path, DNA_ALPHABET, trailing_stop=False)
    assert (
        str(error.value) == f"{path}: line 5: record 'r2' has characters outside the alphabet: 'U'"
    )
    path.write_text(">r1\nacgtn*\n")
    with pytest.raises(InputError, match="line 2: record 'r1' has characters outside"):
        read_fasta(path, DNA_ALPHABET, trailing_stop=False)
    path.write_text(">r1\nacgtn\n")
    assert read_fasta(path, DNA_ALPHABET, trailing_stop=False).sequences == ["ACGTN"]


def test_all_tokens_pooling_in_both_backends_is_transformers_mean_over_every_token(
    hf_esm, tiny_model
):
    sequences = proteins()[:6]
    options = {"device": "cpu", "precision": "fp32", "truncation": 1022, "pooling": "all_tokens"}
    through_hf = load_backend(str(hf_esm), **options).embed(sequences, [3])[3]
    through_fair_esm = load_backend(str(tiny_model), **options).embed(sequences, [3])[3]
    expected = direct(hf_esm, sequences)  # BOS and EOS included
    assert (through_hf - expected).abs().max().item() <= 1e-5
    assert (through_fair_esm - expected).abs().max().item() <= 1e-5
    residues = load_backend(str(tiny_model), device="cpu", precision="fp32", truncation=1022)
    assert (residues.embed(sequences, [3])[3] - expected).abs().max().item() > 1e-3


def test_the_plan_counts_the_tokens_the_model_sees(dna_model, hf_esm, tiny_model, tmp_path):
    from seqembed.run.tokens import token_counter

    sequences = nucleotides()
    path = tmp_path / "reads.fna.gz"
    path.write_bytes(
        gzip.compress("".join(f">r{i}\n{s}\n" for i, s in enumerate(sequences)).encode())
    )
    config = {"model": str(dna_model), "model_cache": None, "truncation": 1022}
    backend = load_backend(str(dna_model), device="cpu", precision="fp32", truncation=1022)
    assert token_counter(config)(str(path)) == sum(backend.token_counts(sequences))
    # protein models: the plan counts residues
    assert token_counter({**config, "model": str(hf_esm)}) is None
    assert token_counter({**config, "model": str(tiny_model)}) is None


def test_an_unreadable_model_folder_is_an_error_naming_it(tmp_path):
    from seqembed.compute.hf_models import model_config
    from seqembed.errors import ReadError

    (tmp_path / "config.json").mkdir()  # read fails with an OS error (EISDIR): retried
    with pytest.raises(ReadError, match="cannot read .*config.json"):
        model_config(tmp_path)
    (tmp_path / "config.json").rmdir()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="config.json is not valid JSON"):
        model_config(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("trust", "ships its own code (modeling_tinydna.TinyDnaModel): set trust_remote_code"),
        ("per_tok", "config key 'include': per_tok is written for protein models"),
        ("imports", "imports not_installed_here, not installed here: pip install not_installed"),
        ("layers", "config key 'layers': {folder}: layer 1 cannot be read: the model's own code"),
        ("code", "names its code modeling_tinydna.py, which is missing"),
        ("builds", "cannot be built from {folder}: RuntimeError: made for another transformers"),
    ],
)
def test_the_pre_flight_refuses_what_the_model_cannot_do(tmp_path, dna_remote, damage, message):
    from conftest import REPO

    from seqembed.run.config import validate_config
    from seqembed.run.preflight import PreflightError, check_hf_model

    folder = tmp_path / "model"
    shutil.copytree(dna_remote, folder)
    settings = {"model": str(folder), "trust_remote_code": True}
    if damage == "trust":
        settings["trust_remote_code"] = False
    elif damage == "per_tok":
        settings["include"] = ["mean", "per_tok"]
    elif damage == "imports":
        with open(folder / "modeling_tinydna.py", "a") as code:
            code.write("\nimport not_installed_here\n")
    elif damage == "layers":
        settings["layers"] = [1, 2]
    elif damage == "builds":  # found only by building it, as the workers would
        with open(folder / "modeling_tinydna.py", "a") as code:
            code.write(
                "\ndef _refuse(self, size, device=None):\n"
                "    raise RuntimeError('made for another transformers')\n\n\n"
                "TinyDnaEncoder.alibi_table = _refuse\n"
            )
    else:
        (folder / "modeling_tinydna.py").unlink()
    config = validate_config(settings, REPO / "workflow/schemas/config.schema.yaml")
    with pytest.raises(PreflightError) as error:
        check_hf_model(config)
    assert message.format(folder=folder) in str(error.value) and "\n" not in str(error.value)
    good = validate_config(
        {"model": str(dna_remote), "trust_remote_code": True},
        REPO / "workflow/schemas/config.schema.yaml",
    )
    assert check_hf_model(good) == str(dna_remote)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_own_code_that_mixes_float32_into_attention_runs_in_half_precision(dna_remote, precision):
    """The stand-in, as DNABERT-2's code, adds a float32 bias (padding plus ALiBi) in its
    attention: with half-precision weights alone its matmul fails ("expected m1 and m2 to have
    the same dtype"). Built in float32 and run under autocast it works, and its ALiBi table
    (a plain attribute) stays exact."""
    sequences = nucleotides()
    exact = load_backend(
        str(dna_remote), device="cpu", precision="fp32", truncation=1022, trust_remote_code=True
    )
    half = load_backend(
        str(dna_remote), device="cpu", precision=precision, truncation=1022,
        trust_remote_code=True,
    )  # fmt: skip
    assert half.network.word_embeddings.weight.dtype == half.dtype != torch.float32
    assert half.network.encoder.alibi.dtype == torch.float32
    expected, got = exact.embed(sequences, [2])[2], half.embed(sequences, [2])[2]
    relative = ((got - expected).norm(dim=1) / expected.norm(dim=1)).max().item()
    assert relative <= 1e-2, relative
    # without autocast, the model's own code fails as DNABERT-2's does
    half.autocast = contextlib.nullcontext()
    with pytest.raises(RuntimeError, match="expected m1 and m2 to have the same dtype"):
        half.embed(sequences[:2], [2])


def test_nucleotide_transformer_v1_equals_its_model_cards_recipe_and_cuts_at_its_positions(
    tmp_path,
):
    """InstaDeep's v1 folders: transformers' ESM with learned positions and a 6-mer
    tokenizer. The card pads to a fixed length and averages the last hidden state over the
    attention mask (<cls> included: all_tokens, the default for nucleotide models). ESM
    numbers positions from padding_idx + 1: 34 positions take 32 tokens, and a longer read is
    cut there instead of failing."""
    from seqembed.demo_hf import write_tiny_nt_v1

    folder = write_tiny_nt_v1(tmp_path / "nt-v1", max_positions=34)
    backend = load_backend(str(folder), device="cpu", precision="fp32", truncation=100_000)
    assert not backend.protein and backend.max_tokens == 32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    network = AutoModelForMaskedLM.from_pretrained(folder).eval()
    reads = [random_dna(random.Random(seed), 20 + 13 * seed) for seed in range(8)]
    got = backend.embed(reads, [2])[2]
    with torch.no_grad():
        for read, row in zip(reads, got, strict=True):
            encoded = tokenizer([read], return_tensors="pt", padding="max_length", max_length=32)
            out = network(**encoded, output_hidden_states=True)
            mask = encoded["attention_mask"].unsqueeze(-1)
            expected = (out.hidden_states[-1] * mask).sum(1)[0] / mask.sum()
            assert (row - expected).abs().max().item() <= 1e-5
    long_read = random_dna(random.Random(99), 600)  # 100 6-mers
    assert backend.token_counts([long_read]) == [32]
    assert backend.embed([long_read], [2])[2].shape == (1, 32)
