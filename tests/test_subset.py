"""hpod.trial.subset: a deterministic proxy dataset by the trial's subset ratio, floor 500."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hpod import trial
from hpod.subsets import Subset, indices

pytestmark = pytest.mark.timeout(60)


def test_the_same_seed_gives_the_same_samples():
    data = list(range(5000))
    a = trial.subset(data, 0.2)
    assert a == trial.subset(data, 0.2)
    assert len(a) == 1000
    assert a == sorted(a)  # in the dataset's order
    assert trial.subset(data, 0.2, seed=1) != a


def test_never_under_the_floor_nor_over_the_dataset():
    data = list(range(1797))
    assert len(trial.subset(data, 0.1)) == 500  # hpopt's 500, not 180
    assert len(trial.subset(data, 0.1, floor=100)) == 180
    small = list(range(300))
    assert trial.subset(small, 0.1) is small  # fewer than the floor: all of it
    assert trial.subset(data, 1.0) is data


def test_the_ratio_comes_from_the_trial_s_config(monkeypatch):
    data = tuple(range(4000))
    assert trial.subset(data) is data  # no config key: the whole dataset
    monkeypatch.setenv("HPOD_CONFIG", json.dumps({"subset_ratio": 0.25, "lr": 0.1}))
    cut = trial.subset(data)
    assert isinstance(cut, tuple)
    assert len(cut) == 1000
    monkeypatch.setenv("HPOD_CONFIG", json.dumps({"subset_ratio": "half"}))
    with pytest.raises(ValueError, match="subset_ratio"):
        trial.subset(data)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("nan")])
def test_a_bad_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="subset ratio"):
        trial.subset(list(range(10)), ratio)


def test_other_sequences_get_a_view_and_arrays_their_rows():
    view = trial.subset(range(2000), 0.5)
    assert isinstance(view, Subset)
    assert len(view) == 1000
    assert list(view) == indices(2000, 0.5)
    assert list(view[1:3]) == [view[1], view[2]]
    np = pytest.importorskip("numpy")
    rows = trial.subset(np.arange(3000).reshape(1000, 3), 0.6)
    assert rows.shape == (600, 3)


def test_a_torch_dataset_gets_torch_s_subset():
    torch = pytest.importorskip("torch")
    from torch.utils.data import Subset as TorchSubset
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.arange(2000.0))
    cut = trial.subset(ds, 0.3)
    assert isinstance(cut, TorchSubset)
    assert len(cut) == 600
    assert list(cut.indices) == indices(2000, 0.3)


def test_the_trial_module_never_imports_torch():
    code = (
        "import sys; from hpod import trial; "
        "trial.subset(list(range(2000)), 0.3); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
