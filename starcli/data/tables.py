"""Label tables read from text files: the one parser for CelebA's attribute and partition
lists and for every `--labels` CSV (prepare's and translate's), built on pandas.

    rows = read_label_csv(Path("labels.csv"), where="--labels labels.csv")
    rows.columns, rows.files, rows.lines, rows.values   # values: 1, 0 or NaN (blank cell)

Every problem is one line that names the file, the line and what to do. A label value is
1 or 0 (-1 also means 0, as in CelebA; on/off, true/false and yes/no are accepted too); a
blank cell is "unknown". Nothing else is a label: `5`, `0.5`, `inf` and `nan` are refused.
pandas is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from starcli.errors import StarcliError, UsageError

ON_WORDS = frozenset({"1", "+1", "on", "true", "yes"})
OFF_WORDS = frozenset({"0", "-1", "off", "false", "no"})
VALUE_ADVICE = "use 1 or 0 (or -1 for 0)"
CELEBA_PARTITIONS = {0: "train", 1: "valid", 2: "test"}
_TOO_MANY = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


@dataclass(frozen=True)
class Source:
    """A table file and how to talk about it: `where` starts every message ("--labels x.csv"
    or the path), `fix` ends it when there is one next step (e.g. re-fetch a download), and
    `error` is the exception raised (UsageError for user files, exit 2)."""

    path: Path
    where: str
    fix: str = ""
    error: type[StarcliError] = UsageError

    def fail(self, line: int | None, message: str) -> NoReturn:
        at = f" line {line}" if line else ""
        raise self.error(" ".join(f"{self.where}{at}: {message} {self.fix}".split()))


@dataclass(frozen=True)
class LabelRows:
    """The rows of a label CSV, blank lines dropped, in file order."""

    path: Path
    columns: tuple[str, ...]  # label column names, header order (the `file` column left out)
    files: tuple[str, ...]  # the `file` cell of each row, stripped, "\\" turned into "/"
    lines: tuple[int, ...]  # 1-based line of each row in the file
    values: np.ndarray  # float32 (rows, columns): 1.0, 0.0 or NaN where the cell is blank


@dataclass(frozen=True)
class CelebaAttributes:
    """`list_attr_celeba.txt` by body line (file line 3 is body line 0): blank lines are kept
    (the official StarGAN split shuffles them too)."""

    files: list[str | None]  # None for a blank line
    bits: np.ndarray  # uint8 (lines, attributes): 1 or 0; rows of malformed lines are 0
    malformed: np.ndarray  # bool (lines,): wrong field count or a value that is not -1/0/1

    def line_of(self, row: int) -> int:
        return row + 3


def read_text(src: Source) -> str:
    """The file as text: UTF-8 (a byte-order mark is dropped), or one line naming where the
    first byte that is not UTF-8 sits."""
    try:
        data = src.path.read_bytes()
    except OSError as exc:
        src.fail(None, f"cannot read it ({exc.strerror or exc}).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        advice = "" if src.fix else "Save it as UTF-8 (in a spreadsheet: CSV UTF-8)."
        src.fail(line, f"byte 0x{data[exc.start]:02x} is not UTF-8 text. {advice}")


def _frame(text: str, src: Source, *, skip: int, width: int, whitespace: bool):
    """Cells after `skip` lines as a DataFrame with columns 0..width: column 0 is text, the
    others numbers where every cell is a number, and column `width` is a spare that holds a
    cell only on lines with one field too many (callers decide what that means). Blank lines
    stay as all-NaN rows, so row i is line skip + i + 1. A line with two or more fields too
    many is an error naming it."""
    import warnings

    import pandas as pd

    options = {"sep": r"\s+", "quoting": csv.QUOTE_NONE} if whitespace else {"sep": ","}
    too_many = f"more fields than the {width} expected"
    try:
        with warnings.catch_warnings():
            # pandas only warns (and drops cells) when the first line is the long one.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), header=None, skiprows=skip,
                               names=range(width + 1), index_col=False, dtype={0: str},
                               keep_default_na=False, na_values=[""], skip_blank_lines=False,
                               engine="c", **options)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({k: pd.Series(dtype=str if k == 0 else float)
                             for k in range(width + 1)})
    except pd.errors.ParserWarning:
        line = io.StringIO(text).readlines()[skip]
        cells = line.split() if whitespace else next(csv.reader([line]))
        src.fail(skip + 1, f"{len(cells)} fields, {too_many}.")
    except pd.errors.ParserError as exc:
        m = _TOO_MANY.search(str(exc))
        if m:
            src.fail(int(m[2]), f"{m[3]} fields, {too_many}.")
        src.fail(None, f"cannot be parsed ({' '.join(str(exc).split())}).")


def _refuse_long_lines(frame, width: int, src: Source, first_line: int) -> None:
    long = frame[width].notna().to_numpy(bool)
    if long.any():
        src.fail(first_line + int(np.argmax(long)),
                 f"{width + 1} fields, more fields than the {width} expected.")


def _binary(column) -> tuple[np.ndarray, np.ndarray]:
    """(values float32: 1, 0 or NaN for blank; bad bool mask) of one column of cells."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(np.float32), np.zeros(len(column), bool)
    if pd.api.types.is_numeric_dtype(column):
        x = column.to_numpy(np.float64)
        blank = np.isnan(x)
        bad = ~(blank | (x == 1) | (x == 0) | (x == -1))
        return np.where(blank, np.nan, x > 0).astype(np.float32), bad
    text = column.astype("string").str.strip().str.lower()
    blank = (text.isna() | (text == "")).to_numpy(bool)
    # copy=True: pandas hands out read-only views (copy-on-write) and these are updated below.
    on = text.isin(ON_WORDS).to_numpy(bool, copy=True)
    off = text.isin(OFF_WORDS).to_numpy(bool, copy=True)
    # "1.0" or "-1.0" (a spreadsheet's export) are the same numbers; "0.5" and "inf" are not.
    number = pd.to_numeric(text.where(~(blank | on | off)), errors="coerce").to_numpy(np.float64)
    on |= number == 1
    off |= (number == 0) | (number == -1)
    values = np.where(on, 1.0, np.where(off, 0.0, np.nan)).astype(np.float32)
    return values, ~(blank | on | off)


def _cell_text(frame, row: int, col: int) -> str:
    value = frame.iat[row, col]
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()


def _header(text: str, src: Source) -> tuple[int, list[str]]:
    """(blank lines before the header, its cells)."""
    import pandas as pd

    skip = 0
    for line in io.StringIO(text):
        if line.strip():
            break
        skip += 1
    else:
        src.fail(None, "the file is empty; it needs a header: file,<label>,<label>,...")
    try:
        cells = pd.read_csv(io.StringIO(text), header=None, skiprows=skip, nrows=1, dtype=str,
                            keep_default_na=False).iloc[0].tolist()
    except pd.errors.ParserError as exc:
        src.fail(skip + 1, f"the header cannot be parsed ({' '.join(str(exc).split())}).")
    return skip, [str(c).strip() for c in cells]


def read_label_csv(path: Path, *, where: str | None = None, blanks: bool = True) -> LabelRows:
    """A label CSV: a `file` column, then one column per label name, one row per image.

    `where` starts every error message (default: the path). With `blanks=False` a blank
    cell is an error (prepare needs every value); translate keeps them as "unknown".
    Rows with a blank `file` cell and no values (blank lines) are dropped; a row with more
    cells than the header names is an error. Raises UsageError (one line) for any problem.
    """
    path = Path(path)
    src = Source(path, where or str(path))
    text = read_text(src)
    skip, header = _header(text, src)
    if header[0].lower() != "file":
        src.fail(skip + 1, f"the first column must be 'file', not '{header[0]}'; the header is "
                           "file,<label>,<label>,...")
    frame = _frame(text, src, skip=skip + 1, width=len(header), whitespace=False)
    _refuse_long_lines(frame, len(header), src, skip + 2)
    frame = frame.iloc[:, :len(header)]
    files = frame[0].astype("string").str.strip().str.replace("\\", "/", regex=False)
    keyless = (files.isna() | (files == "")).to_numpy(bool)
    blank_cells = frame.iloc[:, 1:].isna().to_numpy(bool, copy=True)
    first_line = skip + 2
    keep = []
    for k in range(1, len(header)):
        if header[k]:
            keep.append(k)
        elif not blank_cells[:, k - 1].all():  # a nameless column is fine while it is empty
            row = int(np.argmax(~blank_cells[:, k - 1]))
            src.fail(first_line + row, f"column {k + 1} has values but no name in the header; "
                                       "name it or delete it.")
    names = [header[k] for k in keep]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        src.fail(skip + 1, f"the header names {', '.join(twice)} twice; name each label once.")
    rows = np.flatnonzero(~(keyless & blank_cells.all(axis=1)))  # drop blank lines
    if keyless[rows].any():
        row = int(rows[np.argmax(keyless[rows])])
        src.fail(first_line + row, "the file name is blank; give one, or delete the row.")
    values = np.full((len(rows), len(keep)), np.nan, np.float32)
    for j, k in enumerate(keep):
        column, bad = _binary(frame[k].iloc[rows])
        if bad.any():
            row = int(rows[np.argmax(bad)])
            src.fail(first_line + row, f"column '{header[k]}': "
                                       f"'{_cell_text(frame, row, k)}' is not a label value; "
                                       f"{VALUE_ADVICE}.")
        if not blanks and np.isnan(column).any():
            row = int(rows[np.argmax(np.isnan(column))])
            src.fail(first_line + row, f"column '{header[k]}' is blank; give 1 or 0.")
        values[:, j] = column
    return LabelRows(path=path, columns=tuple(names),
                     files=tuple(files.iloc[rows].tolist()),
                     lines=tuple(int(first_line + r) for r in rows), values=values)


def read_celeba_attributes(path: Path, attributes: Sequence[str], *, fix: str,
                           error: type[StarcliError]) -> CelebaAttributes:
    """`list_attr_celeba.txt`: a count line, a header naming `attributes` in order, then
    `<file> <-1|1> x len(attributes)` per line. A wrong header is an error; a malformed line
    is marked (prepare skips its file) so one bad line does not end the run."""
    src = Source(Path(path), str(path), fix, error)
    text = read_text(src)
    head = io.StringIO(text)
    head.readline()
    header = head.readline().split()
    if header != list(attributes):
        missing = [n for n in attributes if n not in header]
        src.fail(2, f"the header line does not list the {len(attributes)} attributes "
                    f"(missing {', '.join(missing[:3]) or 'none'}; order or count differs).")
    width = len(header) + 1
    # A line with one value too many is marked malformed (two or more: an error).
    frame = _frame(text, src, skip=2, width=width, whitespace=True)
    names = frame[0]
    blank = names.isna().to_numpy(bool)
    values = np.zeros((len(frame), width - 1), np.float32)
    malformed = frame[width].notna().to_numpy(bool, copy=True)
    for k in range(1, width):
        column, bad = _binary(frame[k])
        malformed |= bad | np.isnan(column)
        values[:, k - 1] = np.nan_to_num(column)
    malformed &= ~blank
    values[malformed] = 0
    files = [None if b else str(n) for n, b in zip(names.tolist(), blank, strict=True)]
    return CelebaAttributes(files=files, bits=values.astype(np.uint8), malformed=malformed)


def read_celeba_partition(path: Path, *, fix: str, error: type[StarcliError]) -> dict[str, str]:
    """`list_eval_partition.txt`: `<file> <0|1|2>` per line -> {file: train|valid|test}."""
    src = Source(Path(path), str(path), fix, error)
    frame = _frame(read_text(src), src, skip=0, width=2, whitespace=True)
    _refuse_long_lines(frame, 2, src, 1)
    frame = frame[frame[0].notna()]
    import pandas as pd

    numeric = pd.to_numeric(frame[1], errors="coerce")
    bad = ~numeric.isin(list(CELEBA_PARTITIONS)).to_numpy(bool)
    if bad.any():
        i = int(np.argmax(bad))
        shown = "a missing value" if pd.isna(frame.iat[i, 1]) else f"'{_cell_text(frame, i, 1)}'"
        src.fail(int(frame.index[i]) + 1, f"{shown} is not a partition (0 train, 1 valid, "
                                          "2 test).")
    return dict(zip(frame[0].tolist(),
                    (CELEBA_PARTITIONS[int(v)] for v in numeric.tolist()), strict=True))


__all__ = ["CelebaAttributes", "LabelRows", "Source", "read_celeba_attributes",
           "read_celeba_partition", "read_label_csv", "read_text"]
