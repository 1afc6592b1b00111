"""Regenerate ``hpod/data/lcdb-fried.json.gz``, the curves the ``lcdb-fried`` replay benchmark
plays back, from the LCDB sdist's CSV (the package itself is never imported: it pulls openml).

    pip download --no-deps --no-binary :all: lcdb==0.1.0 -d /tmp/lcdb
    python bench/make_lcdb_data.py /tmp/lcdb/lcdb-0.1.0.tar.gz

LCDB (Mohr, Viering, Loog, van Rijn 2022, "LCDB 1.0: An Extensive Learning Curves Database for
Classification Tasks") holds the learning curves of 20 scikit-learn classifiers (their default
hyperparameters) on 246 OpenML datasets: at each training-set size ("anchor", 16 * sqrt(2)^k and
the largest the split allows), for 5 outer (test) x 5 inner (validation) splits, the accuracy on
the validation and test folds and the training time. ``lcdb/database-accuracy.csv`` in the sdist
has them as rows ``openmlid, learner, size_train, size_test, outer_seed, inner_seed, traintime,
score_train, score_valid, score_test``.

Kept: dataset 901 (``fried``, 40,768 rows, 24 anchors from 16 to 33,021 where every one of the
20 learners has all 25 splits); for each learner, anchor and split the validation error rate
(1 - score_valid, 4 decimals as LCDB stores them), and each learner's mean training time per
anchor (seconds, 4 significant digits).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import statistics
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

OPENMLID = "901"
DATASET = "fried"
MEMBER = "lcdb-0.1.0/lcdb/database-accuracy.csv"
VERSION = "0.1.0"
SPLITS = [(o, i) for o in range(5) for i in range(5)]
OUT = Path(__file__).resolve().parent.parent / "hpod" / "data" / "lcdb-fried.json.gz"


def short(learner: str) -> str:
    """``sklearn.ensemble.RandomForestClassifier`` -> ``RandomForestClassifier``."""
    return learner.rsplit(".", 1)[-1]


def build(sdist: Path) -> dict[str, object]:
    # rows[learner][anchor][(outer, inner)] = (validation error, training time)
    rows: dict[str, dict[int, dict[tuple[int, int], tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise SystemExit(f"{sdist}: no {MEMBER}")
        reader = csv.reader(io.TextIOWrapper(member, encoding="utf-8"))
        header = next(reader)
        col = {name: k for k, name in enumerate(header)}
        for row in reader:
            if row[col["openmlid"]] != OPENMLID or not row[col["score_valid"]]:
                continue
            split = (int(row[col["outer_seed"]]), int(row[col["inner_seed"]]))
            anchor = int(row[col["size_train"]])
            err = 1.0 - float(row[col["score_valid"]])
            rows[short(row[col["learner"]])][anchor][split] = (err, float(row[col["traintime"]]))
    learners = sorted(rows)
    # The anchors every learner has with all 25 splits.
    anchors = sorted(
        set.intersection(
            *({a for a, s in rows[lr].items() if all(k in s for k in SPLITS)} for lr in learners)
        )
    )
    return {
        "source": f"lcdb {VERSION} sdist, {MEMBER}",
        "openmlid": int(OPENMLID),
        "dataset": DATASET,
        "metric": "validation error rate (1 - score_valid)",
        "splits": [list(k) for k in SPLITS],
        "anchors": anchors,
        "learners": learners,
        # error[learner][anchor index][split index]
        "error": [
            [[round(rows[lr][a][k][0], 4) for k in SPLITS] for a in anchors] for lr in learners
        ],
        # traintime[learner][anchor index]: the mean over the splits, in seconds
        "traintime": [
            [float(f"{statistics.fmean(rows[lr][a][k][1] for k in SPLITS):.4g}") for a in anchors]
            for lr in learners
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sdist", type=Path, help=f"lcdb-{VERSION}.tar.gz")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    data = build(args.sdist)
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    # mtime 0: the same sdist gives the same bytes.
    args.out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    n = len(data["learners"])  # type: ignore[arg-type]
    print(
        f"{args.out}: {n} learners, {len(data['anchors'])} anchors, "  # type: ignore[arg-type]
        f"{args.out.stat().st_size} bytes",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
