"""What bench/chain.sh's summaries share: its results file (one JSON object a line) and the
median they report."""

import json


def load(path):
    """Every JSON line of the results file, in order."""
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def median(xs):
    """The median of `xs` (the mean of the middle two for an even count); NaN when empty."""
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2 if xs else float("nan")
