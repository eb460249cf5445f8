"""The reader round-trips the generator's output and handles every kind of bad data as documented."""

import json
import shutil

import pytest

from factory.data.emoset import read_split, to_hf_dataset
from factory.data.synth import split_counts
from factory.errors import DataError
from factory.prompts import EMOTIONS


def test_reader_agrees_with_generator_on_every_count(synth_root):
    expected = split_counts(80, (0.8, 0.1, 0.1))
    for split in ("train", "val", "test"):
        result = read_split(synth_root, split)
        assert len(result.records) == expected[split] * len(EMOTIONS)
        assert result.summary()["per_class"] == {e: expected[split] for e in EMOTIONS}
        assert not result.skipped and not result.warnings
        for rec in result.records:
            assert rec.image_path.is_file()
            assert rec.image_id.startswith(rec.emotion)
            assert {"brightness", "colorfulness"} <= set(rec.attributes)


def test_hf_dataset_view(synth_root):
    records = read_split(synth_root, "val").records
    ds = to_hf_dataset(records)
    assert len(ds) == len(records)
    row = ds[0]
    assert row["image"].size == (48, 48)
    assert ds.features["label"].int2str(row["label"]) == row["emotion"]
    assert json.loads(row["attributes"]) == records[0].attributes


@pytest.fixture
def broken(tmp_path, synth_root):
    """A copy of the synthetic set whose val split gets one bad entry of each kind."""
    root = tmp_path / "broken"
    shutil.copytree(synth_root, root)
    entries = json.loads((root / "val.json").read_text())
    good = entries[:6]
    # 0: missing image
    (root / good[0][2]).unlink()
    # 1: truncated JPEG
    img = root / good[1][2]
    img.write_bytes(img.read_bytes()[:200])
    # 2: annotation disagrees with split file
    ann = root / good[2][3]
    data = json.loads(ann.read_text())
    data["emotion"] = "awe" if data["emotion"] != "awe" else "fear"
    ann.write_text(json.dumps(data))
    # 3: annotation is not JSON
    (root / good[3][3]).write_text("{not json")
    # 4: missing annotation: tolerated, no attributes
    (root / good[4][3]).unlink()
    bad = [
        ["joy", "joy_00001", "image/joy/joy_00001.jpg", "annotation/joy/joy_00001.json"],  # unknown label
        list(good[5]),  # duplicate id
        ["awe", "awe_x"],  # malformed entry
        ["awe", "awe_y", "../../etc/passwd", "annotation/awe/awe_y.json"],  # escapes the root
    ]
    (root / "val.json").write_text(json.dumps(entries + bad))
    return root, len(entries)


def test_lenient_mode_skips_and_reports_every_kind(broken, tmp_path):
    root, n_entries = broken
    result = read_split(root, "val", strict=False)
    kinds = sorted(s.kind for s in result.skipped)
    assert kinds == sorted(["missing_image", "unreadable_image", "label_mismatch", "bad_annotation",
                            "unknown_label", "duplicate_id", "malformed_entry", "malformed_entry"])
    assert [w.kind for w in result.warnings] == ["missing_annotation"]
    assert len(result.records) == n_entries - 4  # four of the original entries were broken
    tolerated = [r for r in result.records if r.image_id == json.loads((root / "val.json").read_text())[4][1]]
    assert tolerated and tolerated[0].attributes == {}
    report = json.loads(result.write_report(tmp_path / "report.json").read_text())
    assert report["skipped"] == 8 and report["skipped_by_kind"]["malformed_entry"] == 2
    assert {e["kind"] for e in report["skipped_entries"]} >= {"unreadable_image", "duplicate_id"}


@pytest.mark.parametrize("check,expect_truncation_found", [("decode", True), ("none", False)])
def test_image_check_modes(broken, check, expect_truncation_found):
    root, _ = broken
    kinds = {s.kind for s in read_split(root, "val", strict=False, check_images=check).skipped}
    assert ("unreadable_image" in kinds) is expect_truncation_found
    assert "missing_image" in kinds  # existence is always checked


def test_strict_mode_raises_a_clear_error(broken):
    root, _ = broken
    with pytest.raises(DataError, match=r"val.json entry \d+ .*: (missing_image|label_mismatch|bad_annotation)"):
        read_split(root, "val", strict=True)


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "expected a JSON list"),
])
def test_malformed_split_file_is_always_an_error(tmp_path, content, message):
    (tmp_path / "train.json").write_text(content)
    for strict in (True, False):
        with pytest.raises(DataError, match=message):
            read_split(tmp_path, "train", strict=strict)


def test_missing_split_and_root_are_errors(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        read_split(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="split file not found"):
        read_split(tmp_path, "train")
