"""Outputs of one file through the real tiny model: every kind fair-esm's extraction writes,
in both formats, equal to fair-esm's unbatched forward pass, whatever the batching did
(duplicates computed once, an out-of-memory back-off mid-file)."""

import json
import os

import h5py
import numpy as np
import pytest
import torch
from reference import reference_outputs

from seqembed import faults
from seqembed.compute.backends.esm import EsmBackend
from seqembed.compute.embed_file import embed_file
from seqembed.compute.writers import PT_RESIDUE_LIMIT_BYTES
from seqembed.demo import random_protein
from seqembed.errors import OutputTooLarge
from seqembed.output import stale_temporaries


@pytest.fixture(scope="module")
def backend(tiny_model):
    return EsmBackend.load(str(tiny_model), device="cpu", precision="fp32", truncation=1022)


@pytest.fixture(scope="module")
def sequences():
    import random

    rng = random.Random(5)
    sequences = [random_protein(rng, rng.randint(20, 200)) for _ in range(30)]
    sequences[7] = sequences[3]  # a duplicate, computed once and written twice
    sequences.append(random_protein(rng, 1100))  # truncated at 1022
    return sequences


@pytest.fixture(autouse=True)
def no_faults():
    faults.use(None)
    yield
    faults.use(None)


def request(tmp_path, sequences, **settings) -> dict:
    output_format = settings.get("output_format", "pt")
    return {
        "name": "sample",
        "source": "fasta/sample.faa.gz",
        "ids": [f"s{i}" for i in range(len(sequences))],
        "sequences": sequences,
        "output": str(tmp_path / f"sample.{output_format}"),
        "layers": [1, 3],
        "toks_per_batch": 2000,
        "truncation": 1022,
        "output_layout": "default",
        "include": ["mean", "per_tok", "bos"],
        **settings,
    }


def close(a, b, tolerance=1e-5) -> bool:
    return (torch.as_tensor(a).float() - b).abs().max().item() <= tolerance


def test_pt_holds_fair_esms_three_kinds(tmp_path, backend, tiny_model, sequences):
    faults.use(json.dumps({"oom_above_tokens": 1500}))  # back-off mid-file
    stats = embed_file(backend, request(tmp_path, sequences))
    assert stats["oom_backoffs"] >= 1
    output = torch.load(stats["temporary"])
    expected = reference_outputs(tiny_model, sequences, [1, 3], 1022)
    for layer in (1, 3):
        assert close(output["mean_representations"][layer], expected["mean"][layer])
        assert close(output["bos_representations"][layer], expected["bos"][layer])
        rows = output["representations"][layer]
        assert [row.shape for row in rows] == [row.shape for row in expected["per_tok"][layer]]
        assert rows[-1].shape == (1022, 32)
        assert all(close(a, b) for a, b in zip(rows, expected["per_tok"][layer], strict=True))
        assert rows[0].dtype == torch.float32


def test_h5_holds_the_same_written_in_place(tmp_path, backend, tiny_model, sequences):
    stats = embed_file(
        backend, request(tmp_path, sequences, output_format="h5", store_float16=["per_tok"])
    )
    expected = reference_outputs(tiny_model, sequences, [1, 3], 1022)
    with h5py.File(stats["temporary"], "r") as file:
        assert list(file["ids"].asstr()[:]) == [f"s{i}" for i in range(len(sequences))]
        attributes = dict(file.attrs)
        assert attributes["model"] == tiny_model.stem
        assert list(attributes["layers"]) == [1, 3]
        assert attributes["source"] == "fasta/sample.faa.gz"
        assert (attributes["truncation"], attributes["precision"]) == (1022, "float32")
        offsets = file["offsets"][:]
        lengths = [min(len(sequence), 1022) for sequence in sequences]
        assert offsets.dtype == np.int64
        assert list(np.diff(offsets)) == lengths
        for layer in (1, 3):
            assert file[f"per_tok/{layer}"].dtype == np.float16
            assert file[f"per_tok/{layer}"].shape == (sum(lengths), 32)
            # contiguous: memory-mappable, and written in place in any order
            assert file[f"per_tok/{layer}"].chunks is None
            assert file[f"mean/{layer}"].dtype == np.float32
            assert close(file[f"mean/{layer}"][:], expected["mean"][layer])
            assert close(file[f"bos/{layer}"][:], expected["bos"][layer])
            for index, rows in enumerate(expected["per_tok"][layer]):
                stored = file[f"per_tok/{layer}"][offsets[index] : offsets[index + 1]]
                # float16 keeps 11 significant bits
                assert close(stored, rows, tolerance=2e-3 * rows.abs().max().item())


def test_only_what_is_included(tmp_path, backend, sequences):
    stats = embed_file(backend, request(tmp_path, sequences, include=["bos"]))
    assert set(torch.load(stats["temporary"])) == {
        "ids",
        "model",
        "truncation",
        "long_sequences",
        "window_overlap",
        "bos_representations",
    }
    stats = embed_file(backend, request(tmp_path, sequences, include=["mean"], output_format="h5"))
    with h5py.File(stats["temporary"], "r") as file:
        assert set(file) == {"ids", "mean"}


def test_an_empty_file_gives_empty_datasets(tmp_path, backend):
    stats = embed_file(backend, request(tmp_path, [], output_format="h5"))
    with h5py.File(stats["temporary"], "r") as file:
        assert file["per_tok/3"].shape == (0, 32)
        assert list(file["offsets"][:]) == [0]


def test_per_residue_pt_over_the_limit_is_refused_before_computing(tmp_path, backend, sequences):
    residues = sum(min(len(sequence), 1022) for sequence in sequences)
    faults.use(json.dumps({"pt_limit_bytes": residues * 32 * 2 * 4 - 1}))
    with pytest.raises(OutputTooLarge) as error:
        embed_file(backend, request(tmp_path, sequences))
    assert str(error.value).startswith("fasta/sample.faa.gz: per-residue output of ")
    assert "set output_format: h5" in str(error.value)
    assert not stale_temporaries(tmp_path / "sample.pt")
    # float16 halves it: under the limit
    embed_file(backend, request(tmp_path, sequences, store_float16=["per_tok"]))
    assert PT_RESIDUE_LIMIT_BYTES == 4 << 30


def test_a_failure_mid_file_leaves_no_temporary(tmp_path, backend, sequences):
    def stop():
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        embed_file(backend, request(tmp_path, sequences, output_format="h5"), check_stop=stop)
    assert not stale_temporaries(tmp_path / "sample.h5")


def test_a_writer_that_fails_while_opening_leaves_nothing(
    tmp_path, backend, sequences, monkeypatch
):
    # any failure while the HDF5 file is set up (here a refused dataset), not only an OS error
    import h5py

    def refuse(*args, **kwargs):
        raise ValueError("refused")

    monkeypatch.setattr(h5py.File, "create_dataset", refuse)
    with pytest.raises(ValueError, match="refused"):
        embed_file(backend, request(tmp_path, sequences, output_format="h5"))
    assert not stale_temporaries(tmp_path / "sample.h5")


def test_only_this_writers_own_temporary_is_taken_for_an_output(tmp_path):
    """What a worker hands back is renamed into the results only when it is what the job's
    writer makes: a plain file of this user, beside the output, named as its temporaries."""
    from seqembed.output import is_temporary_of, temporary_path

    output = tmp_path / "embeddings" / "alpha.pt"
    good = temporary_path(output)
    assert is_temporary_of(good, output)
    assert not is_temporary_of(tmp_path / "elsewhere" / good.name, output)
    assert not is_temporary_of(temporary_path(output.with_name("beta.pt")), output)
    secret = tmp_path / "secret"
    secret.write_text("the user's own file")
    link = output.parent / ".alpha.pt.link.tmp"
    link.symlink_to(secret)
    assert not is_temporary_of(link, output)
    hard = output.parent / ".alpha.pt.hard.tmp"
    os.link(secret, hard)
    assert not is_temporary_of(hard, output)
    if os.getuid() == 0:
        foreign = temporary_path(output)
        os.chown(foreign, 54321, 54321)
        assert not is_temporary_of(foreign, output)
