"""Counts that tests keep for the closing notes (faults injected, bad params tried), printed by conftest."""
from collections import Counter, defaultdict

TALLIES: defaultdict[str, Counter] = defaultdict(Counter)
FLOW: dict[str, int] = {}  # the smoke run's rows per stage, in stage order (data through every stage)
