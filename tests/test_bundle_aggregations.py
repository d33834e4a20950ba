"""Issue 22: the new aggregation options train one epoch and run inference through the AD bundle.

The model record carries the options (``network_options``), so inference rebuilds the same network
without them; slice-count augmentation acts in training only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_bundles import copy_bundle, run_workflow, write_tiny_dataset

#: cnn5 on a 0.2-scaled grid (18 x 22 x 18): a few seconds per run on a CPU.
SMALL_MODEL = {
    "encoder": "cnn5",
    "pretrained": False,
    "axis": "coronal",
    "input_scale": 0.2,
    "demo_input_scale": 0.2,
    "channels_last": False,
    "progress_bar": False,
    "cache_num_workers": 1,
}


@pytest.mark.parametrize(
    "options,recorded",
    [
        (
            {
                "aggregation": "transformer",
                "transformer_layers": "2",  # command-line strings
                "transformer_rotary": "true",
                "slice_keep": "0.5",
                "slice_keep_style": "crop",
            },
            {
                "transformer_layers": 2,
                "transformer_rotary": True,
                "slice_keep": 0.5,
                "slice_keep_style": "crop",
            },
        ),
        ({"aggregation": "attention", "slice_keep": 0.75}, {"slice_keep": 0.75}),
    ],
)
def test_new_aggregation_options_train_and_infer(options: dict, recorded: dict, tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data", n_per_split=(4, 2, 2))
    bundle = copy_bundle(tmp_path / "run")
    train = {"dataset_dir": str(data), "epochs": 1, "batch_size": 2}
    run_workflow(str(bundle / "configs" / "train.json"), "train", **SMALL_MODEL, **train, **options)
    record = json.loads((bundle / "models" / "model.json").read_text(encoding="utf-8"))
    assert record["aggregation"] == options["aggregation"] and record["network_options"] == recorded
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    if options["aggregation"] == "transformer":
        assert "aggregate.layers.1.qkv.weight" in state and "aggregate.cls" in state
    else:
        assert "aggregate.out.weight" in state and "aggregate.ff.weight" not in state
    out_csv = tmp_path / "pred.csv"
    infer = {"input": str(data / "images"), "predictions_csv": str(out_csv), "batch_size": 2}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", progress_bar=False, **infer)
    pred = pd.read_csv(out_csv)
    assert len(pred) == 8 and (pred["status"] == "ok").all() and np.isfinite(pred["logit"]).all()


def test_a_torchvision_encoder_trains_and_infers_through_the_bundle(tmp_path: Path) -> None:
    """Issue 22 item 3: ``--encoder convnext_tiny``; model.json records it, inference needs no option.

    The grid is 0.4 of the template (36 x 44 x 36): ConvNeXt downsamples by 32, so a slice needs at
    least 32 pixels per side.
    """
    data = write_tiny_dataset(tmp_path / "data", n_per_split=(2, 2, 2))
    bundle = copy_bundle(tmp_path / "run")
    model = {**SMALL_MODEL, "encoder": "convnext_tiny", "input_scale": 0.4, "demo_input_scale": 0.4}
    train = {"dataset_dir": str(data), "epochs": 1, "batch_size": 2}
    run_workflow(str(bundle / "configs" / "train.json"), "train", **model, **train)
    record = json.loads((bundle / "models" / "model.json").read_text(encoding="utf-8"))
    assert record["encoder"] == "convnext_tiny" and record["encoder_init"] == "scratch"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert state["pre_embed.weight"].shape == (32, 768)  # ConvNeXt-T's width, projected to d = 32
    out_csv = tmp_path / "pred.csv"
    infer = {"input": str(data / "images"), "predictions_csv": str(out_csv), "batch_size": 2}
    run_workflow(str(bundle / "configs" / "inference.json"), "infer", progress_bar=False, **infer)
    pred = pd.read_csv(out_csv)
    assert len(pred) == 6 and (pred["status"] == "ok").all() and np.isfinite(pred["logit"]).all()
