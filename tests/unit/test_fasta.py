import dataclasses
import gzip
import subprocess
import zlib

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
    binary = tmp_path / "reads.fasta"
    binary.write_bytes(b"\x00\x01\x02\xff\xfe")
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


RECORDS = ">r1 x\nMKV\nLLA\n\n>r2\nACDE*\n" + "".join(
    f">s{i}\n{'ACDEFGHIKLMNPQRSTVWY' * (i % 7 + 1)}\n" for i in range(5000)
)


def test_gzip_and_bgzip_style_files_read_like_plain_ones(tmp_path):
    plain = tmp_path / "reads.faa"
    plain.write_text(RECORDS)
    whole = tmp_path / "whole.faa.gz"
    whole.write_bytes(gzip.compress(RECORDS.encode()))
    # bgzip writes many gzip members, each a block of at most 64 KiB; the standard gzip tool
    # on concatenated files does the same: cut mid-line and mid-record on purpose
    members = tmp_path / "members.faa.gz"
    data = RECORDS.encode()
    members.write_bytes(
        b"".join(gzip.compress(data[i : i + 7001]) for i in range(0, len(data), 7001))
    )
    # a compressed file without the suffix is told by its content
    unnamed = tmp_path / "unnamed.faa"
    unnamed.write_bytes(gzip.compress(RECORDS.encode()))
    expected = read_fasta(plain, PROTEIN_ALPHABET)
    assert len(expected.ids) == 5002
    for path in (whole, members, unnamed):
        assert read_fasta(path, PROTEIN_ALPHABET) == expected
        stats = fasta_stats(path)
        assert stats == dataclasses.replace(fasta_stats(plain), bytes=path.stat().st_size)


def test_gzip_tool_output_is_read(tmp_path):
    path = tmp_path / "reads.fa"
    path.write_text(RECORDS)
    subprocess.run(["gzip", "-k", str(path)], check=True)
    assert read_fasta(f"{path}.gz", PROTEIN_ALPHABET) == read_fasta(path, PROTEIN_ALPHABET)


def corrupted(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)
    return bytes(damaged)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda data: gzip.compress(data)[:-5000], "corrupt gzip: truncated"),
        (lambda data: corrupted(gzip.compress(data)), "corrupt gzip: "),
        # the checksum at the end does not match
        (lambda data: gzip.compress(data)[:-8] + bytes(4) + gzip.compress(data)[-4:], "CRC"),
        (lambda data: b"BZh91AY&SY" + bytes(20), "compressed with bzip2: only gzip is read"),
        (lambda data: b"\xfd7zXZ\x00" + bytes(20), "compressed with xz"),
    ],
)
def test_corrupt_or_foreign_compression_is_an_input_error(tmp_path, make, message):
    path = tmp_path / "reads.faa.gz"
    path.write_bytes(make(RECORDS.encode()))
    with pytest.raises(InputError, match=message) as error:
        read_fasta(path, PROTEIN_ALPHABET)
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)
    fasta_stats(path)  # the plan is lenient: it counts what it can read


def test_compressed_levels_and_zlib_streams_agree(tmp_path):
    # gzip written by other libraries (zlib's wbits=31), at the fastest level
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    path = tmp_path / "fast.fa.gz"
    path.write_bytes(compressor.compress(RECORDS.encode()) + compressor.flush())
    assert read_fasta(path, PROTEIN_ALPHABET).ids[-1] == "s4999"
