"""Feast peer reference for the training-set benchmark (test/bench/feast.ts drives it).

    python feast_reference.py --history history.csv --labels labels.csv --out out.csv --features f1,f2

history.csv: entity_id, event_ts_ms, <feature columns>  (one row per event: the values as of that event)
labels.csv:  entity_id, ts_ms

Builds a throwaway Feast repo in a temp dir (local provider, file registry, sqlite online store that is
never used, the default dask offline store), a FileSource over a parquet copy of history.csv, an Entity
`entity_id` and one FeatureView with the feature columns, then runs
FeatureStore.get_historical_features(...).to_df(): Feast's point-in-time join, i.e. per label the latest
history row of that entity with event time <= the label time (within the view's ttl, which is set to
cover the whole data span so it never cuts anything off), null when there is none.

Writes out.csv (entity_id, ts_ms, <features>) in label order, empty cells for nulls, and prints one JSON
line: {"rows", "seconds", "feast_version", "prepare_seconds", "apply_seconds", "import_seconds",
"feast_rows"}. `seconds` times get_historical_features + to_df only; `prepare_seconds` is the CSV ->
parquet/entity frame conversion, `apply_seconds` the registry apply, `import_seconds` importing feast.
`feast_rows` is the number of rows Feast returned, which can be fewer than the labels: its dask store
collapses labels with the same (entity_id, ts) (`duplicate_labels`), and it leaves out a label whose
entity has history rows but none at or before the label time (`labels_missing_from_feast`, distinct
keys). So the result is mapped back onto every label by (entity_id, ts), a missing key giving nulls,
which is what the as-of join means there.

No network: everything is local files under a temp dir that is removed at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta

ENTITY = "entity_id"
LABEL_TS = "event_timestamp"
SOURCE_TS = "event_ts"
VIEW = "history"
RESERVED = {ENTITY, LABEL_TS, SOURCE_TS, "event_ts_ms", "ts_ms", "__row"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--history", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--features", required=True, help="comma-separated feature column names of history.csv")
    ap.add_argument("--keep-repo", action="store_true", help="leave the temp Feast repo behind (debugging)")
    args = ap.parse_args()

    features = [f.strip() for f in args.features.split(",") if f.strip()]
    if not features:
        ap.error("--features is empty")
    bad = [f for f in features if f in RESERVED]
    if bad:
        ap.error(f"reserved feature names: {bad}")
    if len(set(features)) != len(features):
        ap.error("duplicate feature names")

    t0 = time.perf_counter()
    import feast  # noqa: E402  (timed separately: it is slow)
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    import_seconds = time.perf_counter() - t0

    tmp = tempfile.mkdtemp(prefix="feast-ref-")
    try:
        # ---- prepare: CSVs -> parquet source + entity frame (not part of `seconds`) ----
        t0 = time.perf_counter()
        dtypes = {ENTITY: str, "event_ts_ms": "int64", **{f: "float64" for f in features}}
        # round_trip: the default "high" float parser can be 1 ulp off, and the check compares exactly.
        # Only an empty feature cell is null: an entity id such as "NA" or "null" stays a string.
        history = pd.read_csv(
            args.history,
            dtype=dtypes,
            usecols=list(dtypes),
            float_precision="round_trip",
            keep_default_na=False,
            na_values={f: [""] for f in features},
        )
        labels = pd.read_csv(
            args.labels, dtype={ENTITY: str, "ts_ms": "int64"}, usecols=[ENTITY, "ts_ms"], keep_default_na=False
        )
        history[SOURCE_TS] = pd.to_datetime(history["event_ts_ms"], unit="ms", utc=True)
        history = history[[ENTITY, SOURCE_TS, *features]]
        parquet = os.path.join(tmp, "history.parquet")
        history.to_parquet(parquet, index=False)

        entity_df = pd.DataFrame(
            {ENTITY: labels[ENTITY], LABEL_TS: pd.to_datetime(labels["ts_ms"], unit="ms", utc=True)}
        )
        # ttl: a plain as-of join has no horizon, so cover the whole span (at least 30 days).
        lo = min(history[SOURCE_TS].min(), entity_df[LABEL_TS].min()) if len(history) and len(entity_df) else None
        hi = max(history[SOURCE_TS].max(), entity_df[LABEL_TS].max()) if len(history) and len(entity_df) else None
        ttl = timedelta(days=30)
        if lo is not None and hi is not None and hi - lo + timedelta(days=1) > ttl:
            ttl = (hi - lo) + timedelta(days=1)
        prepare_seconds = time.perf_counter() - t0

        # ---- repo + registry apply (not part of `seconds`) ----
        t0 = time.perf_counter()
        with open(os.path.join(tmp, "feature_store.yaml"), "w") as fh:
            fh.write(
                "project: fabric_ref\n"
                "provider: local\n"
                f"registry: {os.path.join(tmp, 'registry.db')}\n"
                "online_store:\n"
                "  type: sqlite\n"
                f"  path: {os.path.join(tmp, 'online.db')}\n"
                "offline_store:\n"
                "  type: dask\n"
                "entity_key_serialization_version: 3\n"
            )
        store = FeatureStore(repo_path=tmp)
        entity = Entity(name=ENTITY, join_keys=[ENTITY], value_type=ValueType.STRING)
        source = FileSource(name="history_source", path=parquet, timestamp_field=SOURCE_TS)
        view = FeatureView(
            name=VIEW,
            entities=[entity],
            ttl=ttl,
            schema=[Field(name=f, dtype=Float64) for f in features],
            source=source,
            online=False,
        )
        store.apply([entity, view])
        apply_seconds = time.perf_counter() - t0

        # ---- the measured part ----
        t0 = time.perf_counter()
        job = store.get_historical_features(entity_df=entity_df, features=[f"{VIEW}:{f}" for f in features])
        result = job.to_df()
        seconds = time.perf_counter() - t0

        # ---- back to label order (untimed) ----
        feast_rows = len(result)
        result = result[[ENTITY, LABEL_TS, *features]].drop_duplicates([ENTITY, LABEL_TS])
        result[LABEL_TS] = pd.to_datetime(result[LABEL_TS], utc=True)
        keys = entity_df.drop_duplicates([ENTITY, LABEL_TS])
        duplicate_labels = len(entity_df) - len(keys)
        # Feast's dask store also leaves out a label whose entity has history but none at or before the
        # label time (every candidate row is filtered away); those are as-of nulls, counted here.
        returned = keys.merge(result[[ENTITY, LABEL_TS]], on=[ENTITY, LABEL_TS], how="left", indicator=True)
        labels_missing = int((returned["_merge"] == "left_only").sum())
        merged = entity_df.merge(result, on=[ENTITY, LABEL_TS], how="left", validate="many_to_one")
        if len(merged) != len(entity_df):
            raise RuntimeError(f"merge back changed the row count: {len(merged)} != {len(entity_df)}")
        out = pd.DataFrame({ENTITY: labels[ENTITY], "ts_ms": labels["ts_ms"]})
        for f in features:
            out[f] = merged[f].astype("float64").to_numpy()
        out.to_csv(args.out, index=False, na_rep="")

        print(
            json.dumps(
                {
                    "rows": len(out),
                    "seconds": seconds,
                    "feast_version": feast.__version__,
                    "prepare_seconds": prepare_seconds,
                    "apply_seconds": apply_seconds,
                    "import_seconds": import_seconds,
                    "feast_rows": feast_rows,
                    "duplicate_labels": duplicate_labels,
                    "labels_missing_from_feast": labels_missing,
                    "history_rows": len(history),
                    "ttl_seconds": ttl.total_seconds(),
                }
            ),
            flush=True,
        )
        return 0
    finally:
        if args.keep_repo:
            print(f"feast repo kept at {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
