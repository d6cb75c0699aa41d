"""``simstream bench``: simstream against the machine's limits and the designs it replaces.

Add a measurement by appending a function ``(BenchContext) -> list[Row]`` to
``EXTRA_MEASUREMENTS``; its rows join the table, bench.json and the plot.
"""

from consumer.bench.model import EXTRA_MEASUREMENTS, BenchContext, BenchOptions, Measurement, Row
from consumer.bench.runner import run_bench

__all__ = ["EXTRA_MEASUREMENTS", "BenchContext", "BenchOptions", "Measurement", "Row", "run_bench"]
