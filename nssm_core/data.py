"""Input/output records: CSV loading, the bundled Cascaded Tanks data and normalisation."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

__all__ = [
    "Normalizer",
    "Record",
    "cascaded_tanks",
    "cascaded_tanks_path",
    "load_csv_columns",
    "load_record",
    "split_record",
]


@dataclass(frozen=True)
class Record:
    """One experiment: an input sequence and the measured output.

    Attributes:
        u: Inputs, ``(time, d_input)``, float64.
        y: Outputs, ``(time, d_output)``, float64.
        name: Where the record came from, for messages.
    """

    u: torch.Tensor
    y: torch.Tensor
    name: str = "record"

    def __post_init__(self) -> None:
        if self.u.ndim != 2 or self.y.ndim != 2 or self.u.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"record {self.name!r}: u and y must be (time, channels) with equal length, "
                f"got {tuple(self.u.shape)} and {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return self.u.shape[0]


@dataclass(frozen=True)
class Normalizer:
    """Per-channel affine normalisation ``(x - mean) / std`` of inputs and outputs.

    Attributes:
        u_mean: Input means, ``(d_input,)``.
        u_std: Input standard deviations, ``(d_input,)``.
        y_mean: Output means, ``(d_output,)``.
        y_std: Output standard deviations, ``(d_output,)``.
    """

    u_mean: torch.Tensor
    u_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    @classmethod
    def fit(cls, record: Record) -> Normalizer:
        """Return the statistics of ``record``; a constant channel gets a std of 1."""

        def std(x: torch.Tensor) -> torch.Tensor:
            s = x.std(dim=0, unbiased=False)
            return torch.where(s > 1e-12, s, torch.ones_like(s))

        return cls(record.u.mean(0), std(record.u), record.y.mean(0), std(record.y))

    def normalize(self, record: Record) -> Record:
        """Return ``record`` in normalised units."""
        return Record((record.u - self.u_mean) / self.u_std, (record.y - self.y_mean) / self.y_std, record.name)

    def normalize_u(self, u: torch.Tensor) -> torch.Tensor:
        """Normalise inputs of shape ``(..., d_input)``."""
        return (u - self.u_mean.to(u)) / self.u_std.to(u)

    def denormalize_y(self, y: torch.Tensor) -> torch.Tensor:
        """Map normalised outputs of shape ``(..., d_output)`` back to the data's units."""
        return y * self.y_std.to(y) + self.y_mean.to(y)

    def to_dict(self) -> dict[str, list[float]]:
        """Return the statistics as JSON-compatible lists."""
        return {key: getattr(self, key).tolist() for key in ("u_mean", "u_std", "y_mean", "y_std")}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Normalizer:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{key: torch.tensor(data[key], dtype=torch.float64) for key in ("u_mean", "u_std", "y_mean", "y_std")})


def load_csv_columns(path: str | Path, columns: list[str]) -> dict[str, torch.Tensor]:
    """Read numeric columns from a CSV file with a header row.

    Empty trailing cells are allowed (a column may be shorter than the file),
    and a trailing comma on every row is ignored.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If a column is missing or holds a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise ValueError(f"{path} is empty; expected a header row with column names") from None
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    missing = [name for name in columns if name not in header]
    if missing:
        available = [name for name in header if name]
        raise ValueError(f"{path} has no column(s) {missing}; available columns: {available}")

    result = {}
    for name in columns:
        index = header.index(name)
        values: list[float] = []
        for line_number, row in enumerate(rows, start=2):
            cell = row[index].strip() if index < len(row) else ""
            if not cell:
                values.append(math.nan)
                continue
            try:
                values.append(float(cell))
            except ValueError:
                raise ValueError(f"{path}, line {line_number}, column {name!r}: {cell!r} is not a number") from None
        column = torch.tensor(values, dtype=torch.float64)
        # Drop trailing empty cells (a shorter column); a gap inside the data is an error.
        finite = torch.nonzero(~torch.isnan(column)).flatten()
        if finite.numel() == 0:
            raise ValueError(f"{path}: column {name!r} has no values")
        column = column[: int(finite[-1]) + 1]
        if bool(torch.isnan(column).any()):
            raise ValueError(f"{path}: column {name!r} has empty cells inside the data; fill or remove them")
        result[name] = column
    return result


def load_record(path: str | Path, inputs: list[str], outputs: list[str]) -> Record:
    """Load a :class:`Record` from CSV columns named ``inputs`` and ``outputs``."""
    if not inputs or not outputs:
        raise ValueError("name at least one input and one output column (--inputs and --outputs)")
    columns = load_csv_columns(path, inputs + outputs)
    lengths = {name: column.numel() for name, column in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: the chosen columns have different lengths {lengths}")
    u = torch.stack([columns[name] for name in inputs], dim=1)
    y = torch.stack([columns[name] for name in outputs], dim=1)
    return Record(u, y, name=str(path))


def split_record(record: Record, test_fraction: float) -> tuple[Record, Record]:
    """Split a record into a training head and a test tail holding ``test_fraction`` of the samples."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    n_test = max(1, round(len(record) * test_fraction))
    n_train = len(record) - n_test
    if n_train < 2:
        raise ValueError(f"record {record.name!r} has {len(record)} samples, too few to hold out {test_fraction:.0%}")
    head = Record(record.u[:n_train], record.y[:n_train], f"{record.name} (train)")
    tail = Record(record.u[n_train:], record.y[n_train:], f"{record.name} (test)")
    return head, tail


def cascaded_tanks_path() -> Path:
    """Return the path of the bundled Cascaded Tanks CSV (CC BY-SA 4.0, see ``CASCADED_TANKS_LICENSE.md``)."""
    return Path(str(resources.files("nssm_core") / "data" / "cascaded_tanks.csv"))


def cascaded_tanks() -> tuple[Record, Record]:
    """Return the Cascaded Tanks estimation and test records (pump voltage in, lower-tank level out, volts).

    Sample time 4 s, 1024 samples each. Data by M. Schoukens, P. Mattsson,
    T. Wigren and J.-P. Noël (nonlinearbenchmark.org, doi:10.4121/12960104),
    CC BY-SA 4.0.
    """
    path = cascaded_tanks_path()
    estimation = load_record(path, ["uEst"], ["yEst"])
    test = load_record(path, ["uVal"], ["yVal"])
    return Record(estimation.u, estimation.y, "cascaded tanks estimation"), Record(test.u, test.y, "cascaded tanks test")
