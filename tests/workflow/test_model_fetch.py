"""A model named by its fair-esm hub name: fetched once, on the host that runs Snakemake,
into the configured model cache before any embed job starts; the jobs read it from there and
never download. The "hub" is a folder reached through a file:// mirror holding random weights
of the real esm2_t6_8M_UR50D architecture: this machine has no internet."""

from __future__ import annotations

import pytest
import torch
from helpers import NAMES, last_line, make_workdir, snakemake

from seqembed.demo import save_esm2_checkpoint

pytestmark = pytest.mark.workflow

HUB_NAME = "esm2_t6_8M_UR50D"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    import esm

    folder = tmp_path_factory.mktemp("mirror")
    torch.manual_seed(3)
    network = esm.model.esm2.ESM2(
        num_layers=6, embed_dim=320, attention_heads=20, alphabet="ESM-1b"
    )
    save_esm2_checkpoint(network, folder / "models" / f"{HUB_NAME}.pt")
    return folder


def test_hub_model_is_fetched_once_into_the_cache_before_the_jobs(tmp_path, mirror):
    cache = tmp_path / "cache"
    workdir = make_workdir(
        tmp_path / "run", HUB_NAME, model_cache=str(cache), model_mirror=f"file://{mirror}"
    )
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr
    assert f"seqembed: fetching {HUB_NAME} into {cache}" in result.stderr
    fetched = cache / f"{HUB_NAME}.pt"
    assert fetched.read_bytes() == (mirror / "models" / f"{HUB_NAME}.pt").read_bytes()
    assert not (cache / f"{HUB_NAME}-contact-regression.pt").exists()  # ESM-2 needs none
    assert [p.name for p in cache.iterdir()] == [fetched.name]  # no temporary left behind
    for name in NAMES:
        embedded = torch.load(workdir / "results" / "embeddings" / f"{name}.pt")
        assert embedded["model"] == HUB_NAME
        assert embedded["mean_representations"][6].shape[1] == 320

    # the next run that has work finds the weights in the cache: no second download
    stamp = fetched.stat().st_mtime_ns
    (workdir / "results" / "embeddings" / "beta.pt").unlink()
    rerun = snakemake(workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert "fetching" not in rerun.stderr and fetched.stat().st_mtime_ns == stamp


def test_jobs_never_download_a_model_missing_from_the_cache(tmp_path):
    from seqembed.compute.backends import ModelError
    from seqembed.compute.backends.esm import load_esm

    with pytest.raises(ModelError, match=f"model {HUB_NAME} is not in the model cache"):
        load_esm(HUB_NAME, "cpu", torch.float32, str(tmp_path / "empty-cache"))


def test_a_model_that_cannot_be_fetched_stops_the_run_with_one_line(tmp_path):
    workdir = make_workdir(
        tmp_path / "run",
        HUB_NAME,
        model_cache=str(tmp_path / "cache"),
        model_mirror=f"file://{tmp_path / 'empty-mirror'}",
    )
    result = snakemake(workdir)
    assert result.returncode == 1, result.stderr
    assert last_line(result).startswith(
        f"seqembed: pre-flight failed: model {HUB_NAME}: cannot download "
        f"file://{tmp_path}/empty-mirror/models/{HUB_NAME}.pt into {tmp_path}/cache"
    )
    assert not (workdir / "results" / "records").exists()  # no embed job ran
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-downloaded
