"""Counts that tests keep for the closing notes (faults injected, bad params tried), printed by conftest."""
from collections import Counter, defaultdict

TALLIES: defaultdict[str, Counter] = defaultdict(Counter)
