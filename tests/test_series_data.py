"""Loading price CSVs: layouts, validation with line numbers, missing values, the split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model.config import UsageError
from pipelines.series_data import chronological_split, default_prices, load_prices, read_csv

YAHOO = """Date,Open,High,Low,Close,Adj Close,Volume
2020-01-03,10,11,9,10.5,5.25,100
2020-01-02,10,11,9,10.0,5.00,120
2020-01-06,10,11,9,11.0,5.50,0
"""
STOOQ = """date,open,high,low,close,volume
2020-01-02,10,11,9,10.0,120
2020-01-03,10,11,9,10.5,100
"""


def load_text(tmp_path, text, **kwargs):
    path = tmp_path / "prices.csv"
    path.write_text(text)
    return load_prices(read_csv(path), str(path), **kwargs)


def test_yahoo_layout_defaults_to_adj_close_and_sorts_by_date(tmp_path):
    series = load_text(tmp_path, YAHOO)
    assert series.target == "Adj Close" and series.features == ["Adj Close"]
    np.testing.assert_allclose(series.target_values, [5.0, 5.25, 5.5])
    assert str(series.dates[0])[:10] == "2020-01-02"


def test_stooq_layout_defaults_to_close_and_matches_names_case_insensitively(tmp_path):
    series = load_text(tmp_path, STOOQ, target="CLOSE", features=["Close", "VOLUME"])
    assert series.target == "close" and series.features == ["close", "volume"]
    np.testing.assert_allclose(series.values, [[10.0, 120], [10.5, 100]])


def test_several_tickers_need_a_choice(tmp_path):
    text = "Symbol,Date,Close\nAAA,2020-01-02,1\nBBB,2020-01-02,2\nAAA,2020-01-03,3\n"
    with pytest.raises(UsageError, match=r"pick one with --ticker \(AAA, BBB\)"):
        load_text(tmp_path, text)
    with pytest.raises(UsageError, match=r"unknown --ticker 'CCC'.*has: AAA, BBB"):
        load_text(tmp_path, text, ticker="CCC")
    np.testing.assert_allclose(load_text(tmp_path, text, ticker="AAA").target_values, [1, 3])


def test_missing_values_are_forward_filled_and_counted(tmp_path):
    rows = "\n".join(f"2020-02-{d:02d},{'' if d in (5, 6) else d}" for d in range(1, 29))
    series = load_text(tmp_path, "Date,Close\n" + rows + "\n", max_missing_share=0.1)
    assert series.missing_filled == 2
    np.testing.assert_allclose(series.target_values[3:7], [4, 4, 4, 7])
    with pytest.raises(UsageError, match=r"2 missing cells \(7.1%\) is above the 5%"):
        load_text(tmp_path, "Date,Close\n" + rows + "\n")


@pytest.mark.parametrize("text, kwargs, message", [
    ("Day,Close\n1,2\n", {}, "no date column"),
    ("Date,Close\n2020-01-02,1\n", {"target": "Adj Close"}, "unknown --target column 'Adj Close'; the CSV has: Date, Close"),
    ("Date,Close\n2020-01-02,1\n", {"features": ["Volume"]}, "unknown --features column 'Volume'"),
    ("Date,Close\n2020-01-02,1\nnot a day,2\n", {}, "line 3: unparseable date 'not a day'"),
    ("Date,Close\n2020-01-02,1\n2020-01-03,2\n2020-01-02,3\n", {}, "lines 2 and 4: duplicate date 2020-01-02"),
    ("Date,Close\n2020-01-02,1\n2020-01-03,2\n2020-01-02,3\n2020-01-03,4\n", {},
     "lines 2 and 4: duplicate date 2020-01-02"),
    ("Date,Close\n2020-01-02,1\n2020-01-03,abc\n", {}, "line 3: column 'Close' holds 'abc', not a number"),
    ("Date,Close\n2020-01-02,1\n2020-01-03,-5\n", {}, "line 3: Close is -5; prices must be > 0"),
    ("Date,Close\n2020-01-02,\n2020-01-03,2\n", {}, "first row (by date) has missing values"),
    ("Date,Close\n2020-01-02,1\n", {"ticker": "X"}, "has no Ticker or Symbol column"),
])
def test_bad_tables_name_the_line_and_the_fix(tmp_path, text, kwargs, message):
    with pytest.raises(UsageError) as error:
        load_text(tmp_path, text, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text(""), "is empty"),
    (lambda p: p.write_text("Date,Close\n"), "has a header but no rows"),
])
def test_unreadable_files(tmp_path, setup, message):
    path = tmp_path / "prices.csv"
    setup(path)
    with pytest.raises(UsageError, match=message):
        read_csv(path)


def test_split_is_chronological_and_says_how_many_rows_are_needed():
    split = chronological_split(1000, window=30, horizon=5)
    assert (split.train_end, split.val_end, split.total) == (700, 850, 1000)
    with pytest.raises(UsageError, match=r"too few rows: 100, but --window 30 and --horizon 5 need at least 234"):
        chronological_split(100, window=30, horizon=5)


def test_default_prices_are_real_daily_prices_in_the_csv_layout(tmp_path):
    frame = default_prices()
    assert set(frame["Ticker"]) >= {"AAPL", "GOOG", "IBM", "MSFT"}
    series = load_prices(frame, "default", ticker="MSFT")
    assert series.target == "Adj Close" and len(series.dates) > 3000
    path = tmp_path / "prices.csv"
    frame.to_csv(path, index=False)  # what --write-default-csv writes
    again = load_prices(read_csv(path), str(path), ticker="MSFT")
    np.testing.assert_allclose(again.values, series.values)
    assert isinstance(frame, pd.DataFrame)
