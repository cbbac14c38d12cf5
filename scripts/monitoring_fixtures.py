"""Writes the monitoring fixtures the unit tests check the TypeScript against (run once, commit the output):

    .stack/venv-train/bin/python scripts/monitoring_fixtures.py

- test/fixtures/monitoring/metrics.json: bin counts of a reference and a window with PSI (numpy),
  Jensen-Shannon distance (scipy.spatial.distance.jensenshannon, base 2), KS statistic
  (scipy.stats.ks_2samp on the binned samples), Wasserstein-1 (scipy.stats.wasserstein_distance on the
  bin centers) and the chi-square p-value (scipy.stats.chisquare);
- test/fixtures/monitoring/profiles.json: data sets (numeric with heavy values, missing values,
  degenerate ones, categorical) and the profiles scripts/reference_profile.py makes of them;
- test/fixtures/monitoring/performance.json: labelled scores (ties included) with scikit-learn's ROC AUC,
  log loss and precision, recall and F1 at thresholds, and the expected calibration error over 10
  equal-width bins (numpy).
"""
import json
import os
import sys

import numpy as np
import scipy
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare, ks_2samp, wasserstein_distance

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_profile import categorical_profile, numeric_profile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "test", "fixtures", "monitoring")
EPS = 1e-4


def metric_case(ref_counts, cur_counts, centers):
    p = ref_counts / ref_counts.sum()
    q = cur_counts / cur_counts.sum()
    pf, qf = np.maximum(p, EPS), np.maximum(q, EPS)
    psi = float(np.sum((qf - pf) * np.log(qf / pf)))
    ref_sample = np.repeat(centers, ref_counts)
    cur_sample = np.repeat(centers, cur_counts)
    keep = ref_counts > 0
    f_exp = cur_counts[keep].sum() * p[keep] / p[keep].sum()
    chi = chisquare(cur_counts[keep], f_exp) if keep.sum() > 1 else None
    return {
        "reference": [int(c) for c in ref_counts],
        "counts": [int(c) for c in cur_counts],
        "centers": [float(c) for c in centers],
        "psi": psi,
        "js": float(jensenshannon(p, q, base=2)),
        "ks": float(ks_2samp(ref_sample, cur_sample).statistic),
        "wasserstein": float(wasserstein_distance(centers, centers, p, q)),
        "chi2_statistic": float(chi.statistic) if chi is not None else 0.0,
        "chi2_p": float(chi.pvalue) if chi is not None else 1.0,
    }


def metrics_fixture():
    rng = np.random.default_rng(20261122)
    cases = []
    for i in range(60):
        k = int(rng.integers(2, 16))
        ref = rng.multinomial(int(rng.integers(200, 20000)), rng.dirichlet(np.ones(k) * 2))
        ref[ref == 0] = 1
        shift = [0, 0.05, 0.3, 1.0, 3.0][i % 5]
        probs = rng.dirichlet(np.ones(k) * 2) * shift + ref / ref.sum()
        cur = rng.multinomial(int(rng.integers(20, 5000)), probs / probs.sum())
        if cur.sum() == 0:
            cur[0] = 1
        centers = np.cumsum(rng.exponential(10, k)) - 5
        cases.append(metric_case(ref, cur, centers))
    # Edge cases: identical, an empty window bin, everything in one bin, two bins.
    ref = np.array([100, 200, 300, 400])
    cen = np.array([1.0, 2.0, 3.5, 10.0])
    cases.append(metric_case(ref, ref * 3, cen))
    cases.append(metric_case(ref, np.array([0, 10, 20, 30]), cen))
    cases.append(metric_case(ref, np.array([0, 0, 0, 50]), cen))
    cases.append(metric_case(np.array([900, 100]), np.array([500, 500]), np.array([0.0, 1.0])))
    return {"scipy": scipy.__version__, "numpy": np.__version__, "cases": cases}


def profiles_fixture():
    rng = np.random.default_rng(7)

    def r4(a):
        return [round(float(x), 4) for x in a]

    zeros_then_exp = np.where(rng.random(3000) < 0.6, 0.0, rng.exponential(50, 3000))
    with_missing = r4(rng.normal(100, 15, 2000))
    for i in range(0, 2000, 17):
        with_missing[i] = None
    with_missing[5] = float("nan")
    data = {
        "normal": r4(rng.normal(0, 1, 2000)),
        "lognormal": r4(rng.lognormal(4, 1.2, 3000)),
        "zeros_then_exponential": r4(zeros_then_exp),
        "one_hot_90_10": [1.0 if x < 0.1 else 0.0 for x in rng.random(2000)],
        "constant": [3.0] * 500,
        "poisson_counts": [float(x) for x in rng.poisson(1.3, 2500)],
        "tiny": [5.0, 1.0, 3.0, 3.0, 9.0],
        "with_missing": with_missing,
        "all_missing": [None] * 10,
        "heavy_top": r4(np.where(rng.random(1500) < 0.3, 1.0, rng.random(1500))),
    }
    cases = []
    for name, values in data.items():
        for bins, mc in [(10, None), (5, 50), (20, 1)]:
            cases.append({"data": name, "kind": "numeric", "bins": bins, "min_count": mc,
                          "profile": numeric_profile(values, bins=bins, min_count=mc)})
    cats = list(rng.choice(["PAYMENT", "CASH_OUT", "CASH_IN", "TRANSFER", "DEBIT"], 3000, p=[0.34, 0.35, 0.22, 0.085, 0.005]))
    cats = [str(c) for c in cats] + [None] * 40 + ["rare-1", "rare-2"]
    for mc in [None, 1, 100]:
        cases.append({"data": "transaction_type", "kind": "categorical", "min_count": mc,
                      "profile": categorical_profile(cats, min_count=mc)})
    # JSON has no NaN: a NaN is written as null with its index in nan_at.
    sets = {name: {"values": [None if v is None or v != v else v for v in values],
                   "nan_at": [i for i, v in enumerate(values) if v is not None and v != v]} for name, values in data.items()}
    sets["transaction_type"] = {"values": cats, "nan_at": []}
    return {"data": sets, "cases": cases}


def performance_fixture():
    from sklearn.metrics import log_loss, precision_score, recall_score, f1_score, roc_auc_score
    rng = np.random.default_rng(11)
    cases = []
    for i in range(12):
        n = int(rng.integers(50, 3000))
        y = (rng.random(n) < [0.02, 0.2, 0.5][i % 3]).astype(int)
        if y.sum() == 0:
            y[0] = 1
        raw = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
        # Coarse scores (many ties, as a tree model gives), and an exact 0 and 1 now and then.
        scores = np.round(raw, 2 if i % 2 else 6)
        thresholds = {"block": 0.5, "review": 0.2}
        at = {}
        for name, t in thresholds.items():
            pred = (scores >= t).astype(int)
            at[name] = {"precision": float(precision_score(y, pred, zero_division=np.nan)) if pred.sum() else None,
                        "recall": float(recall_score(y, pred)), "f1": float(f1_score(y, pred)), "flagged": int(pred.sum())}
        bins = np.minimum((scores * 10).astype(int), 9)
        ece = sum((np.sum(bins == b) / n) * abs(y[bins == b].mean() - scores[bins == b].mean()) for b in range(10) if np.any(bins == b))
        cases.append({"scores": [float(x) for x in scores], "labels": [int(x) for x in y], "thresholds": thresholds,
                      "auc": float(roc_auc_score(y, scores)), "log_loss": float(log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1])),
                      "ece": float(ece), "at": at})
    return {"cases": cases}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, doc in [("metrics.json", metrics_fixture()), ("profiles.json", profiles_fixture()), ("performance.json", performance_fixture())]:
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {os.path.join('test', 'fixtures', 'monitoring', name)}")


if __name__ == "__main__":
    main()
