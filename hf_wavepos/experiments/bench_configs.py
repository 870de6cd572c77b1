"""The benchmark settings shipped with the package (``hf_wavepos/experiments/configs/*.yaml``).

``wavepos bench extrapolation|retrieval --config`` takes a shipped name (``extrapolation_cpu``,
``retrieval_gpu``, ...) or the path of a YAML file of your own; a pip-installed package finds
its shipped files without a clone of the repository.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bench_config_names() -> list[str]:
    """Names of the shipped benchmark configs (file stems), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def bench_config_path(name_or_path: str | Path) -> Path:
    """The YAML file meant by ``name_or_path``: an existing file, else a shipped config's name.

    Args:
        name_or_path: a path to a YAML file, or a shipped name with or without ``.yaml``.

    Raises:
        FileNotFoundError: neither a file nor a shipped name; the message lists the shipped names.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"benchmark config {str(name_or_path)!r} is neither a file nor a shipped config; shipped configs: "
        f"{', '.join(bench_config_names())} (or give the path of a YAML file)."
    )


def read_bench_config(cls: type[T], path: str | Path, overrides: dict[str, Any]) -> T:
    """A benchmark settings dataclass from a YAML file of its fields (or a shipped name), with
    ``overrides`` on top. Every value is checked against its field's type annotation
    (`hf_wavepos.training.yaml_dataclasses.coerce_value`); YAML lists become tuples (the
    dataclasses are frozen and hashable).

    Raises:
        FileNotFoundError: see `bench_config_path`.
        ValueError: a YAML syntax error or a top level that is not a mapping (naming the file);
            unknown keys, listing the known fields; a value of the wrong type (naming the field,
            the expected type and the value); or the dataclass's own checks.
    """
    import typing

    import yaml

    from hf_wavepos.training.yaml_dataclasses import coerce_value

    path = bench_config_path(path)
    try:
        read = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if read is not None and not isinstance(read, dict):
        raise ValueError(f"{path} must hold a mapping of settings (field: value lines), got a {type(read).__name__}.")
    data = {**(read or {}), **overrides}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known fields: {', '.join(sorted(known))}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        try:
            values[key] = coerce_value(value, hints[key], key)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return cls(**values)


def check_shared_values(config: Any, rates: tuple[str, ...] = ("lr",)) -> None:
    """The value checks every benchmark config shares: learning rates > 0, ``threads`` null or
    >= 1, ``length_multiples`` non-empty and > 0, ``mixed_precision`` one TrainConfig accepts.
    (Types are checked when a file is read, `read_bench_config`; these are the values.)

    Args:
        config: an ExtrapolationConfig / RetrievalConfig / ConversionConfig.
        rates: names of its learning-rate fields.

    Raises:
        ValueError: naming the field, the value and what is allowed.
    """
    from hf_wavepos.training.experiment_config import MIXED_PRECISION

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name in rates:
        value = getattr(config, name)
        if not number(value) or not value > 0:
            raise ValueError(f"{name} must be a positive learning rate (e.g. 3e-4), got {value!r}.")
    threads = config.threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a number of CPU threads >= 1, or null to keep torch's default; got {threads!r}.")
    if not config.length_multiples or not all(number(m) and m > 0 for m in config.length_multiples):
        raise ValueError(f"length_multiples must be a non-empty list of positive multiples of block_size (e.g. [1, 4, 8]), "
                         f"got {config.length_multiples!r}.")
    if config.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={config.mixed_precision!r} is not allowed; allowed values: "
                         f"{', '.join(MIXED_PRECISION)}.")
