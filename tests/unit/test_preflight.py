"""Pre-flight checks on this GPU-less machine: the CUDA branches are checked where they fail
(no CUDA here), the model checks on real files in fair-esm's checkpoint layout."""

import re
import shutil

import pytest
from conftest import REPO

from seqembed.run.config import validate_config
from seqembed.run.preflight import (
    PreflightError,
    check_devices,
    check_model,
    preflight_in_subprocess,
)

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def config(**settings):
    return validate_config(settings, SCHEMA)


def test_cpu_pool_passes():
    assert check_devices(config(device="cpu", cpu_slots=2), environ={}) == ["cpu:0", "cpu:1"]


def test_cuda_without_a_visible_gpu(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": ""}
    with pytest.raises(PreflightError, match="device: cuda was requested but no GPU is visible"):
        check_devices(config(device="cuda"), environ=environ)


def test_listed_gpus_on_a_machine_without_cuda():
    with pytest.raises(PreflightError, match="GPUs 0, 2 are listed but torch cannot use CUDA"):
        check_devices(config(gpus="0,2"), environ={})


def test_the_tiny_model_passes(tiny_model):
    assert check_model(str(tiny_model)) == str(tiny_model)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda model: model.unlink(), "model checkpoint not found"),
        (lambda model: model.write_bytes(b"not a checkpoint"), "cannot be read as a torch"),
    ],
)
def test_broken_local_models(tmp_path, tiny_model, break_it, message):
    for path in tiny_model.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)
    model = tmp_path / tiny_model.name
    break_it(model)
    with pytest.raises(PreflightError, match=message):
        check_model(str(model))


def test_a_renamed_checkpoint_is_refused(tmp_path, tiny_model):
    renamed = tmp_path / "my_model.pt"
    shutil.copy(tiny_model, renamed)
    with pytest.raises(PreflightError, match="must keep fair-esm's model name"):
        check_model(str(renamed))


def test_unknown_hub_name():
    with pytest.raises(PreflightError, match="unknown model 'esm3_huge'"):
        check_model("esm3_huge")


def test_subprocess_reports_one_line(tmp_path):
    failure = preflight_in_subprocess(config(device="cpu", model=str(tmp_path / "esm2_x.pt")))
    assert failure == f"model checkpoint not found: {tmp_path / 'esm2_x.pt'}"


def test_layers_the_model_does_not_have_stop_the_run_before_any_load(tiny_model):
    # the tiny model has layers 0..3: a 33-layer setting would fail every file at run time
    with pytest.raises(PreflightError) as failed:
        check_model(str(tiny_model), layers=[33])
    assert str(failed.value) == (
        "config key 'layers': layer 33 does not exist: esm2_t3_32D_demo_random has layers 0..3"
    )
    assert check_model(str(tiny_model), layers=[-1, 0, 2]) == str(tiny_model)


def test_device_locks_that_cannot_work_stop_the_run(tmp_path, monkeypatch):
    from seqembed import lock_folder as claims
    from seqembed.run.preflight import run_preflight

    # a folder that cannot exist (below a file): the claim would fail in every job
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    # said as what it is, not as a filesystem without locks
    with pytest.raises(
        PreflightError, match=r"cannot create or open the device lock folder .*a-file"
    ):
        run_preflight(config(device="cpu", lock_dir=str(blocked / "locks")))
    # a filesystem without flock (some NFS mounts) cannot be mounted here: its refusal is
    # what fcntl.flock raises there
    import errno

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(claims.fcntl, "flock", no_flock)
    problem = claims.check_locking(tmp_path / "nfs")
    assert problem.startswith(f"device locks do not work in {tmp_path / 'nfs'}")
    assert "(No locks available): set lock_dir to a folder on a local disk" in problem


class FakeCuda:
    """torch.cuda as a node with `count` GPUs would answer (there is none here)."""

    def __init__(self, count):
        self.count = count

    def is_available(self):
        return self.count > 0

    def device_count(self):
        return self.count

    def get_device_properties(self, index):
        class Properties:
            uuid = f"00000000-0000-0000-0000-00000000000{index}"

        return Properties()


@pytest.mark.parametrize(
    ("settings", "environ", "count", "outcome"),
    [
        ({"gpus": "0,1"}, {}, 2, ["cuda:0", "cuda:1"]),
        ({"gpus": "0,3"}, {}, 2, "gpus entry 3 does not exist: this node has 2 GPU(s), 0-1"),
        ({}, {"CUDA_VISIBLE_DEVICES": "0,1,2"}, 2, "CUDA_VISIBLE_DEVICES lists 3 GPUs but"),
        ({}, {"CUDA_VISIBLE_DEVICES": "1"}, 1, ["cuda:1"]),
    ],
)
def test_gpu_checks_against_a_faked_device_count(monkeypatch, settings, environ, count, outcome):
    # the one mock here: torch.cuda, since this machine has no GPU (the device tool's lent
    # machine runs the real thing in bench/gpu_benchmark.py)
    import torch

    monkeypatch.setattr(torch, "cuda", FakeCuda(count))
    if isinstance(outcome, list):
        assert check_devices(config(device="cuda", **settings), environ=dict(environ)) == outcome
    else:
        with pytest.raises(PreflightError, match=re.escape(outcome)):
            check_devices(config(device="cuda", **settings), environ=dict(environ))
