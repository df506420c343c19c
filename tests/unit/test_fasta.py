import pytest

from seqembed.backends.esm import PROTEIN_ALPHABET
from seqembed.fasta import InputError, fasta_stats, read_fasta


def test_records_stats_and_lenient_forms(tmp_path):
    path = tmp_path / "reads.faa"
    path.write_text(">r1 frame=+1\nmkv\nLLA*\n\n>r2\nACDEFGHIKLMNPQRSTVWY\n>r3\nX\n")
    records = read_fasta(path, PROTEIN_ALPHABET)
    assert records.ids == ["r1", "r2", "r3"]
    assert records.sequences == ["MKVLLA", "ACDEFGHIKLMNPQRSTVWY", "X"]
    stats = fasta_stats(path)
    assert (stats.sequences, stats.longest, stats.bytes) == (3, 20, path.stat().st_size)
    assert stats.residues == 7 + 20 + 1  # the plan counts raw letters, the stop included


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (">a\nMK1V\n", "line 1: record 'a' has characters outside the alphabet: '1'"),
        ("MKV\n>a\nMKV\n", "line 1: sequence data before any '>' header"),
        (">a\nMKV\n>b\nAC-GT\n", "line 3: record 'b' has characters outside the alphabet: '-'"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.fasta"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        read_fasta(path, PROTEIN_ALPHABET)
    assert str(error.value) == f"{path}: {message}"


def test_binary_and_unreadable_files(tmp_path):
    binary = tmp_path / "reads.fasta.gz"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    with pytest.raises(InputError, match="not a text FASTA file"):
        read_fasta(binary, PROTEIN_ALPHABET)
    with pytest.raises(InputError, match="cannot read"):
        read_fasta(tmp_path / "missing.fasta", PROTEIN_ALPHABET)
