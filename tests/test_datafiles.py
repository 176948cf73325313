"""Data read from files: a folder's identity is part of every cache key, and an unusable folder is
refused before any work, naming each bad file and the minimum it needs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from nets import write_image_folder

from flexrel_core.data import labels_of, load_dataset
from flexrel_core.datafiles import MIN_PER_CLASS, check_image_folder, fingerprint
from flexrel_core.workbook import pipeline
from flexrel_core.workbook.config import TrainConfig
from flexrel_core.workbook.profiles import data_problems


def folder(tmp_path, classes=2, per_class=12, name="images"):
    root = tmp_path / name
    root.mkdir()
    return write_image_folder(root, classes=classes, per_class=per_class, size=(8, 8))


def test_the_fingerprint_follows_every_file_and_not_the_images_content(tmp_path):
    root = folder(tmp_path)
    seen = {fingerprint(root)}
    (root / "class0" / "0.png").unlink()  # one image removed
    seen.add(fingerprint(root))
    (root / "class1" / "extra.png").write_bytes((root / "class1" / "1.png").read_bytes())  # one added
    seen.add(fingerprint(root))
    st = os.stat(root / "class1" / "2.png")
    os.utime(root / "class1" / "2.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # one replaced (newer)
    seen.add(fingerprint(root))
    assert len(seen) == 4
    assert fingerprint(root) == fingerprint(root)


def test_a_changed_folder_trains_a_new_model_and_an_unchanged_one_reuses_it(tmp_path, monkeypatch):
    root = folder(tmp_path, per_class=12)
    cfg = TrainConfig(dataset="imagefolder", data_root=str(root), image_size=8, epochs=1, seed=0)
    trained = []
    real = pipeline.train
    monkeypatch.setattr(pipeline, "train", lambda model, ds, **kw: trained.append(len(ds)) or real(model, ds, **kw))
    pipeline.trained_model(cfg, cache_root=tmp_path / "cache")
    pipeline.trained_model(cfg, cache_root=tmp_path / "cache")
    assert len(trained) == 1  # same folder: the cached model
    (root / "class0" / "3.png").unlink()
    pipeline.trained_model(cfg, cache_root=tmp_path / "cache")
    for c in range(2):  # the folder grows from 23 to 47 images
        for i in range(12):
            src = root / f"class{c}" / f"{4 + i % 8}.png"
            (root / f"class{c}" / f"new{i}.png").write_bytes(src.read_bytes())
    pipeline.trained_model(cfg, cache_root=tmp_path / "cache")
    assert len(trained) == 3 and trained[1] < trained[2]
    assert len({p.name for p in (tmp_path / "cache" / "models").iterdir()}) == 3


def test_an_unusable_folder_is_refused_before_any_work_naming_each_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        load_dataset("imagefolder", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset("imagefolder", tmp_path / "empty")
    small = folder(tmp_path, classes=2, per_class=7, name="small")
    with pytest.raises(ValueError, match=rf"fewer than {MIN_PER_CLASS} images .*'class0': 7, 'class1': 7"):
        load_dataset("imagefolder", small, image_size=8)
    broken = folder(tmp_path, classes=2, per_class=12, name="broken")
    (broken / "class1" / "5.png").write_bytes(b"not an image")
    (broken / "class0" / "bad.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(ValueError) as err:
        load_dataset("imagefolder", broken, image_size=8)
    assert "class1/5.png" in str(err.value) and "class0/bad.jpg" in str(err.value) and "(2)" in str(err.value)


@pytest.mark.parametrize("classes", [2, 10])
def test_the_minimum_per_class_gives_every_class_to_every_split(tmp_path, classes):
    root = folder(tmp_path, classes=classes, per_class=MIN_PER_CLASS)
    assert check_image_folder(root) == {f"class{c}": MIN_PER_CLASS for c in range(classes)}
    for seed in range(3):
        d = load_dataset("imagefolder", root, image_size=8, seed=seed)
        for split in (d.train, d.val, d.inference, d.test):
            assert np.unique(labels_of(split)).tolist() == list(range(classes))


def test_a_limit_that_starves_a_class_is_refused(tmp_path):
    root = folder(tmp_path, classes=2, per_class=12)
    with pytest.raises(ValueError, match="limit=15 leaves classes"):
        load_dataset("imagefolder", root, image_size=8, limit=15)


def test_the_profile_check_finds_a_missing_data_root(tmp_path):
    assert data_problems({"dataset": "mnist5k", "data_root": None}) == []
    assert "needs data_root" in data_problems({"dataset": "imagefolder", "data_root": None})[0]
    assert "does not exist" in data_problems({"dataset": "imagefolder", "data_root": "/nonexistent"})[0]
    assert data_problems({"dataset": "imagefolder", "data_root": str(folder(tmp_path))}) == []
