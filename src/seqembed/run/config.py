"""Configuration: validated against workflow/schemas/config.schema.yaml, defaults filled in,
and the inputs resolved to one name per file.

Validation is jsonschema directly rather than snakemake.utils.validate, so the package stays
free of Snakemake and a bad value yields exactly one line naming the key.
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

import jsonschema
import yaml

from seqembed.shards import SMALLEST, parse_size


class ConfigError(Exception):
    """One line naming the offending key."""


def _normalize_gpus(gpus):
    # `--config gpus=0,2` arrives as the string "0,2", `gpus=[0,2]` as a list, `gpus=1` as int
    if gpus is None:
        return None
    if isinstance(gpus, str):
        gpus = [part.strip() for part in gpus.split(",") if part.strip()]
    elif not isinstance(gpus, list):
        gpus = [gpus]
    return [str(gpu) for gpu in gpus]


def _as_int(value):
    try:
        return int(value) if isinstance(value, str) else value
    except ValueError:
        return value  # left for the schema to report


def _normalize_layers(layers):
    # `--config layers=[30,33]` arrives as ['30', '33'], `layers=30,33` as the string "30,33"
    if isinstance(layers, str) and layers != "last":
        layers = layers.split(",") if "," in layers else _as_int(layers)
    if isinstance(layers, list):
        return [_as_int(layer) for layer in layers]
    return layers


#: what a person types for a yes or a no (Snakemake's `--config` reads only True and False as
#: booleans: `trust_remote_code=true` arrives as the string "true", `=1` as the number 1)
TRUTHS = {"true": True, "yes": True, "on": True, "1": True}
TRUTHS |= {"false": False, "no": False, "off": False, "0": False}


def _as_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str):
        return TRUTHS.get(str(value).strip().lower(), value)
    return value  # left for the schema to report


def _is_boolean(spec: dict) -> bool:
    kinds = spec.get("type")
    return kinds == "boolean" or (isinstance(kinds, list) and "boolean" in kinds)


def validate_config(config: dict, schema_path: str | os.PathLike) -> dict:
    """A new dict: defaults filled in, every value checked, gpus a list of strings (or None)."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    checked = {key: spec["default"] for key, spec in schema["properties"].items()}
    checked.update(config)
    checked["layers"] = _normalize_layers(checked["layers"])
    for key, spec in schema["properties"].items():
        if _is_boolean(spec) and key in checked:
            checked[key] = _as_bool(checked[key])
    for key in ("include", "store_float16", "input_glob"):
        # `--config include=mean,per_tok` arrives as a string
        if isinstance(checked[key], str) and (key != "input_glob" or "," in checked[key]):
            checked[key] = [part.strip() for part in checked[key].split(",") if part.strip()]
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(checked)
    )
    if error is not None:
        if error.validator == "additionalProperties":
            known = ", ".join(sorted(schema["properties"]))
            raise ConfigError(f"config: {error.message} (known keys: {known})")
        key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        hint = schema["properties"].get(str(error.absolute_path[0]), {}).get("description", "")
        raise ConfigError(f"config key '{key}': {error.message}" + (f" ({hint})" if hint else ""))
    checked["gpus"] = _normalize_gpus(checked["gpus"])
    checked["shard_size"] = parse_size(checked["shard_size"])
    if 0 < checked["shard_size"] < SMALLEST:
        raise ConfigError(
            f"config key 'shard_size': {checked['shard_size']} bytes is too small (at least "
            f"{SMALLEST:,}; sizes are bytes, e.g. 200M)"
        )
    _check_virnucpro(checked)
    _check_windows(checked)
    unasked = sorted(set(checked["store_float16"]) - set(checked["include"]))
    if unasked:
        raise ConfigError(
            f"config key 'store_float16': {', '.join(unasked)} is not in 'include' "
            f"({', '.join(checked['include'])})"
        )
    return checked


def _check_windows(checked: dict) -> None:
    """Windows of `truncation` residues that overlap by less than half of one (so that no
    residue lies in three windows of the regular steps), over the residues only."""
    if checked["long_sequences"] != "windows":
        return
    if 2 * checked["window_overlap"] >= checked["truncation"]:
        raise ConfigError(
            f"config key 'window_overlap': {checked['window_overlap']} residues is not less "
            f"than half the window (truncation {checked['truncation']})"
        )
    if checked["pooling"] == "all_tokens":
        raise ConfigError(
            "config key 'pooling': all_tokens averages BOS and EOS in, which a sequence "
            "stitched from windows does not have; use residues with long_sequences windows"
        )


def _check_virnucpro(checked: dict) -> None:
    """VirNucPro's reader takes one layer's mean vectors from a .pt, nothing else."""
    if checked["output_layout"] != "virnucpro":
        return
    if isinstance(checked["layers"], list) and len(set(checked["layers"])) != 1:
        raise ConfigError("config key 'layers': output_layout virnucpro holds exactly one layer")
    if checked["include"] != ["mean"]:
        raise ConfigError(
            "config key 'include': output_layout virnucpro holds mean embeddings only; "
            "use output_layout default for per_tok or bos"
        )
    if checked["output_format"] != "pt" or checked["store_float16"]:
        raise ConfigError(
            "config key 'output_format': output_layout virnucpro is a float32 .pt file; "
            "use output_layout default for h5 or float16"
        )


#: settings added after outputs already existed, with the value those outputs were made with:
#: at that value they are left out of the embed rule's params, so upgrading seqembed does not
#: make every finished embedding stale
LATER_SETTINGS = {"include": ["mean"], "store_float16": [], "pooling": "auto"}


def output_settings(config: dict, precision: str) -> dict:
    """Exactly the settings that change an embedding (the embed rule's params: editing one
    reruns every file). `precision` as resolved: auto means bf16 or fp32 by device. Lists
    whose order means nothing are sorted; output_format is not here, it names the file."""
    settings = {
        "model": config["model"],
        "layers": config["layers"],
        "truncation": config["truncation"],
        "precision": precision,
        "output_layout": config["output_layout"],
    }
    for key, default in LATER_SETTINGS.items():
        value = sorted(config[key]) if isinstance(config[key], list) else config[key]
        if value != default:
            settings[key] = value
    return settings


def check_writable(output_dir: str) -> None:
    """Create output_dir if needed and write a probe file there: a folder that cannot be
    written stops the run before anything starts, not after hours of computing."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".seqembed-probe-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"config key 'output_dir': {output_dir} cannot be written: {reason}"
        ) from None


def output_name(path: str | os.PathLike) -> str:
    """The file name without its extension, and without both for a compressed file:
    sample.faa.gz and sample.faa are both `sample`."""
    name = Path(path).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem or name


def _globbed(config: dict) -> list[str]:
    """Every path the patterns match (files or not), each once, in order."""
    patterns = config["input_glob"]
    if isinstance(patterns, str):
        patterns = [patterns]
    matched = {
        path: None
        for pattern in patterns
        for path in glob.glob(
            os.path.join(glob.escape(config["input_dir"]), pattern), recursive=True
        )
    }
    return sorted(matched)


def input_files(config: dict) -> dict[str, str]:
    """Output name -> input path, sorted by name. No input at all, a listed file that does not
    exist, a name Snakemake would read as a wildcard, and two inputs with one name (one output
    file) are errors naming the files."""
    if config["input_files"]:
        paths = list(config["input_files"])
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise ConfigError(f"config key 'input_files': not found: {', '.join(missing)}")
    else:
        paths = [path for path in _globbed(config) if os.path.isfile(path)]
        if not paths:
            unusable = "; ".join(f"{p}: {why}" for p, why in unusable_inputs(config).items())
            raise ConfigError(
                f"config keys 'input_dir'/'input_glob': no input files match "
                f"{config['input_glob']} in {config['input_dir']}"
                + (f" (only {unusable})" if unusable else "")
            )
    files: dict[str, str] = {}
    extension = config.get("output_format", "pt")
    for path in paths:
        name = output_name(path)
        if "{" in path or "}" in path:
            raise ConfigError(f"input '{path}': braces are reserved by Snakemake: rename it")
        if name in files and files[name] != path:
            raise ConfigError(
                f"inputs '{files[name]}' and '{path}' would both write "
                f"embeddings/{name}.{extension}: rename one"
            )
        files[name] = path
    return dict(sorted(files.items()))


def unusable_inputs(config: dict) -> dict[str, str]:
    """Paths the glob matches that are no file to read, with the reason: a link whose target
    is gone (data moved), a folder. They cannot be jobs; the run says so instead of skipping
    them without a word."""
    if config["input_files"]:
        return {}
    unusable = {}
    for path in _globbed(config):
        if os.path.isfile(path):
            continue
        if os.path.islink(path):
            unusable[path] = f"broken symbolic link (to {os.readlink(path)})"
        elif os.path.isdir(path):
            unusable[path] = "a folder, not a file"
        else:
            unusable[path] = "not a regular file"
    return unusable
