"""Shards of one file: every record in exactly one shard whatever the lines look like, plain
or gzip; the count known from the file's size; the gather's output equal to the whole file's
in both formats; the abort, the plan and the summary counting files."""

from __future__ import annotations

import gzip
import json
import os
import random

import h5py
import numpy as np
import pytest
import torch

from seqembed import compression, faults, runstate
from seqembed.compute.backends import PROTEIN_ALPHABET
from seqembed.compute.gather import EMPTY_SHARD, gather
from seqembed.compute.writers import open_writer
from seqembed.demo import random_protein
from seqembed.errors import OutputTooLarge
from seqembed.fasta import InputError, read_fasta
from seqembed.job.embed import planned_device
from seqembed.job.gather import GatherJob, run_gather_job
from seqembed.job.records import keep_receipt, read_record
from seqembed.layout import RunLayout
from seqembed.output import write_json
from seqembed.report.outcomes import outcomes
from seqembed.report.summary import render_table, summarize
from seqembed.run.plan import make_plan, write_plan
from seqembed.shards import (
    SAMPLE_BYTES,
    content_size,
    idle_warning,
    labels,
    parse_size,
    section,
    shard_count,
    shard_counts,
    shard_job_name,
)


def messy_fasta(rng: random.Random, count: int, newline: str = "\n") -> tuple[str, list]:
    """Records with every line width, blank lines and trailing spaces, as real files have."""
    records, parts = [], []
    for index in range(count):
        sequence = random_protein(rng, rng.randint(1, 400))
        records.append((f"r{index}", sequence))
        parts.append(f">r{index} some description{newline}")
        width = rng.choice([1, 7, 60, 80, 1000])
        for start in range(0, len(sequence), width):
            parts.append(sequence[start : start + width] + rng.choice(["", " "]) + newline)
            if rng.random() < 0.1:
                parts.append(newline)
    return "".join(parts), records


def sharded(path, shard_size: int) -> list:
    got = []
    for label in labels(shard_count(path, shard_size)):
        records = read_fasta(path, PROTEIN_ALPHABET, section=section(path, label))
        got.extend(zip(records.ids, records.sequences, strict=True))
    return got


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_every_record_lands_in_exactly_one_shard(tmp_path, monkeypatch, newline):
    text, records = messy_fasta(random.Random(3), 120, newline)
    plain = tmp_path / "plain.faa"
    plain.write_text(text, newline="")
    compressed = tmp_path / "compressed.faa.gz"
    compressed.write_bytes(gzip.compress(text.encode()))
    # bgzip: a file of many gzip members
    members = tmp_path / "bgzip.faa.gz"
    data = text.encode()
    members.write_bytes(
        b"".join(gzip.compress(data[i : i + 5000]) for i in range(0, len(data), 5000))
    )
    for chunk in (7, 4096, 1 << 20):  # the reader's chunks cut lines anywhere
        monkeypatch.setattr(compression, "CHUNK", chunk)
        for path in (plain, compressed, members):
            for shard_size in (50 if chunk > 7 else 997, 20_000, len(data) - 1, 10**9):
                assert sharded(path, shard_size) == records, (path.name, chunk, shard_size)


def test_a_shard_names_the_whole_files_line_and_text_before_the_first_header_is_the_firsts(
    tmp_path,
):
    lines = ["junk before the first header"]
    for index in range(40):
        lines += [f">r{index}", "MKV" * 10]
    lines[62] = "MKV7"  # record r30's sequence, on line 63
    path = tmp_path / "bad.faa"
    path.write_text("\n".join(lines) + "\n")
    found = []
    for label in labels(4):
        try:
            read_fasta(path, PROTEIN_ALPHABET, section=section(path, label))
            found.append(None)
        except InputError as error:
            found.append(str(error))
    assert found[0] == f"{path}: line 1: not FASTA: text before the first '>' header"
    # the bad record fails the one shard that owns it, with the whole file's line number
    bad = f"{path}: line 63: record 'r30' has characters outside the alphabet: '7'"
    assert sorted(found[1:], key=str) == sorted([None, None, bad], key=str)


def test_shard_count_from_the_files_size_and_a_gzip_estimate(tmp_path):
    text, _ = messy_fasta(random.Random(4), 4000)
    plain = tmp_path / "big.faa"
    plain.write_text(text)
    compressed = tmp_path / "big.faa.gz"
    compressed.write_bytes(gzip.compress(text.encode(), compresslevel=6))
    assert compressed.stat().st_size > SAMPLE_BYTES  # estimated, not read whole
    assert content_size(plain) == len(text)
    assert abs(content_size(compressed) / len(text) - 1) < 0.05
    small = tmp_path / "small.faa.gz"
    small.write_bytes(gzip.compress(b">a\nMKV\n"))
    assert content_size(small) == 7
    assert shard_count(plain, 0) == 1 and shard_count(plain, 10**9) == 1
    assert shard_count(plain, len(text) // 3) == 4
    assert shard_counts({"big": str(plain), "small": str(small)}, 100_000) == {
        "big": -(-len(text) // 100_000)
    }


def test_sizes_are_read_as_users_write_them():
    assert parse_size(None) == 0 and parse_size(0) == 0 and parse_size(1234) == 1234
    assert parse_size("200M") == 200_000_000 and parse_size("1.5G") == 1_500_000_000
    assert parse_size("64MiB") == 64 << 20 and parse_size("100k") == 100_000
    assert parse_size("512 KB") == 512_000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_fewer_files_than_devices_names_the_idle_devices_and_the_setting(tmp_path):
    path = tmp_path / "one.faa"
    path.write_bytes(b">a\n" + b"M" * 4_000_000 + b"\n")
    pool = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert idle_warning({"one": str(path)}, pool, 0) == (
        "1 input file(s) for 4 devices: 3 device(s) will sit idle; set shard_size (e.g. "
        "--config shard_size=1000k) to compute large files in shards on every device"
    )
    assert idle_warning({"one": str(path)}, pool, 1_000_000) is None
    assert idle_warning({"one": str(path)}, ["cuda:0"], 0) is None


def write_output(tmp_path, name, ids, rows, output_format, layout="default"):
    """A job's output, through the real writers, for given per-residue rows [L, D]."""
    layers = [1, 3]
    request = {
        "name": name,
        "ids": ids,
        "sequences": ["M" * len(r) for r in rows],
        "output": str(tmp_path / f"{name}.{output_format}"),
        "truncation": 1022,
        "output_layout": layout,
        "include": ["mean"] if layout == "virnucpro" else ["mean", "per_tok", "bos"],
        "output_format": output_format,
    }
    layers = [3] if layout == "virnucpro" else layers
    writer = open_writer(request, layers, 4, {"model": "m", "truncation": 1022, "source": "x"})
    if rows and layout == "default":
        longest = max(len(r) for r in rows)
        padded = torch.zeros(len(rows), longest, 4)
        for index, r in enumerate(rows):
            padded[index, : len(r)] = r
        writer.residues([[i] for i in range(len(rows))], {1: padded, 3: padded * 2})
    means = torch.stack([r.mean(0) for r in rows]) if rows else torch.zeros(0, 4)
    pooled = {"mean": {layer: means * layer for layer in layers}}
    if layout == "default":
        pooled["bos"] = {layer: means + layer for layer in layers}
    temporary = writer.finish(pooled)
    temporary.rename(request["output"])
    return request["output"]


@pytest.mark.parametrize("output_format", ["pt", "h5"])
def test_the_gathered_output_is_the_whole_files(tmp_path, output_format):
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(length, 4, generator=generator) for length in (5, 9, 1, 30, 2, 7)]
    ids = [f"s{i}" for i in range(len(rows))]
    whole = write_output(tmp_path, "whole", ids, rows, output_format)
    empty = tmp_path / "empty"
    empty.write_bytes(EMPTY_SHARD)  # a later shard that held no record
    parts = [
        write_output(tmp_path, "part1", ids[:2], rows[:2], output_format),
        str(empty),
        write_output(tmp_path, "part2", [], [], output_format),  # computed, though empty
        write_output(tmp_path, "part3", ids[2:], rows[2:], output_format),
    ]
    joined, joined_ids = gather(parts, str(tmp_path / f"joined.{output_format}"), output_format)
    assert joined_ids == ids
    if output_format == "pt":
        expected, got = torch.load(whole), torch.load(joined)
        assert got.keys() == expected.keys() and got["ids"] == ids
        for key in ("mean_representations", "bos_representations"):
            for layer in (1, 3):
                assert torch.equal(got[key][layer], expected[key][layer])
        for layer in (1, 3):
            assert all(
                map(torch.equal, got["representations"][layer], expected["representations"][layer])
            )
        return
    with h5py.File(whole) as expected, h5py.File(joined) as got:
        assert list(got["ids"].asstr()[()]) == ids
        assert dict(got.attrs).keys() == dict(expected.attrs).keys()
        keys = ["offsets"] + [
            f"{k}/{layer}" for k in ("mean", "bos", "per_tok") for layer in (1, 3)
        ]
        for key in keys:
            assert np.array_equal(got[key][()], expected[key][()]), key


def test_the_gathered_virnucpro_layout_pairs_as_before(tmp_path):
    rows = [torch.randn(length, 4) for length in (5, 9, 1)]
    ids = ["a", "b", "c"]
    whole = torch.load(write_output(tmp_path, "whole", ids, rows, "pt", "virnucpro"))
    parts = [
        write_output(tmp_path, "p1", ids[:1], rows[:1], "pt", "virnucpro"),
        write_output(tmp_path, "p2", ids[1:], rows[1:], "pt", "virnucpro"),
    ]
    got = torch.load(gather(parts, str(tmp_path / "joined.pt"), "pt")[0])
    assert got["proteins"] == ids
    assert all(map(torch.equal, got["data"], whole["data"]))


def test_the_abort_counts_files_not_shards(tmp_path):
    state = tmp_path / "state"
    runstate.reset(state)
    for label in labels(4):  # every shard of one file fails, each retried
        for _ in range(3):
            assert (
                runstate.record_outcome(state, f"big.shard-{label}", "big.faa", "OOM", "x") is None
            )
    assert runstate.record_outcome(state, "b", "b.faa", "Crash", "y") is None
    assert runstate.record_outcome(state, "c", "c.faa", "Crash", "z").startswith(
        "run aborted after 3 runtime failures in a row: big.faa (OOM: x); b.faa"
    )


def test_the_plan_places_shards_and_each_shard_finds_its_device(tmp_path):
    rng = random.Random(2)
    big, small = tmp_path / "big.faa", tmp_path / "small.faa"
    big.write_text("".join(f">b{i}\n{random_protein(rng, 100)}\n" for i in range(40)))
    small.write_text(">s\nMKV\n")
    files = {"big": str(big), "small": str(small)}
    rows, overview = make_plan(files, ["cuda:0", "cuda:1"], shards={"big": 4})
    assert [row["shards"] for row in rows] == [4, 1]
    shard_devices = rows[0]["device"].split(",")
    assert sorted(shard_devices) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert sum(overview["planned_load"].values()) == 4003
    assert overview["files"] == 2 and overview["shards"] == 4
    write_plan(rows, overview, tmp_path / "plan.tsv", tmp_path / "plan.json")
    for index, label in enumerate(labels(4)):
        assert planned_device(tmp_path / "plan.tsv", "big", label) == shard_devices[index]
    assert planned_device(tmp_path / "plan.tsv", "small") == rows[1]["device"]


def shard_record(label, device, start, end, sequences, status="done", **extra):
    return {
        "name": f"big.shard-{label}",
        "file": "in/big.faa",
        "shard": label,
        "status": status,
        "device": device,
        "sequences": sequences,
        "residues": sequences * 100,
        "real_tokens": sequences * 102,
        "computed_tokens": sequences * 110,
        "truncated_sequences": 0,
        "started": start,
        "claimed": start,
        "finished": end,
        "model_load_seconds": 0.0,
        "compute_seconds": end - start,
        "model_was_loaded": True,
        **extra,
    }


def test_the_summary_counts_the_file_once_and_its_shards_on_their_devices():
    gathered = {
        "name": "big",
        "file": "in/big.faa",
        "status": "done",
        "device": None,
        "sequences": 30,
        "residues": 3000,
        "truncated_sequences": 0,
        "started": 10.0,
        "finished": 11.0,
    }
    shards = [
        shard_record("1-of-3", "cuda:0", 0.0, 10.0, 10),
        shard_record("2-of-3", "cuda:1", 0.0, 8.0, 10),
        shard_record("3-of-3", "cuda:1", 8.0, 10.0, 10),
    ]
    summary = summarize({"big": gathered}, shard_records={"big": shards})
    assert summary["files"]["done"] == 1 and summary["files"]["computed_this_run"] == 1
    assert summary["sequences"] == 30 and summary["wall_seconds"] == 11.0
    assert (
        summary["devices"]["cuda:1"]["shards"] == 2 and summary["devices"]["cuda:1"]["files"] == 0
    )
    assert summary["devices"]["cuda:1"]["busy_seconds"] == 10.0
    table = render_table(summary)
    assert "1/1 files done" in table and " jobs " in table.splitlines()[1]
    failed = {**shards[1], "name": "big", "status": "failed", "error_type": "OOM",
              "error_message": "sequence 'x' does not fit"}  # fmt: skip
    summary = summarize({"big": failed}, shard_records={"big": [shards[0], shards[2]]})
    assert summary["failures"] == [
        {
            "file": "in/big.faa",
            "error_type": "OOM",
            "error_message": "shard 2-of-3: sequence 'x' does not fit",
        }
    ]
    assert summary["sequences"] == 20  # the shards kept for the rerun were computed


def test_a_pt_whose_shards_together_are_over_the_limit_is_refused(tmp_path):
    rows = [torch.randn(40, 4) for _ in range(4)]
    parts = [
        write_output(tmp_path, "p1", ["a", "b"], rows[:2], "pt"),
        write_output(tmp_path, "p2", ["c", "d"], rows[2:], "pt"),
    ]
    faults.use(json.dumps({"pt_limit_bytes": 3 * 40 * 4 * 4 * 2}))  # three sequences' rows
    try:
        with pytest.raises(OutputTooLarge, match="in/big.faa: per-residue output of"):
            gather(parts, str(tmp_path / "joined.pt"), "pt", source="in/big.faa")
    finally:
        faults.use(None)
    assert list(tmp_path.glob(".joined.pt.*")) == []


def test_the_gather_job_records_the_file_and_frees_its_shards(tmp_path):
    state = tmp_path / "state"
    rows = [torch.randn(3, 4) for _ in range(3)]
    parts = [
        write_output(tmp_path, "p1", ["a", "b"], rows[:2], "pt"),
        write_output(tmp_path, "p2", ["a"], rows[2:], "pt"),  # an id again, in another shard
    ]
    labels_ = labels(2)
    for label, part in zip(labels_, parts, strict=True):
        keep_receipt(str(state), shard_job_name("big", label), part)
    job = GatherJob(
        name="big",
        fasta="in/big.faa",
        output=str(tmp_path / "embeddings" / "big.pt"),
        output_format="pt",
        record=str(tmp_path / "records" / "big.json"),
        state_dir=str(state),
        labels=labels_,
        shards=parts,
        shard_records=[str(tmp_path / "none.json")] * 2,
    )
    stale = tmp_path / "1-of-5.pt"  # a shard of the file cut another way, by an earlier run
    stale.write_bytes(b"x")
    record = run_gather_job(job)
    assert record["sequences"] == 3 and record["duplicate_ids"] == 1
    assert not stale.exists() and all(map(os.path.exists, parts))
    assert torch.load(job.output)["ids"] == ["a", "b", "a"]
    assert list((state / "finished").iterdir()) == [state / "finished" / "big"]

    blocked = GatherJob(**{**job.__dict__, "output": str(tmp_path / "file" / "big.pt")})
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(SystemExit) as stop:
        run_gather_job(blocked)
    assert str(stop.value).startswith(
        f"seqembed: OutputError: in/big.faa: gathering its shards: {tmp_path}/file/big.pt: "
    )
    assert read_record(job.record)["error_type"] == "OutputError"


def test_a_sharded_file_fails_with_the_shard_error_that_says_the_most(tmp_path):
    layout = RunLayout(str(tmp_path / "results"))
    runstate.reset(layout.state)
    since = runstate.run_started(layout.state)
    stopped = {"status": "failed", "name": "big.shard-1-of-3", "file": "big.faa",
               "error_type": "Aborted", "error_message": "stopped: x", "started": since + 1,
               "finished": since + 2}  # fmt: skip
    oom = {**stopped, "name": "big.shard-3-of-3", "error_type": "OOM",
           "error_message": "sequence 's' does not fit", "finished": since + 3}  # fmt: skip
    write_json(layout.shard_record("big", "1-of-3"), stopped)
    write_json(layout.shard_record("big", "3-of-3"), oom)
    records, _ = outcomes(layout, {"big": "big.faa"}, aborted="x", since=since, shards={"big": 3})
    assert records["big"]["shard"] == "3-of-3" and records["big"]["error_type"] == "OOM"
