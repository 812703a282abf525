"""The test-split ledger: file hashes recorded at training, edits flagged, evaluations counted."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from imagefit.evaluate.evaluator import evaluate_checkpoint
from imagefit.evaluate.ledger import count_test_uses, read_ledger
from imagefit.train.fit import fit

from conftest import tiny_config


def test_ledger_records_hashes_counts_uses_and_flags_an_edited_test_image(
    pattern_root: Path, tmp_path: Path
) -> None:
    run = fit(tiny_config(pattern_root, tmp_path, train={"epochs": 1})).run_dir
    ledger = read_ledger(run)
    split = json.loads((run / "split.json").read_text())
    test_files = [path for path, _ in split["splits"]["test"]]
    assert sorted(ledger["split_sha256"]["test"]) == sorted(test_files)
    assert all(len(h) == 64 for h in ledger["split_sha256"]["train"].values())
    assert count_test_uses(run) == 1  # fit's own test evaluation

    clean = evaluate_checkpoint(run)
    assert clean["changed_files"] == [] and clean["test_evaluations"] == 2

    edited = Path(split["root"]) / test_files[0]
    pixels = np.asarray(Image.open(edited)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(edited)
    after = evaluate_checkpoint(run)
    assert after["changed_files"] == [test_files[0]]
    assert after["test_evaluations"] == 3
    assert [u["by"] for u in read_ledger(run)["test_evaluations"]] == ["fit", "eval", "eval"]
    # val is not the held-out split: checked, not counted
    val = evaluate_checkpoint(run, split="val")
    assert val["changed_files"] == [] and "test_evaluations" not in val
    assert count_test_uses(run) == 3
