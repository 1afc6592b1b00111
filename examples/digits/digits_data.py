"""The digits data for train.py: scikit-learn's bundled 8x8 digits, split and scaled.

The same split for every trial (fixed seed, stratified), so their val_acc compare, with the
scaler fitted on the training split only (no leakage). It is made when this module is imported:
once per trial process, or, with the study's warm start importing it (``[executor]
warm_imports = [..., "digits_data"]``, docs/warm-start.md), once per study, in the fork server,
so that every run forked from it, new or resumed, finds it made. numpy arrays only: no torch
here, so nothing of torch's runs before the fork.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    arrays = (
        scaler.transform(x_tr).astype(np.float32),
        y_tr.astype(np.int64),
        scaler.transform(x_va).astype(np.float32),
        y_va.astype(np.int64),
    )
    for a in arrays:
        a.flags.writeable = False  # shared by every run forked from a warm server
    return arrays


X_TRAIN, Y_TRAIN, X_VAL, Y_VAL = _split()
