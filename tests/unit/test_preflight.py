"""Pre-flight checks on this GPU-less machine: the CUDA branches are checked where they fail
(no CUDA here), the model checks on real files in fair-esm's checkpoint layout."""

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
