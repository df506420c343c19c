import shlex
from pathlib import Path

import pytest
from conftest import REPO

from seqembed.run.config import ConfigError, input_files, validate_config

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


def test_defaults_fill_every_key():
    config = validate_config({}, SCHEMA)
    assert config["truncation"] == 1022
    assert config["layers"] == "last"
    assert config["gpus"] is None
    assert config["toks_per_batch"] == "auto"


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, None), ("0,2", ["0", "2"]), ([0, 2], ["0", "2"]), (1, ["1"]), (["GPU-a1"], ["GPU-a1"])],
)
def test_gpus_in_every_form_the_command_line_produces(given, expected):
    assert validate_config({"gpus": given}, SCHEMA)["gpus"] == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [("last", "last"), (33, 33), ("-1", -1), (["30", "33"], [30, 33]), ("30,33", [30, 33])],
)
def test_layers_in_every_form_the_command_line_produces(given, expected):
    assert validate_config({"layers": given}, SCHEMA)["layers"] == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"truncation": 0}, "config key 'truncation': 0 is less than the minimum of 1"),
        ({"shard_size": "lots"}, "config key 'shard_size'"),
        (
            {"shard_size": 200},
            "config key 'shard_size': 200 bytes is too small (at least 10,000; sizes are "
            "bytes, e.g. 200M)",
        ),
        ({"device": "gpu"}, "config key 'device': 'gpu' is not one of ['auto', 'cpu', 'cuda']"),
        ({"layers": "first"}, "config key 'layers'"),
        ({"toks_per_batch": -5}, "config key 'toks_per_batch'"),
        ({"gpu": 2}, "'gpu' was unexpected"),
        ({"output_layout": "virnucpro", "layers": [30, 33]}, "virnucpro holds exactly one layer"),
        ({"output_layout": "virnucpro", "include": ["mean", "bos"]}, "mean embeddings only"),
        ({"output_layout": "virnucpro", "output_format": "h5"}, "virnucpro is a float32 .pt"),
        ({"include": ["mean", "residues"]}, "config key 'include.1': 'residues' is not one of"),
        ({"include": []}, "config key 'include'"),
        ({"store_float16": ["per_tok"]}, "'store_float16': per_tok is not in 'include' (mean)"),
        ({"output_format": "hdf5"}, "config key 'output_format'"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(given, message):
    with pytest.raises(ConfigError) as error:
        validate_config(given, SCHEMA)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_inputs_by_glob_or_list_and_colliding_stems(tmp_path: Path):
    for name in ["b.fasta", "a.faa", "a.fai", "notes.txt"]:
        (tmp_path / name).write_text(">x\nM\n")
    config = validate_config({"input_dir": str(tmp_path)}, SCHEMA)
    assert input_files(config) == {"a": str(tmp_path / "a.faa"), "b": str(tmp_path / "b.fasta")}

    (tmp_path / "a.fasta").write_text(">x\nM\n")
    with pytest.raises(ConfigError, match="would both write embeddings/a.pt"):
        input_files(config)

    listed = validate_config({"input_files": [str(tmp_path / "b.fasta")]}, SCHEMA)
    assert input_files(listed) == {"b": str(tmp_path / "b.fasta")}


def test_compressed_inputs_are_found_and_named_without_both_extensions(tmp_path: Path):
    for name in ["a.faa.gz", "b.fasta", "c.fna.gz", "d.fa.gz", "e.fasta.gz", "f.txt.gz"]:
        (tmp_path / name).write_text(">x\nM\n")
    config = validate_config({"input_dir": str(tmp_path)}, SCHEMA)
    assert input_files(config) == {
        name: str(tmp_path / file)
        for name, file in [
            ("a", "a.faa.gz"),
            ("b", "b.fasta"),
            ("c", "c.fna.gz"),
            ("d", "d.fa.gz"),
            ("e", "e.fasta.gz"),
        ]
    }
    (tmp_path / "a.faa").write_text(">x\nM\n")
    h5 = validate_config({"input_dir": str(tmp_path), "output_format": "h5"}, SCHEMA)
    with pytest.raises(ConfigError, match="would both write embeddings/a.h5"):
        input_files(h5)
    # one pattern as a string, or several from the command line
    only = validate_config({"input_dir": str(tmp_path), "input_glob": "*.gz"}, SCHEMA)
    assert sorted(input_files(only)) == ["a", "c", "d", "e", "f"]
    several = validate_config({"input_dir": str(tmp_path), "input_glob": "*.faa,*.fna.gz"}, SCHEMA)
    assert input_files(several) == {"a": str(tmp_path / "a.faa"), "c": str(tmp_path / "c.fna.gz")}


@pytest.mark.parametrize(
    ("given", "expected"),
    [("mean,per_tok", ["mean", "per_tok"]), (["bos"], ["bos"]), ("per_tok", ["per_tok"])],
)
def test_include_in_every_form_the_command_line_produces(given, expected):
    assert validate_config({"include": given}, SCHEMA)["include"] == expected


def test_the_snakemake_process_side_never_imports_torch():
    # The Snakefile, the plan and the summary run in (or beside) the Snakemake process:
    # importing torch there costs seconds per parse and risks a CUDA context off-GPU-jobs.
    import subprocess
    import sys

    code = (
        "import sys; import seqembed.run.config, seqembed.devices, seqembed.run.plan, "
        "seqembed.report.summary;"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    ("setup", "config", "message"),
    [
        (lambda d: None, {}, "no input files match"),
        (lambda d: None, {"input_files": ["nowhere.fasta"]}, "not found: nowhere.fasta"),
        (lambda d: (d / "a{b}.fasta").write_text(">x\nM\n"), {}, "braces are reserved"),
    ],
)
def test_input_problems_are_one_line_errors(tmp_path, setup, config, message):
    setup(tmp_path)
    checked = validate_config({"input_dir": str(tmp_path), **config}, SCHEMA)
    with pytest.raises(ConfigError, match=message):
        input_files(checked)


def test_input_dir_with_glob_characters_is_taken_literally(tmp_path):
    folder = tmp_path / "run[1]"
    folder.mkdir()
    (folder / "a.fasta").write_text(">x\nM\n")
    config = validate_config({"input_dir": str(folder)}, SCHEMA)
    assert list(input_files(config)) == ["a"]


def test_output_dir_that_cannot_be_written(tmp_path):
    from seqembed.run.config import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be written: Not a directory"):
        check_writable(str(blocker / "results"))


def test_output_settings_leave_later_keys_out_at_their_old_values():
    # outputs made before include/store_float16/pooling existed stay up to date after an
    # upgrade; a list's order is not a different setting
    from seqembed.run.config import output_settings

    config = validate_config({}, SCHEMA)
    assert output_settings(config, "fp32") == {
        "model": "esm2_t33_650M_UR50D",
        "layers": "last",
        "truncation": 1022,
        "precision": "fp32",
        "output_layout": "default",
    }
    one = output_settings(validate_config({"include": ["per_tok", "mean"]}, SCHEMA), "fp32")
    other = output_settings(validate_config({"include": "mean,per_tok"}, SCHEMA), "fp32")
    assert one == other and one["include"] == ["mean", "per_tok"]
    assert (
        output_settings(validate_config({"pooling": "all_tokens"}, SCHEMA), "fp32")["pooling"]
        == "all_tokens"
    )


@pytest.mark.parametrize(
    ("given", "expected"), [(None, 0), (0, 0), ("200M", 200_000_000), (1_000_000, 1_000_000)]
)
def test_shard_size_in_every_form_the_command_line_produces(given, expected):
    assert validate_config({"shard_size": given}, SCHEMA)["shard_size"] == expected


@pytest.mark.parametrize(
    "given, expected",
    [(True, True), ("true", True), ("True", True), ("YES", True), ("on", True), (1, True),
     ("1", True), (False, False), ("false", False), ("No", False), ("off", False), (0, False),
     ("0", False)],
)  # fmt: skip
def test_booleans_as_a_person_types_them(given, expected):
    checked = validate_config({"trust_remote_code": given}, SCHEMA)
    assert checked["trust_remote_code"] is expected


def test_a_word_that_is_no_boolean_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"config key 'trust_remote_code': 'maybe' is not of"):
        validate_config({"trust_remote_code": "maybe"}, SCHEMA)


def readme_config_examples() -> list[list[str]]:
    """The `key=value` words after each `--config` in the README's commands (continuation
    lines joined)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    examples = []
    for line in text.splitlines():
        for part in line.split("--config ")[1:]:
            words = shlex.split(part.split("`")[0].split(" --")[0].strip())
            # `--config key=value` is the syntax itself, not an example
            examples.append([word for word in words if "=" in word and word != "key=value"])
    return [words for words in examples if words]


def test_every_config_example_in_the_readme_parses_and_validates():
    from snakemake.cli import parse_config

    examples = readme_config_examples()
    assert len(examples) >= 10 and any("trust_remote_code=true" in e for e in examples)
    for words in examples:
        given = parse_config(words)  # as Snakemake reads the command line
        checked = validate_config(given, SCHEMA)
        for key in given:
            assert key in checked, words
        if "trust_remote_code" in given:
            assert checked["trust_remote_code"] is True
