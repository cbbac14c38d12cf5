"""Reference profiles for drift, the Python side of serving/registry/reference.ts: the same algorithm
step by step (so a profile made at training time bins exactly as the online windows do), checked
against the TypeScript implementation on committed fixtures (test/fixtures/monitoring/profiles.json).

Bin convention (BIN_CONVENTION): right-closed. Inner edges e[0] < ... < e[k-1] give k+1 bins: bin 0
holds x <= e[0], bin i holds e[i-1] < x <= e[i], bin k holds x > e[k-1].
"""
import bisect
import math

BIN_CONVENTION = ("right-closed: bin 0 holds x <= edges[0], bin i holds edges[i-1] < x <= edges[i], "
                  "the last bin x > edges[-1]")


def _js_round(x: float) -> float:
    """Math.round(x * 1e12) / 1e12 as JavaScript does it (round half up, not to even)."""
    return math.floor(x * 1e12 + 0.5) / 1e12


def bin_of(edges: list, x: float) -> int:
    """Number of edges strictly below x (bisect_left): the right-closed bin of x."""
    return bisect.bisect_left(edges, x)


def _min_count(n: int, min_count) -> int:
    return min_count if min_count is not None else max(1, math.ceil(n / 100))


def numeric_profile(values, bins: int = 10, min_count=None) -> dict:
    """Quantile edges (inverted CDF), heavy values in a bin of their own, small bins merged; see reference.ts."""
    total_in = len(values)
    s = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    n = len(s)
    missing = _js_round((total_in - n) / total_in) if total_in else 0
    if n == 0:
        return {"kind": "numeric", "edges": [], "proportions": [1], "counts": [0], "centers": [0], "count": 0, "missing": missing}
    mc = _min_count(n, min_count)
    candidates = set()
    for i in range(1, bins):
        candidates.add(s[(i * n + bins - 1) // bins - 1])
    i = 0
    while i < n:
        j = i
        while j < n and s[j] == s[i]:
            j += 1
        if (j - i) * bins >= n:
            candidates.add(s[i])
            if i > 0:
                candidates.add(s[i - 1])
        i = j
    edges = sorted(candidates)
    counts = [0] * (len(edges) + 1)
    for x in s:
        counts[bin_of(edges, x)] += 1
    while len(counts) > 1:
        small = [k for k, c in enumerate(counts) if c < mc]
        if not small:
            break
        i = small[0]
        if i == 0:
            j = 1
        elif i == len(counts) - 1:
            j = i - 1
        else:
            j = i - 1 if counts[i - 1] <= counts[i + 1] else i + 1
        lo = min(i, j)
        counts[lo] += counts[lo + 1]
        del counts[lo + 1]
        del edges[lo]
    sums = [0.0] * len(counts)
    total = 0.0
    for x in s:
        sums[bin_of(edges, x)] += x
        total += x
    mean = total / n
    sq = 0.0
    for x in s:
        sq += (x - mean) * (x - mean)
    return {
        "kind": "numeric",
        "edges": edges,
        "proportions": [_js_round(c / n) for c in counts],
        "counts": counts,
        "centers": [sums[k] / counts[k] for k in range(len(counts))],
        "min": s[0],
        "max": s[-1],
        "mean": mean,
        "std": math.sqrt(sq / n),
        "count": n,
        "missing": missing,
    }


def categorical_profile(values, min_count=None) -> dict:
    freq = {}
    n = 0
    for v in values:
        if not isinstance(v, str):
            continue
        n += 1
        freq[v] = freq.get(v, 0) + 1
    missing = _js_round((len(values) - n) / len(values)) if len(values) else 0
    mc = _min_count(n, min_count)
    named = sorted(((k, c) for k, c in freq.items() if c >= mc), key=lambda kc: (-kc[1], kc[0]))
    other = n - sum(c for _, c in named)
    counts = [c for _, c in named] + [other]
    return {"kind": "categorical", "categories": [k for k, _ in named],
            "proportions": [_js_round(c / n) if n else 0 for c in counts], "counts": counts, "count": n, "missing": missing}
