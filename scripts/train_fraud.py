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
import csv
import hashlib
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

MODEL_NAME = "fraud"
MODEL_VERSION = "1.0.0"
RANDOM_STATE = 42
VALIDATION_SHARE = 0.2
# onnxruntime-node 1.22 (serving) loads these; pinning the opsets keeps the file stable across converters.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# Review: the lowest threshold whose alerts are at least this precise; block: far more certain.
REVIEW_MIN_PRECISION = 0.5
BLOCK_MIN_PRECISION = 0.95
MAX_ONNX_DIFF = 1e-4
# The parity fixture (test/unit/parity.test.ts) holds onnxruntime-node to 1e-5 of scikit-learn.
MAX_FIXTURE_DIFF = 1e-5
FIXTURE_ROWS = 200
MISSING = -1.0


def fail(msg: str) -> None:
    print(f"train_fraud: {msg}", file=sys.stderr)
    sys.exit(1)


def load(path: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    if not header or header[-1] != "label":
        fail(f"{path}: last column must be 'label', got {header[-1:]}")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if data.shape[1] != len(header):
        fail(f"{path}: {data.shape[1]} columns but {len(header)} names")
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


def reference_profile(values: np.ndarray) -> dict:
    """Decile profile for PSI: 9 inner cut points (deduplicated on ties), right-closed bins."""
    values = values.astype(np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
    bins = np.searchsorted(edges, values, side="left")  # number of edges strictly below x
    counts = np.bincount(bins, minlength=len(edges) + 1)
    return {
        "edges": [float(e) for e in edges],
        "proportions": [float(c) / len(values) for c in counts],
        "counts": [int(c) for c in counts],
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "count": int(len(values)),
    }


def parity_rows(x_va: np.ndarray, y_va: np.ndarray, x_all: np.ndarray, n: int = FIXTURE_ROWS) -> np.ndarray:
    """Deterministic rows for the parity fixture (float32): half evenly spread validation rows, a fifth
    positive validation rows, up to a tenth real rows with a missing (-1) input (from any split), and
    the rest validation rows with 1, 2, 3, half or all of their inputs set to -1 (as train_recs.py)."""
    rng = np.random.default_rng(RANDOM_STATE)

    def spread(pool: np.ndarray, k: int) -> np.ndarray:
        return pool[np.linspace(0, len(pool) - 1, min(k, len(pool))).astype(np.int64)] if len(pool) and k > 0 else pool[:0]

    every = spread(np.arange(len(x_va)), n // 2)
    positives = spread(np.flatnonzero(y_va == 1), n // 5)
    real_missing = x_all[spread(np.flatnonzero(np.any(x_all == MISSING, axis=1)), n // 10)]
    k = n - len(every) - len(positives) - len(real_missing)
    synthetic = x_va[rng.choice(len(x_va), size=k, replace=False)].copy()
    width = x_va.shape[1]
    sizes = [1, 2, 3, max(1, width // 2), width]
    for i, row in enumerate(synthetic):
        row[rng.choice(width, size=sizes[i % len(sizes)], replace=False)] = MISSING
    return np.concatenate([x_va[every], x_va[positives], real_missing, synthetic]).astype(np.float32)


def write_fixture(path: str, name: str, sha256: str, rows: np.ndarray, sk: np.ndarray, ort_p: np.ndarray) -> None:
    """The parity fixture: float32 inputs (printed exactly), scikit-learn's and onnxruntime's P(positive)."""
    gap = float(np.max(np.abs(np.asarray(sk, dtype=np.float64) - np.asarray(ort_p, dtype=np.float64))))
    if gap > MAX_FIXTURE_DIFF:
        fail(f"parity fixture: onnxruntime differs from scikit-learn by {gap:.2e} (limit {MAX_FIXTURE_DIFF})")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    doc = {
        "model": name,
        "sha256": sha256,
        "inputs": [[float(v) for v in r] for r in rows.astype(np.float32)],
        "sklearn_proba": [float(p) for p in np.asarray(sk, dtype=np.float64)],
        "onnxruntime_proba": [float(p) for p in np.asarray(ort_p, dtype=np.float64)],
    }
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


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
    if names != [i["name"] for i in meta["signature_inputs"]]:
        fail(f"CSV inputs {names} != signature {[i['name'] for i in meta['signature_inputs']]}")
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

    onx = convert_sklearn(
        model,
        name=MODEL_NAME,
        initial_types=[("input", FloatTensorType([None, len(names)]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onx.doc_string = f"{MODEL_NAME} {MODEL_VERSION}: GradientBoostingClassifier over {','.join(names)}"
    outputs = [o.name for o in onx.graph.output]
    if [i.name for i in onx.graph.input] != ["input"] or outputs != ["label", "probabilities"]:
        fail(f"unexpected ONNX signature: inputs {[i.name for i in onx.graph.input]}, outputs {outputs}")
    onnx.checker.check_model(onx)
    model_bytes = onx.SerializeToString()

    sha256 = hashlib.sha256(model_bytes).hexdigest()
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    o_label, o_proba = sess.run(["label", "probabilities"], {"input": x_va})
    diff = float(np.max(np.abs(o_proba - model.predict_proba(x_va))))
    label_mismatch = int(np.sum(o_label != model.predict(x_va)))
    print(f"onnxruntime vs scikit-learn on {len(y_va)} rows: max |dp| {diff:.2e}, label mismatches {label_mismatch}")
    if diff >= MAX_ONNX_DIFF:
        fail(f"ONNX probabilities differ from scikit-learn by {diff:.2e} (limit {MAX_ONNX_DIFF})")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "model.onnx")
    with open(onnx_path, "wb") as f:
        f.write(model_bytes)
    manifest = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "task": "fraud",
        "sha256": sha256,
        "format": "onnx",
        "inputs": names,
        "input_name": "input",
        "output_name": "probabilities",
        "label_output_name": "label",
        "positive_class_index": 1,
        "missing_value": -1,
        "owner": "fraud-team",
        "description": "Scores a transaction by the probability that it is fraud; rules block or review it by the thresholds.",
        "signature": {
            "inputs": meta["signature_inputs"],
            "output": {
                "kind": "binary_probability",
                "positive_class_index": 1,
                "meaning": "probability the transaction is fraud",
            },
        },
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
            "onnx_max_abs_diff": diff,
        },
        "estimator": {
            "type": "sklearn.ensemble.GradientBoostingClassifier",
            "n_estimators": model.n_estimators,
            "max_depth": model.max_depth,
            "learning_rate": model.learning_rate,
            "random_state": RANDOM_STATE,
            "feature_importances": {k: float(v) for k, v in zip(names, model.feature_importances_)},
        },
        "opset": {d.domain or "ai.onnx": d.version for d in onx.opset_import},
        "libraries": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "trained_on": {"seed": args.seed, "count": args.count, "generator": "sim/transactions.ts via scripts/build-training-set.ts"},
        "reference": {
            "amount": reference_profile(raw[n_train:, names.index("amount")]),  # float64, as in the events
            "score": reference_profile(p_va),
        },
        "reference_info": {
            "source": "validation split (amount: model input; score: positive-class probability)",
            "binning": "bin i holds edges[i-1] < x <= edges[i] (bin 0: x <= edges[0]; last bin: x > edges[-1]); "
                       "proportions has len(edges) + 1 entries; edges are deciles, deduplicated on ties",
        },
    }
    with open(os.path.join(args.out_dir, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    fixture = parity_rows(x_va, y_va, x)
    write_fixture(args.parity_fixture, MODEL_NAME, sha256, fixture, model.predict_proba(fixture)[:, 1],
                  sess.run(["probabilities"], {"input": fixture})[0][:, 1])
    print(f"wrote {onnx_path} ({len(model_bytes)} bytes, sha256 {sha256[:16]}...), model.json and "
          f"{args.parity_fixture} ({len(fixture)} rows) in {time.time() - t0:.1f}s total")


if __name__ == "__main__":
    main()
