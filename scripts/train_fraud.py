"""Train the `fraud` model and export it to ONNX with its serving manifest.

Reads the CSV written by scripts/build-training-set.ts (columns: the model inputs in
FRAUD_INPUT_NAMES order, then `label`; rows in event-time order), trains a gradient-boosted
classifier on the first 80% of the rows, evaluates on the last 20% (a time-ordered split: the model
never sees the future), chooses the decision thresholds on that validation set, exports ONNX
(input `input` float [N, n_features]; outputs `label` int64 [N] and `probabilities` float [N, 2]),
checks onnxruntime against scikit-learn, and writes:

  <out-dir>/model.onnx
  <out-dir>/model.json   name, version, task, sha256, inputs, signature, training, thresholds, metrics,
                         drift reference
  <parity-fixture>       200 input rows (validation rows, some with -1 inputs) with scikit-learn's and
                         onnxruntime's probabilities (checked by test/unit/parity.test.ts)

--meta is the JSON scripts/train-fraud.ts writes: the signature's input sources (FRAUD_INPUT_SOURCES),
the event time of every CSV row (for the training window), and how the set was made.

Usage: python scripts/train_fraud.py --csv .stack/train/fraud.csv --out-dir models/fraud \
         --seed 42 --count 200000 --meta .stack/train/fraud.meta.json \
         --parity-fixture test/fixtures/parity/fraud.json [--expected-inputs a,b,c]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from train_common import (binary_signature, check_signature, csv_header, csv_matrix, export_model, fail, finish, manifest_head,
                          manifest_tail, reference_profiles)

MODEL_NAME = "fraud"
MODEL_VERSION = "1.0.0"
RANDOM_STATE = 42
VALIDATION_SHARE = 0.2
# Review: the lowest threshold whose alerts are at least this precise; block: far more certain.
REVIEW_MIN_PRECISION = 0.5
BLOCK_MIN_PRECISION = 0.95
# Validation probabilities must differ by less than this (the parity fixture's limit is 1e-5: train_common.py).
MAX_ONNX_DIFF = 1e-4


def load(path: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    header = csv_header(path)
    if not header or header[-1] != "label":
        fail(f"{path}: last column must be 'label', got {header[-1:]}")
    data = csv_matrix(path, header)
    x = data[:, :-1].astype(np.float32)
    y = data[:, -1].astype(np.int64)
    return header[:-1], x, y, data[:, :-1]


def at_threshold(scores: np.ndarray, y: np.ndarray, t: float) -> dict:
    flagged = scores >= t
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    fn = int(np.sum(~flagged & (y == 1)))
    return {
        "threshold": t,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "flagged_share": float(np.mean(flagged)),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def choose_threshold(scores: np.ndarray, y: np.ndarray, min_precision: float) -> float:
    """The lowest cut (max recall) whose alerts reach min_precision.

    The cut is placed halfway between two neighbouring distinct scores (then rounded inside that
    gap), so float32 noise between scikit-learn and onnxruntime cannot flip a decision at the edge.
    """
    distinct = np.unique(scores)[::-1]  # descending
    order = np.argsort(-scores, kind="stable")
    s_sorted = scores[order]
    y_sorted = y[order]
    tp_cum = np.cumsum(y_sorted == 1)
    best = None
    for k, s in enumerate(distinct):
        n_flag = int(np.searchsorted(-s_sorted, -s, side="right"))  # rows with score >= s
        tp = int(tp_cum[n_flag - 1])
        if tp / n_flag >= min_precision and tp > 0:
            best = k
    if best is None:
        return float(distinct[0])  # nothing reaches the target: flag only the top score
    hi = float(distinct[best])
    lo = float(distinct[best + 1]) if best + 1 < len(distinct) else 0.0
    mid = (hi + lo) / 2
    for digits in range(2, 12):
        r = round(mid, digits)
        if lo < r <= hi:
            return r
    return mid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--expected-inputs", default=None, help="comma-separated FRAUD_INPUT_NAMES to check the header against")
    ap.add_argument("--meta", required=True, help="JSON from train-fraud.ts: signature inputs, row event times, source")
    ap.add_argument("--parity-fixture", required=True)
    args = ap.parse_args()
    with open(args.meta) as f:
        meta = json.load(f)

    t0 = time.time()
    names, x, y, raw = load(args.csv)
    if args.expected_inputs is not None and names != args.expected_inputs.split(","):
        fail(f"CSV inputs {names} != expected {args.expected_inputs.split(',')}")
    check_signature(names, meta["signature_inputs"])
    n = len(y)
    row_ts = meta["row_ts"]
    if len(row_ts) != n:
        fail(f"--meta has {len(row_ts)} row times for {n} rows")
    n_train = int(round(n * (1 - VALIDATION_SHARE)))
    x_tr, y_tr, x_va, y_va = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    if y_tr.sum() == 0 or y_va.sum() == 0 or y_va.sum() == len(y_va):
        fail("both splits need fraud and legit rows")
    print(f"loaded {n} rows x {len(names)} inputs in {time.time() - t0:.1f}s; "
          f"train {len(y_tr)} ({int(y_tr.sum())} fraud), validation {len(y_va)} ({int(y_va.sum())} fraud)")

    t1 = time.time()
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, learning_rate=0.1, random_state=RANDOM_STATE)
    model.fit(x_tr, y_tr)
    print(f"trained {model.n_estimators_} trees in {time.time() - t1:.1f}s")

    p_tr = model.predict_proba(x_tr)[:, 1]
    p_va = model.predict_proba(x_va)[:, 1]
    auc_tr = float(roc_auc_score(y_tr, p_tr))
    auc = float(roc_auc_score(y_va, p_va))
    ap_va = float(average_precision_score(y_va, p_va))
    review = choose_threshold(p_va, y_va, REVIEW_MIN_PRECISION)
    block = choose_threshold(p_va, y_va, BLOCK_MIN_PRECISION)
    if block < review:
        block = review
    at_review = at_threshold(p_va, y_va, review)
    at_block = at_threshold(p_va, y_va, block)
    print(f"validation ROC AUC {auc:.4f} (train {auc_tr:.4f}), average precision {ap_va:.4f}")
    for label, m in (("review", at_review), ("block", at_block)):
        print(f"  {label:6s} >= {m['threshold']:.6g}: precision {m['precision']:.3f} recall {m['recall']:.3f} "
              f"flagged {100 * m['flagged_share']:.2f}% (tp {m['tp']} fp {m['fp']} fn {m['fn']})")
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        m = at_threshold(p_va, y_va, t)
        print(f"  at {t:.1f}: precision {m['precision']:.3f} recall {m['recall']:.3f}")
    importances = sorted(zip(names, model.feature_importances_), key=lambda kv: -kv[1])
    print("  top inputs: " + ", ".join(f"{k} {v:.3f}" for k, v in importances[:6]))

    ex = export_model(model, MODEL_NAME, MODEL_VERSION, names, x_va, MAX_ONNX_DIFF, args.out_dir, limit_passes=False)
    manifest = {
        **manifest_head(ex, "fraud"),
        "owner": "fraud-team",
        "description": "Scores a transaction by the probability that it is fraud; rules block or review it by the thresholds.",
        "signature": binary_signature(meta["signature_inputs"], "probability the transaction is fraud"),
        "training": {
            "from_ts": int(row_ts[0]),
            "to_ts": int(row_ts[n_train - 1]),
            "rows": int(n_train),
            "source": meta["source"],
            "validation": {"from_ts": int(row_ts[n_train]), "to_ts": int(row_ts[-1]), "rows": int(n - n_train)},
        },
        "thresholds": {"block": block, "review": review},
        "threshold_policy": {
            "rule": "block if score >= block, else review if score >= review, else allow",
            "review_min_precision": REVIEW_MIN_PRECISION,
            "block_min_precision": BLOCK_MIN_PRECISION,
        },
        "metrics": {
            "split": "time-ordered: first 80% of rows train, last 20% validation",
            "auc": auc,
            "auc_train": auc_tr,
            "average_precision": ap_va,
            "review": at_review,
            "block": at_block,
            "train_rows": int(len(y_tr)),
            "train_fraud": int(y_tr.sum()),
            "validation_rows": int(len(y_va)),
            "validation_fraud": int(y_va.sum()),
            "onnx_max_abs_diff": ex.diff,
        },
        "estimator": {
            "type": "sklearn.ensemble.GradientBoostingClassifier",
            "n_estimators": model.n_estimators,
            "max_depth": model.max_depth,
            "learning_rate": model.learning_rate,
            "random_state": RANDOM_STATE,
            "feature_importances": {k: float(v) for k, v in zip(names, model.feature_importances_)},
        },
        **manifest_tail(
            ex,
            {"seed": args.seed, "count": args.count, "generator": "sim/transactions.ts via scripts/build-training-set.ts"},
            reference_profiles(names, raw[n_train:], ex.sess.run(["probabilities"], {"input": x_va})[0][:, 1]),
            "validation split: every model input as served (float64) and the score (onnxruntime's positive-class probability)",
        ),
    }
    finish(ex, manifest, args.parity_fixture, model, x_va, y_va, x, RANDOM_STATE, t0)


if __name__ == "__main__":
    main()
