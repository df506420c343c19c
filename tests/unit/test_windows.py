"""The windows rule of long sequences (seqembed.compute.windows) against the rule computed
residue by residue over every window, the settings it refuses, and the plan's cost of it."""

import pytest

from seqembed.compute.windows import computed_residues, window_starts, windows_of


def owner_by_brute_force(residue: int, starts: list[int], width: int) -> int:
    distances = [
        min(residue - s, s + width - 1 - residue) if s <= residue < s + width else -1
        for s in starts
    ]
    return distances.index(max(distances))


@pytest.mark.parametrize("width", [8, 9, 50, 1022])
@pytest.mark.parametrize("overlap", [0, 1, 3])
def test_every_residue_comes_from_the_window_the_rule_names(width, overlap):
    for length in [width + 1, width + 2, 2 * width - 1, 2 * width, 3 * width + 7, 5000]:
        windows = windows_of(4, length, width, overlap)
        starts = [w.start for w in windows]
        step = width - overlap
        assert starts[:-1] == list(range(0, length - width, step))
        assert starts[-1] == length - width and all(w.width == width for w in windows)
        covered = []
        for index, window in enumerate(windows):
            first, end = window.owned
            covered += range(first, end)
            for residue in range(first, end):
                assert owner_by_brute_force(residue, starts, width) == index
        assert covered == list(range(length))  # each residue once, in order
    assert window_starts(width, width, overlap) == [0]


def test_the_plan_counts_windows_with_their_overlaps():
    assert computed_residues(1000, 1022, 256) == 1000
    assert computed_residues(1023, 1022, 256) == 2 * 1022
    assert computed_residues(5000, 1022, 256) == 7 * 1022


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"window_overlap": 511}, "window_overlap': 511 residues is not less than half"),
        ({"pooling": "all_tokens"}, "all_tokens averages BOS and EOS in"),
    ],
)
def test_settings_windows_cannot_have_are_refused(settings, message):
    from conftest import REPO

    from seqembed.run.config import ConfigError, validate_config

    config = {"long_sequences": "windows", **settings}
    with pytest.raises(ConfigError, match=message):
        validate_config(config, REPO / "workflow/schemas/config.schema.yaml")
    validate_config(
        {**config, "long_sequences": "truncate"}, REPO / "workflow/schemas/config.schema.yaml"
    )


def test_a_nucleotide_model_refuses_windows_before_the_run(dna_model):
    from conftest import REPO

    from seqembed.run.config import validate_config
    from seqembed.run.preflight import PreflightError, check_hf_model

    config = validate_config(
        {"model": str(dna_model), "long_sequences": "windows"},
        REPO / "workflow/schemas/config.schema.yaml",
    )
    with pytest.raises(PreflightError, match="windows are for protein models"):
        check_hf_model(config)


def test_a_protein_of_exactly_the_window_with_a_stop_is_not_long(tmp_path):
    """Prodigal writes a `*` after every protein, which the jobs drop: a 1,022-residue
    protein with its stop is no long sequence, or a windows run would rerun its file once
    for nothing."""
    from seqembed.run.long_sequences import holds_long_sequence

    fasta = tmp_path / "proteins.faa"
    fasta.write_text(">exact\n" + "M" * 1000 + "\n" + "A" * 22 + "*\n>short\nMKV*\n")
    assert not holds_long_sequence(fasta, tmp_path / "no-record.json", 1022)
    fasta.write_text(">long\n" + "M" * 1023 + "*\n")
    assert holds_long_sequence(fasta, tmp_path / "no-record.json", 1022)


def test_bos_alone_computes_a_long_sequences_first_window_only(tiny_model):
    import random

    from reference import reference_outputs

    from seqembed.compute.backends.esm import EsmBackend
    from seqembed.compute.batch_loop import embed_all
    from seqembed.compute.batching import fixed_budget
    from seqembed.demo import random_protein
    from seqembed.fasta import FastaRecords

    rng = random.Random(3)
    sequences = [random_protein(rng, 3000), random_protein(rng, 200), random_protein(rng, 1500)]
    backend = EsmBackend.load(str(tiny_model), device="cpu", precision="fp32", truncation=1022)
    records = FastaRecords(["a", "b", "c"], sequences)
    result = embed_all(
        backend,
        records,
        [3],
        fixed_budget(4096),
        truncation=1022,
        include=["bos"],
        windows=(1022, 256),
    )
    assert result.windows == 2  # one per long sequence
    # the first window is the sequence's first 1,022 residues, as truncating gives them
    expected = reference_outputs(tiny_model, sequences, [3], 1022)["bos"][3]
    assert (result.pooled["bos"][3] - expected).abs().max().item() <= 1e-5
