import pytest

from seqembed.compute.backends.esm import PROTEIN_ALPHABET
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
        (">a\nMK1V\n", "line 2: record 'a' has characters outside the alphabet: '1'"),
        # the line of the offending letter, not the record's header
        (">a\nMKV\nMKV\nMK1V\n", "line 4: record 'a' has characters outside the alphabet: '1'"),
        # a stop that ends a line but not the record
        (">a\nMK*\nMKV\n", "line 2: record 'a' has characters outside the alphabet: '*'"),
        (">a\nMK\xe9V\n", "line 2: record 'a' has characters outside the alphabet: '\xe9'"),
        ("MKV\n>a\nMKV\n", "line 1: not FASTA: text before the first '>' header"),
        ("id,score\nA1,0.5\n", "line 1: not FASTA: text before the first '>' header"),
        (">a\n>b\nMKV\n", "line 1: record 'a' has no sequence"),
        (">a\nMKV\n>\nMKV\n", "line 3: header without an id"),
        (">a\nMK*V\n", "line 2: record 'a' has characters outside the alphabet: '*'"),
        (">a\nMKV\x00\x01\n", "line 2: binary content, not a FASTA file"),
        (">a\nMKV\n>b\nAC-GT\n", "line 4: record 'b' has characters outside the alphabet: '-'"),
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
    with pytest.raises(InputError, match="binary content, not a FASTA file"):
        read_fasta(binary, PROTEIN_ALPHABET)
    with pytest.raises(InputError, match="cannot read"):
        read_fasta(tmp_path / "missing.fasta", PROTEIN_ALPHABET)


def test_empty_and_blank_files_hold_zero_sequences(tmp_path):
    for content in ["", "\n\n  \n"]:
        path = tmp_path / "empty.fasta"
        path.write_text(content)
        records = read_fasta(path, PROTEIN_ALPHABET)
        assert records.ids == [] and records.sequences == []
        assert fasta_stats(path).sequences == 0


def test_duplicate_ids_are_kept_in_order(tmp_path):
    path = tmp_path / "dup.fasta"
    path.write_text(">a\nMK\n>a\nMKV\n")
    assert read_fasta(path, PROTEIN_ALPHABET).ids == ["a", "a"]


def test_byte_order_mark_and_latin1_headers_are_read(tmp_path):
    # a file saved by a Windows editor, and a header written by an old tool in Latin-1: only
    # the first word of a header is used, so neither costs the file
    path = tmp_path / "windows.fasta"
    path.write_bytes(b"\xef\xbb\xbf>r1 caf\xe9 au lait\nMKV*\n>r\xe92 x\nLLA\n")
    records = read_fasta(path, PROTEIN_ALPHABET)
    assert records.ids == ["r1", "r\xe92"]
    assert records.sequences == ["MKV", "LLA"]
    assert fasta_stats(path).sequences == 2
