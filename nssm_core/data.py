"""Input/output records: CSV and NPZ loading, the bundled Cascaded Tanks data, normalisation, windows and padding."""

from __future__ import annotations

import csv
import glob
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Normalizer",
    "PaddedBatch",
    "Record",
    "cascaded_tanks",
    "cascaded_tanks_path",
    "expand_paths",
    "load_csv_columns",
    "load_npz_records",
    "load_record",
    "load_records",
    "pad_records",
    "record_statistics",
    "split_record",
    "window_records",
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
    def fit(cls, record: Record | Sequence[Record]) -> Normalizer:
        """Return the statistics of ``record``; a constant channel gets a std of 1.

        A sequence of records gives the statistics of all their samples pooled,
        so every record is normalised the same way, as a model needs.
        """
        records = [record] if isinstance(record, Record) else list(record)
        if not records:
            raise ValueError("cannot fit normalisation statistics to an empty list of records")
        u = torch.cat([r.u for r in records]) if len(records) > 1 else records[0].u
        y = torch.cat([r.y for r in records]) if len(records) > 1 else records[0].y

        def std(x: torch.Tensor) -> torch.Tensor:
            s = x.std(dim=0, unbiased=False)
            return torch.where(s > 1e-12, s, torch.ones_like(s))

        return cls(u.mean(0), std(u), y.mean(0), std(y))

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
        ValueError: If a column is missing or contains a value that is not a number.
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


def expand_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Expand glob patterns (``*``, ``?``, ``[...]``) to sorted file paths; other entries are kept as given.

    Raises:
        FileNotFoundError: If a pattern matches no file.
    """
    paths: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"no data file matches {text!r}")
            paths.extend(Path(match) for match in matches)
        else:
            paths.append(Path(text))
    return paths


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> torch.Tensor:
    try:
        array = archive[key]
    except ValueError as error:
        # Object arrays need pickle, which could run code from the file, so they are not read.
        raise ValueError(f"{path}: array {key!r} cannot be read without unpickling ({error}); store numeric arrays") from error
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: array {key!r} has dtype {array.dtype}, expected numbers")
    tensor = torch.from_numpy(np.asarray(array, dtype=np.float64))
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{path}: array {key!r} contains NaN or infinite values")
    return tensor


def load_npz_records(path: str | Path) -> list[Record]:
    """Load records from a NumPy ``.npz`` archive, without unpickling anything.

    Two layouts are read:

    - ``u_0, y_0, u_1, y_1, ...``: one pair per record, each ``(time, channels)``
      or ``(time,)``; records may differ in length.
    - ``u`` and ``y``: ``(time, channels)`` for one record, or
      ``(records, time, channels)`` for several of equal length, with an
      optional integer array ``lengths`` giving each record's valid length.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the archive has neither layout or an array has the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable .npz archive: {error}") from error
    with archive:
        keys = set(archive.files)
        pairs: list[tuple[torch.Tensor, torch.Tensor, str]] = []
        if "u_0" in keys:
            index = 0
            while f"u_{index}" in keys:
                if f"y_{index}" not in keys:
                    raise ValueError(f"{path}: has u_{index} but no y_{index}")
                u = _npz_array(archive, f"u_{index}", path)
                y = _npz_array(archive, f"y_{index}", path)
                pairs.append((u, y, f"{path}[{index}]"))
                index += 1
        elif {"u", "y"} <= keys:
            u = _npz_array(archive, "u", path)
            y = _npz_array(archive, "y", path)
            if u.ndim == 3 and y.ndim == 3:
                lengths = [u.shape[1]] * u.shape[0]
                if "lengths" in keys:
                    lengths = [int(n) for n in archive["lengths"].reshape(-1)]
                    if len(lengths) != u.shape[0] or not all(0 < n <= u.shape[1] for n in lengths):
                        raise ValueError(
                            f"{path}: 'lengths' must hold {u.shape[0]} values between 1 and {u.shape[1]}, got {lengths}"
                        )
                pairs = [(u[i, :n], y[i, :n], f"{path}[{i}]") for i, n in enumerate(lengths)]
            else:
                pairs = [(u, y, str(path))]
        else:
            raise ValueError(
                f"{path} contains arrays {sorted(keys)}; expected u_0, y_0, u_1, y_1, ... or u and y"
            )
    records = []
    for u, y, name in pairs:
        u = u.unsqueeze(1) if u.ndim == 1 else u
        y = y.unsqueeze(1) if y.ndim == 1 else y
        records.append(Record(u, y, name=name))
    if not records:
        raise ValueError(f"{path} contains no records")
    return records


def load_records(
    patterns: Sequence[str | Path], inputs: list[str] | None = None, outputs: list[str] | None = None
) -> list[Record]:
    """Load records from CSV files (columns ``inputs`` and ``outputs``) and ``.npz`` archives.

    Args:
        patterns: File paths or glob patterns; a ``.npz`` file may hold several records.
        inputs: Input column names of the CSV files.
        outputs: Output column names of the CSV files.

    Returns:
        The records in the order given, glob matches sorted by name.

    Raises:
        FileNotFoundError: If a file is missing or a pattern matches nothing.
        ValueError: If a CSV file is given without column names, or the records
            differ in their numbers of input or output channels.
    """
    records: list[Record] = []
    for path in expand_paths(patterns):
        if path.suffix.lower() == ".npz":
            records.extend(load_npz_records(path))
        else:
            if not inputs or not outputs:
                raise ValueError(f"CSV file {path} needs --inputs and --outputs (comma-separated column names)")
            records.append(load_record(path, inputs, outputs))
    if not records:
        raise ValueError("no data files given")
    widths = {(r.u.shape[1], r.y.shape[1]) for r in records}
    if len(widths) > 1:
        listing = ", ".join(f"{r.name}: {r.u.shape[1]} in / {r.y.shape[1]} out" for r in records)
        raise ValueError(f"records differ in their numbers of channels ({listing})")
    return records


def record_statistics(records: Sequence[Record]) -> list[dict[str, object]]:
    """Return each record's name, length and own per-channel statistics, JSON-compatible."""
    return [{"name": r.name, "samples": len(r), **Normalizer.fit(r).to_dict()} for r in records]


def window_records(records: Sequence[Record], window: int, stride: int | None = None) -> list[Record]:
    """Cut records into training windows of ``window`` samples; ``window=0`` keeps each record whole.

    Windows start every ``stride`` samples (``window // 2`` by default) and the
    last window of a record ends at its last sample. A record no longer than
    ``window`` stays whole, so the windows may differ in length.
    """
    if window < 0:
        raise ValueError(f"window must be 0 (whole record) or a positive length, got {window}")
    if stride is not None and stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    windows: list[Record] = []
    for record in records:
        length = len(record)
        if window == 0 or window >= length:
            windows.append(record)
            continue
        step = stride or max(1, window // 2)
        starts = list(range(0, length - window + 1, step))
        if starts[-1] != length - window:
            starts.append(length - window)
        for start in starts:
            end = start + window
            windows.append(Record(record.u[start:end], record.y[start:end], f"{record.name}[{start}:{end}]"))
    return windows


@dataclass(frozen=True)
class PaddedBatch:
    """Records of different lengths, right-padded with zeros to a common length.

    Attributes:
        u: Inputs, ``(batch, time, d_input)``.
        y: Outputs, ``(batch, time, d_output)``.
        lengths: Valid length of each record, ``(batch,)``, int64.
    """

    u: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor

    def mask(self, washout: int = 0) -> torch.Tensor:
        """Return ``(batch, time, 1)``: 1 at valid samples from index ``washout`` on, 0 elsewhere."""
        steps = torch.arange(self.u.shape[1], device=self.lengths.device)
        valid = (steps < self.lengths[:, None]) & (steps >= washout)
        return valid.unsqueeze(-1).to(self.u.dtype)

    @property
    def padded(self) -> bool:
        """Whether some record is shorter than the batch."""
        return bool((self.lengths < self.u.shape[1]).any())

    def select(self, indices: torch.Tensor | Sequence[int]) -> PaddedBatch:
        """Return the records at ``indices``, trimmed to the longest of them."""
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.lengths.device)
        lengths = self.lengths[indices]
        longest = int(lengths.max()) if lengths.numel() else 0
        return PaddedBatch(self.u[indices, :longest], self.y[indices, :longest], lengths)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PaddedBatch:
        """Move the signals (and the lengths, to ``device`` only)."""
        return PaddedBatch(self.u.to(device, dtype), self.y.to(device, dtype), self.lengths.to(device))


def pad_records(records: Sequence[Record], dtype: torch.dtype = torch.float64) -> PaddedBatch:
    """Stack records into one batch, right-padding the shorter ones with zeros."""
    if not records:
        raise ValueError("cannot pad an empty list of records")
    longest = max(len(r) for r in records)
    u = torch.zeros(len(records), longest, records[0].u.shape[1], dtype=dtype)
    y = torch.zeros(len(records), longest, records[0].y.shape[1], dtype=dtype)
    for index, record in enumerate(records):
        u[index, : len(record)] = record.u
        y[index, : len(record)] = record.y
    lengths = torch.tensor([len(r) for r in records], dtype=torch.long)
    return PaddedBatch(u, y, lengths)
