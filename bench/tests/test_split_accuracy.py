"""bench/split_accuracy.py: its simulation of DDP's weighted math, and its report (no accuracy thresholds)."""

from __future__ import annotations

import json

import pytest
import split_accuracy
import torch
import train


def test_splits_parse_and_bad_ones_are_refused() -> None:
    assert split_accuracy.parse_splits("32+32, 27+27+5+5") == [[32, 32], [27, 27, 5, 5]]
    for bad in ("", "32+0", "32+,4"):
        with pytest.raises(SystemExit):
            split_accuracy.parse_splits(bad)


def test_without_batchnorm_every_split_trains_the_same_model() -> None:
    """The weighted per-rank gradients sum to the full batch's: with no per-batch statistics in the
    model, an uneven split must end where one rank with the whole batch does."""
    data = train.load_data("digits", 0)
    trained = []
    for split in ([64], [32, 32], [50, 9, 5]):
        torch.manual_seed(0)
        model = train.build_model("cnn")
        split_accuracy.train_split(model, data, split, epochs=1, lr=0.05)
        trained.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    for other in trained[1:]:
        torch.testing.assert_close(other, trained[0], rtol=1e-4, atol=1e-5)


def test_json_report_has_every_split_and_seed(capsys: pytest.CaptureFixture[str]) -> None:
    split_accuracy.main(["--model", "cnn", "--data", "digits", "--splits", "32+32,40+24", "--seeds", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "cnn" and report["epochs"] == 2
    assert set(report["accuracy"]) == {"32+32", "40+24"}
    assert all(len(v) == 2 and all(0.0 <= a <= 1.0 for a in v) for v in report["accuracy"].values())
