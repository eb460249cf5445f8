"""Data sources beyond the EmoSet layout: an image folder and a Hugging Face dataset, imported into the
layout every other step reads, with the reader's strict / lenient rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from factory.data.emoset import read_split
from factory.data.sources import ImportConfig, import_dataset
from factory.errors import DataError


def _jpg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)


def _folder(root, labels=("amusement", "Fear", "sadness"), n=10):
    for k, label in enumerate(labels):
        for i in range(n):
            _jpg(root / label / f"img{i}.jpg", 100 * k + i)
    return root


def test_an_image_folder_imports_with_stratified_reproducible_splits(tmp_path):
    src = _folder(tmp_path / "src")
    report = import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "out")))
    # every label split 8 / 1 / 1; "Fear" matched case-insensitively
    assert report["splits"]["val"] == {"amusement": 1, "fear": 1, "sadness": 1}
    assert report["images"] == {"train": 24, "val": 3, "test": 3}
    records = {s: read_split(tmp_path / "out", s).records for s in ("train", "val", "test")}
    ids = [r.image_id for rs in records.values() for r in rs]
    assert len(ids) == len(set(ids)) == 30
    # the images are the source's bytes, under the labels they came from
    rec = records["val"][0]
    src_file = src / ("Fear" if rec.emotion == "fear" else rec.emotion) / (rec.image_id.split("_", 1)[1] + ".jpg")
    assert rec.image_path.read_bytes() == src_file.read_bytes()
    # the same seed draws the same splits; another seed others
    again = import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "again")))
    assert json.loads((tmp_path / "again" / "val.json").read_text()) == json.loads(
        (tmp_path / "out" / "val.json").read_text()) and again["images"] == report["images"]
    import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "other"), seed=1))
    assert json.loads((tmp_path / "other" / "val.json").read_text()) != json.loads(
        (tmp_path / "out" / "val.json").read_text())
    assert (tmp_path / "out" / "svlm_config.yaml").is_file()


def test_split_folders_of_the_source_are_kept(tmp_path):
    for split in ("train", "validation", "test"):
        _folder(tmp_path / "src" / split, labels=("awe", "anger"), n=2)
    report = import_dataset(ImportConfig(path=str(tmp_path / "src"), out=str(tmp_path / "out")))
    assert report["images"] == {"train": 4, "val": 4, "test": 4}


def test_bad_items_stop_a_strict_import_and_are_reported_by_a_lenient_one(tmp_path):
    src = _folder(tmp_path / "src", labels=("awe", "contentment"))
    (src / "awe" / "img3.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    _jpg(src / "happiness" / "a.jpg", 1)
    (src / "awe" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="happiness.*unknown_label.*--lenient"):
        import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "strict")))
    assert not (tmp_path / "strict").exists() and not (tmp_path / "strict.tmp").exists()  # nothing half-written
    report = import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "out"), strict=False))
    assert report["skipped_by_kind"] == {"unknown_label": 1, "not_an_image": 1, "unreadable_image": 1}
    assert sum(report["images"].values()) == 19
    # an alias maps the unknown folder onto an emotion instead
    aliased = import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "aliased"), strict=False,
                                          aliases={"happiness": "amusement"}))
    assert sum(aliased["images"].values()) == 20 and aliased["skipped_by_kind"] == {
        "not_an_image": 1, "unreadable_image": 1}


def test_an_existing_folder_is_replaced_only_when_an_import_wrote_it(tmp_path):
    src = _folder(tmp_path / "src")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="not written by svlm data import"):
        import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "mine"), overwrite=True))
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"
    import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "out")))
    with pytest.raises(DataError, match="--overwrite"):
        import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "out")))
    import_dataset(ImportConfig(path=str(src), out=str(tmp_path / "out"), overwrite=True, seed=3))


def test_a_hugging_face_dataset_imports_with_its_splits_and_class_names(tmp_path):
    import datasets

    def part(labels, seed):
        images = [Image.fromarray(np.random.default_rng(seed + i).integers(0, 255, (20, 20, 3), dtype=np.uint8))
                  for i in range(len(labels))]
        features = datasets.Features({"img": datasets.Image(),
                                      "emo": datasets.ClassLabel(names=["Awe", "disgust", "joy"])})
        return datasets.Dataset.from_dict({"img": images, "emo": labels}, features=features)

    dd = datasets.DatasetDict({"train": part([0, 1, 0, 1], 0), "validation": part([1, 0], 10), "test": part([0], 20)})
    dd.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="no column 'image'; columns: \\['img', 'emo'\\]"):
        import_dataset(ImportConfig(source="hf", path=str(tmp_path / "ds"), out=str(tmp_path / "x")))
    report = import_dataset(ImportConfig(source="hf", path=str(tmp_path / "ds"), out=str(tmp_path / "out"),
                                         image_column="img", label_column="emo"))
    assert report["splits"] == {"train": {"awe": 2, "disgust": 2}, "val": {"awe": 1, "disgust": 1},
                                "test": {"awe": 1}}
    rec = read_split(tmp_path / "out", "train").records[0]
    assert np.array_equal(np.asarray(Image.open(rec.image_path)), np.asarray(dd["train"][0]["img"]))

    # string labels, no splits of its own: drawn per label; an unknown class ("joy") is skipped when lenient
    flat = datasets.Dataset.from_dict({"image": [dd["train"][i]["img"] for i in range(4)] * 4,
                                       "label": ["awe", "fear", "joy", "awe"] * 4})
    flat.save_to_disk(str(tmp_path / "flat"))
    report = import_dataset(ImportConfig(source="hf", path=str(tmp_path / "flat"), out=str(tmp_path / "o2"),
                                         strict=False, fractions=[0.5, 0.5, 0.0]))
    assert report["skipped_by_kind"] == {"unknown_label": 4}
    assert report["images"] == {"train": 6, "val": 6, "test": 0}  # awe 4 / 4, fear 2 / 2


def test_the_cli_imports_and_reports_errors_in_one_line(tmp_path, capsys):
    from factory.cli import main

    src = _folder(tmp_path / "src")
    assert main(["data", "import", "imagefolder", str(src), "--out", str(tmp_path / "out"), "-q",
                 "--alias", "happy=amusement"]) == 0
    assert "train 24, val 3, test 3" in capsys.readouterr().out
    assert main(["data", "import", "imagefolder", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert main(["data", "import", "imagefolder", str(src), "--out", str(tmp_path / "o"), "--alias", "x=joy"]) == 2
    err = capsys.readouterr().err
    assert "image folder not found" in err and "aliases must map onto the task's labels" in err
