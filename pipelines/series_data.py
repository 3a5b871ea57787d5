"""Price series for next-value models: load a CSV, validate it, split it in time.

CSV layouts accepted (column names matched case-insensitively, ignoring spaces
and underscores, so Yahoo's "Adj Close" and "adj_close" are the same column):

    Date, Open, High, Low, Close, Adj Close, Volume        (Yahoo)
    Date, Open, High, Low, Close, Volume                   (Stooq)
    Ticker (or Symbol), Date, ...                          several series in one file

Rows are sorted by date. Unparseable or duplicate dates, non-numeric cells and
non-positive prices are refused with the CSV line that holds them; missing
values are forward-filled, counted, and refused above a stated share.

The embedded default is real daily prices shipped in a pip package, so the
demo and tests need no download: `bokeh_sampledata.stocks` (Quandl WIKI
prices, public domain: AAPL, GOOG, IBM, MSFT 2000-2013 and FB 2012-2013).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from model.config import UsageError
from pipelines.cli import existing_file

DEFAULT_SOURCE = "bokeh_sampledata.stocks"
DEFAULT_TICKER = "MSFT"
MAX_MISSING_SHARE = 0.05  # forward-filling more than this would invent the series
DATE_NAMES = ("date", "datetime", "timestamp", "time")
TICKER_NAMES = ("ticker", "symbol", "name")
PRICE_NAMES = ("open", "high", "low", "close", "adjclose")


def column_key(column: str) -> str:
    """Normalised column name: 'Adj Close', 'adj_close' and 'AdjClose' all give 'adjclose'."""
    return re.sub(r"[\s_\-]+", "", str(column)).lower()


@dataclasses.dataclass
class PriceSeries:
    """One validated daily series.

    Attributes:
        dates: Sorted dates, `[T]`.
        values: float64 `[T, F]`, the feature columns in `features` order.
        features: Names of the columns of `values` (as spelled in the CSV).
        target: Name of the predicted column (one of `features`).
        ticker: The ticker, when the file held several.
        missing_filled: Number of cells forward-filled.
        source: Where the data came from.
    """

    dates: np.ndarray
    values: np.ndarray
    features: list[str]
    target: str
    ticker: Optional[str]
    missing_filled: int
    source: str

    @property
    def target_index(self) -> int:
        return self.features.index(self.target)

    @property
    def target_values(self) -> np.ndarray:
        return self.values[:, self.target_index]


def default_prices() -> pd.DataFrame:
    """The packaged daily prices: columns Ticker, Date, Open, High, Low, Close, Volume, Adj Close."""
    try:
        from bokeh_sampledata.stocks import data
    except ImportError:
        raise UsageError("the default prices need the bokeh-sampledata package: "
                         "pip install -r requirements.txt, or pass --csv FILE") from None
    frame = data.rename(columns={"ticker": "Ticker", "date": "Date", "open": "Open", "high": "High",
                                 "low": "Low", "close": "Close", "volume": "Volume", "adj_close": "Adj Close"})
    frame["Date"] = pd.to_datetime(frame["Date"]).dt.strftime("%Y-%m-%d")
    return frame


def is_price_column(column: str, target: str) -> bool:
    """Prices must be positive and are logged; other columns (volume) may be 0 and get log1p."""
    return column_key(column) in PRICE_NAMES or column == target


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV file as strings (validation and parsing happen in `load_prices`)."""
    path = existing_file(path, "--csv", "a CSV file with a Date column and prices")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise UsageError(f"--csv {path} is empty; pass a CSV file with a header row and prices") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UsageError(f"--csv {path} is not a readable CSV file ({str(error).splitlines()[0]})") from None
    if frame.empty:
        raise UsageError(f"--csv {path} has a header but no rows; add some prices")
    return frame


def _find(frame: pd.DataFrame, names: Sequence[str]) -> Optional[str]:
    keys = {column_key(column): column for column in frame.columns}
    return next((keys[column_key(name)] for name in names if column_key(name) in keys), None)


def _column(frame: pd.DataFrame, name: str, role: str) -> str:
    found = _find(frame, [name])
    if found is None:
        raise UsageError(f"unknown {role} column {name!r}; the CSV has: {', '.join(map(str, frame.columns))}")
    return found


def load_prices(frame: pd.DataFrame, source: str, ticker: Optional[str] = None, target: Optional[str] = None,
                features: Optional[Sequence[str]] = None,
                max_missing_share: float = MAX_MISSING_SHARE) -> PriceSeries:
    """Validate a price table and turn it into one sorted, complete series.

    Args:
        frame: The CSV's cells, as strings (from `read_csv`) or already typed.
        source: Where it came from (recorded in summaries and error messages).
        ticker: Which series, when the table holds a Ticker/Symbol column.
        target: The predicted column (default: Adj Close if present, else Close).
        features: Input columns (default: the target alone).
        max_missing_share: Refuse more forward-filled cells than this share.

    Returns:
        A `PriceSeries`.

    Raises:
        UsageError: With the CSV line number (header = line 1) of the first bad cell.
    """
    frame = frame.reset_index(drop=True)
    line = lambda i: int(i) + 2  # noqa: E731 - data row i is CSV line i + 2
    date_column = _find(frame, DATE_NAMES)
    if date_column is None:
        raise UsageError(f"{source}: no date column (looked for {', '.join(DATE_NAMES)}); "
                         f"the CSV has: {', '.join(map(str, frame.columns))}")

    ticker_column = _find(frame, TICKER_NAMES)
    if ticker_column is not None:
        present = sorted(frame[ticker_column].astype(str).unique())
        if ticker is None and len(present) > 1:
            raise UsageError(f"{source} holds several series; pick one with --ticker ({', '.join(present)})")
        ticker = ticker or present[0]
        if ticker not in present:
            raise UsageError(f"unknown --ticker {ticker!r}; {source} has: {', '.join(present)}")
        frame = frame[frame[ticker_column].astype(str) == ticker]
    elif ticker is not None:
        raise UsageError(f"--ticker {ticker} given, but {source} has no Ticker or Symbol column")

    if target is None:
        target = _find(frame, ["Adj Close"]) or _find(frame, ["Close"])
        if target is None:
            raise UsageError(f"{source}: no Adj Close or Close column; name the target with --target "
                             f"(the CSV has: {', '.join(map(str, frame.columns))})")
    target = _column(frame, target, "--target")
    feature_columns = [_column(frame, name, "--features") for name in (features or [target])]
    if target not in feature_columns:
        feature_columns = [target] + feature_columns

    dates = pd.to_datetime(frame[date_column], errors="coerce", format="mixed")
    bad = dates.isna()
    if bad.any():
        i = bad.idxmax()
        raise UsageError(f"{source} line {line(i)}: unparseable date {frame.at[i, date_column]!r}; "
                         "use a format such as 2013-03-01")
    repeats = dates.duplicated(keep="first")
    if repeats.any():
        second = repeats.idxmax()  # the first row whose date was seen before
        first = dates[dates == dates[second]].index[0]
        raise UsageError(f"{source} lines {line(first)} and {line(second)}: duplicate date "
                         f"{dates[second].date()}; keep one row per day")

    values = pd.DataFrame(index=frame.index)
    for column in feature_columns:
        cells = frame[column]
        text = cells.astype(str).str.strip()
        empty = cells.isna() | text.isin(["", "nan", "NaN", "null", "NA", "N/A"])
        numbers = pd.to_numeric(text.where(~empty), errors="coerce")
        not_numeric = numbers.isna() & ~empty
        if not_numeric.any():
            i = not_numeric.idxmax()
            raise UsageError(f"{source} line {line(i)}: column {column!r} holds {cells[i]!r}, not a number")
        non_positive = (numbers <= 0) & is_price_column(column, target)
        if non_positive.any():
            i = non_positive.idxmax()
            raise UsageError(f"{source} line {line(i)}: {column} is {numbers[i]:g}; prices must be > 0")
        values[column] = numbers

    order = np.argsort(dates.to_numpy(), kind="stable")
    values = values.iloc[order].reset_index(drop=True)
    missing = int(values.isna().sum().sum())
    if missing and values.iloc[0].isna().any():
        raise UsageError(f"{source}: the first row (by date) has missing values, which cannot be "
                         "forward-filled; drop it or fill it in")
    if missing > max_missing_share * values.size:
        raise UsageError(f"{source}: {missing} missing cells ({missing / values.size:.1%}) is above the "
                         f"{max_missing_share:.0%} that may be forward-filled; clean the data first")
    values = values.ffill()
    return PriceSeries(dates=dates.to_numpy()[order], values=values.to_numpy(np.float64),
                       features=list(feature_columns), target=target, ticker=ticker,
                       missing_filled=missing, source=source)


@dataclasses.dataclass(frozen=True)
class Split:
    """Chronological boundaries: train [0, train_end), validation [train_end, val_end), test [val_end, T)."""

    train_end: int
    val_end: int
    total: int


def chronological_split(total: int, window: int, horizon: int, val_fraction: float = 0.15,
                        test_fraction: float = 0.15) -> Split:
    """Split T days in time order; each span must hold at least one (window, horizon) example.

    Raises:
        UsageError: If the series is too short (says how many rows are needed). The settings' own
            ranges are checked by `model.config.ForecastConfig` and `SeriesDataConfig`.
    """
    val_end = total - int(round(total * test_fraction))
    train_end = val_end - int(round(total * val_fraction))
    example = window + horizon  # one input window plus the values it predicts
    spans = (train_end, val_end - train_end, total - val_end)
    if min(spans) < example:
        needed = int(np.ceil(example / min(val_fraction, test_fraction, 1 - val_fraction - test_fraction)))
        raise UsageError(f"too few rows: {total}, but --window {window} and --horizon {horizon} need at least "
                         f"{needed} so that training, validation and test each hold one window; "
                         "use a longer series or a shorter --window")
    return Split(train_end=train_end, val_end=val_end, total=total)


# -- examples: windows and what follows them ---------------------------------------------

def origins_in(span_start: int, span_end: int, window: int, horizon: int) -> np.ndarray:
    """Forecast origins t (last observed day) whose H target days all lie in [span_start, span_end).

    The input window may reach back before `span_start`: those days are the
    past, known at forecast time. Nothing at or after `span_end` is touched.
    """
    return np.arange(max(span_start - 1, window - 1), span_end - horizon)


def windows_at(values: np.ndarray, origins: np.ndarray, window: int) -> np.ndarray:
    """The input windows `[n, W, F]` ending at each origin."""
    return values[origins[:, None] + np.arange(1 - window, 1)[None, :]]


def future_at(target: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """The H target values `[n, H]` after each origin."""
    return target[origins[:, None] + np.arange(1, horizon + 1)[None, :]]


def make_dataset(values: np.ndarray, z: np.ndarray, origins: np.ndarray, window: int, batch_size: int,
                 shuffle: bool, seed: int = 0):
    """Windows ending at consecutive `origins`, paired with their standardised targets `z`."""
    import keras

    first_start = int(origins[0]) - window + 1
    data = values[first_start:int(origins[-1]) + 1].astype(np.float32)
    return keras.utils.timeseries_dataset_from_array(
        data, targets=z.astype(np.float32), sequence_length=window, batch_size=batch_size,
        shuffle=shuffle, seed=seed)
