import pytest
from helpers import make_workdir


@pytest.fixture
def workdir(tmp_path, tiny_model):
    """A user's folder: four FASTA files and a config for the tiny model on two CPU slots."""
    return make_workdir(tmp_path / "run", tiny_model)
