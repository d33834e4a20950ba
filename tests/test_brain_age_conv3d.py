"""The brain-age bundle with the 3D-CNN baseline (``--encoder conv3d``): trains and infers.

The paper's Table 2 3D-CNN row: the brain-age bundle initialises the output bias to the training mean
age, which needs the network's declared output layer (the 3D-CNN ends in a 1x1x1 conv, not a Linear).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from test_bundles import copy_bundle, run_workflow, write_tiny_dataset

#: The real 3D-CNN on a 0.1-scaled grid (9 x 11 x 9): a few seconds on a CPU.
CONV3D = {
    "encoder": "conv3d",
    "input_scale": 0.1,
    "channels_last": False,
    "progress_bar": False,
    "cache_num_workers": 1,
}


def _with_ages(data: Path) -> Path:
    """The tiny AD/CN data lists with an ``age`` column (brain-age data lists)."""
    for split in ("train", "val", "test"):
        frame = pd.read_csv(data / f"{split}.csv")
        frame["age"] = 60.0 + 2.0 * np.arange(len(frame))
        frame.drop(columns="dx").to_csv(data / f"{split}.csv", index=False)
    return data


def test_conv3d_brain_age_trains_and_infers(tmp_path: Path) -> None:
    data = _with_ages(write_tiny_dataset(tmp_path / "data", n_per_split=(4, 2, 2)))
    bundle = copy_bundle(tmp_path / "run", "ukbb_brain_age")
    train = {
        "dataset_dir": str(data),
        "epochs": 1,
        "batch_size": 2,
        "input_scale": 0.1,
        "demo_input_scale": 0.1,
    }
    run_workflow(str(bundle / "configs" / "train.json"), "train", **{**CONV3D, **train})
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert "classifier.bias" in state  # the 3D-CNN, not the default ResNet
    out_csv = tmp_path / "pred.csv"
    infer = {"input": str(data / "images"), "predictions_csv": str(out_csv), "batch_size": 2}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", **{**CONV3D, **infer})
    pred = pd.read_csv(out_csv)
    assert len(pred) == 8 and (pred["status"] == "ok").all()
    assert np.isfinite(pred["predicted_age"]).all()
