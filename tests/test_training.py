"""Training reaches each model's bar, exports a clean ONNX file, and is reproducible byte for byte.

Each model is trained for real, once, as `make train` trains it (a subprocess, about a minute and a
half on 2 cores), and judged through the exported ONNX file with ONNX Runtime, against quantities the
test computes itself; its files must be the committed ones, byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import modelrepo
import training
from training import blobs, data, multilinear, recipes
from training.__main__ import main as train_main
from training.common import seed_everything

pytestmark = pytest.mark.timeout(900)  # the fixture trains every model, as `make train` does

REPO = Path(__file__).resolve().parents[1]


# Environments that make each library pick other code (as other CPUs would): the training code's own
# pins must win over all of them. Without the pins, each of these gave other LeNet bytes here.
OTHER_CPUS = {
    "avx2 everywhere": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AUTO",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OMP_NUM_THREADS": "2",
    },
    "sse4, no fma in libm": {
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX",
    },
}


def _train(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
    """`python -m training ARGS` in a fresh process, as `make train` runs it; returns what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make train`, into a temporary repository."""
    out = tmp_path_factory.mktemp("models")
    _train("--out", str(out))
    return out


def test_make_train_reproduces_the_committed_files_byte_for_byte(trained: Path) -> None:
    assert _files(trained) == _files(REPO / "models")


def _session(root: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(root / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def _run(root: Path, name: str, x: np.ndarray) -> np.ndarray:
    return _session(root, name).run(None, {"x": x.astype(np.float32)})[0]


def test_linear_matches_closed_form_least_squares(trained: Path) -> None:
    seed_everything(recipes.SPECS["linear"].seed)
    x, y = recipes.linear.make_data(100)  # the same sample the recipe drew
    a = np.hstack([np.ones((100, 1)), x.double().numpy()])
    (b_ls, w_ls), *_ = np.linalg.lstsq(a, y.double().numpy().ravel(), rcond=None)
    f0, f1 = _run(trained, "linear", np.array([[0.0], [1.0]])).ravel()
    assert abs(f0 - b_ls) <= 0.01
    assert abs((f1 - f0) - w_ls) <= 0.01
    assert abs(f0 - 5) < 1 and abs((f1 - f0) - 7) < 1  # and the truth of the tutorial, within the noise


def test_multilinear_mse_within_one_percent_of_least_squares_on_raw_scores(trained: Path) -> None:
    x = np.array(multilinear.X_TRAIN, dtype=np.float64)
    y = np.array(multilinear.Y_TRAIN, dtype=np.float64)
    mse = float(np.mean((_run(trained, "multilinear", x) - y) ** 2))
    assert mse <= 1.01 * multilinear.least_squares_mse(x, y)
    assert multilinear.least_squares_mse(x, y) == pytest.approx(0.0104, abs=5e-4)


def test_blobs_separates_held_out_xor_and_puts_minus1_1_in_class_1(trained: Path) -> None:
    seed = recipes.SPECS["blobs"].seed
    x_test, y_test = blobs.make_data(20, seed + 1)
    p = _run(trained, "blobs", x_test.numpy())
    assert np.array_equal((p > 0.5).astype(np.float32), y_test.numpy())
    assert _run(trained, "blobs", np.array([[-1.0, 1.0]]))[0, 0] >= 0.9
    assert _run(trained, "blobs", np.array([[1.0, 1.0]]))[0, 0] < 0.1


def test_lenet_reads_held_out_digits_at_99_percent(trained: Path) -> None:
    _, _, x_test, y_test = data.stratified_split(*data.digits_32x32(), recipes.SPECS["lenet"].seed)
    assert len(y_test) == 360
    logits = _run(trained, "lenet", x_test.numpy())
    assert np.mean(logits.argmax(1) == y_test.numpy()) >= 0.99


def test_cards_describe_the_exported_files(trained: Path) -> None:
    for entry in modelrepo.discover(trained):
        modelrepo.verify(entry)
        model = onnx.load(str(entry.model_path))
        onnx.checker.check_model(model, full_check=True)
        (inp,) = model.graph.input
        assert inp.name == entry.card.inputs[0].name == "x"
        assert inp.type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
        assert [o.name for o in model.graph.output] == [o.name for o in entry.card.outputs]
        assert all(not n.metadata_props and not n.doc_string for n in model.graph.node)
        assert not [p for p in entry.directory.iterdir() if p.suffix == ".data"]  # no external data
        assert entry.card.producer["torch"].startswith("2.13.0")
        assert entry.card.opset == 20
        pngs = list(entry.directory.glob("*.png"))
        assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_exported_models_accept_any_batch_size(trained: Path) -> None:
    for entry in modelrepo.discover(trained):
        session = _session(trained, entry.name)
        feature_shape = entry.card.inputs[0].shape[1:]
        for batch in (1, 7, 256):
            (out,) = session.run(None, {"x": np.zeros((batch, *feature_shape), np.float32)})
            assert out.shape == (batch, *entry.card.outputs[0].shape[1:])


def test_numpy_runs_pinned_in_training_and_as_the_machine_would_in_what_it_starts() -> None:
    """The pins hold in the process that trains and stay out of the environment its children inherit: a test's
    server started after `import training` runs numpy's loops as the machine would, as its clients do."""
    code = (
        "import os, training; from numpy._core._multiarray_umath import __cpu_features__ as features; "
        "print(features['X86_V3'], os.environ.get('NPY_DISABLE_CPU_FEATURES'), os.environ.get('OPENBLAS_CORETYPE'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in training.NUMPY_PINS} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "None", "None"]
    assert not training.NUMPY_PINS.keys() & os.environ.keys()  # this process imported training too


def test_other_cpus_kernels_give_the_same_bytes(tmp_path: Path) -> None:
    runs = {name: tmp_path / str(i) for i, name in enumerate(["as is", *OTHER_CPUS])}
    for name, out in runs.items():
        _train("--quick", "--out", str(out), env=OTHER_CPUS.get(name))
    reference = _files(runs["as is"])
    assert len(reference) >= 8  # model.onnx and card.json of every model, and pictures
    for name, out in runs.items():
        assert _files(out) == reference, f"{name}: other bytes"


def test_a_quick_run_leaves_the_served_models_alone(tmp_path: Path) -> None:
    before = _files(REPO / "models")
    output = _train("lenet", "--quick", cwd=tmp_path)
    (written,) = (
        line.split(" models written to ")[1].split(" (")[0] for line in output.splitlines() if "written to" in line
    )
    assert (Path(written) / "lenet" / "1" / "model.onnx").is_file()
    assert Path(written).resolve() != (REPO / "models").resolve()
    assert _files(REPO / "models") == before
    assert not (tmp_path / "models").exists()


def test_committed_models_match_their_cards_and_meet_their_bars() -> None:
    entries = modelrepo.discover(REPO / "models")
    assert sorted(e.name for e in entries) == sorted(recipes.NAMES)
    for entry in entries:
        modelrepo.verify(entry)
        assert recipes.SPECS[entry.name].missed_bars(entry.card.metrics) == []
    _, _, x_test, y_test = data.stratified_split(*data.digits_32x32(), recipes.SPECS["lenet"].seed)
    logits = _run(REPO / "models", "lenet", x_test.numpy())
    assert np.mean(logits.argmax(1) == y_test.numpy()) >= 0.99


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


def test_mnist_idx_loader_pads_28x28_to_32x32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28))
    labels = np.arange(50) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    x_train, _, x_test, y_test = data.mnist(tmp_path, seed=0)
    assert x_train.shape == (40, 1, 32, 32) and x_test.shape == (10, 1, 32, 32)  # 80/20
    assert sorted(y_test.tolist()) == list(range(10))  # stratified: one test row per class
    everything = torch.cat([x_train, x_test])
    assert float(everything[:, :, :2].abs().max()) == 0.0  # the 2-pixel border is zero padding
    assert float(everything.max()) <= 1.0
    original = torch.tensor(images / 255.0, dtype=torch.float32)
    assert any(torch.equal(original[i], x_train[0, 0, 2:30, 2:30]) for i in range(50))

    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:10])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:10])
    x_train, _, x_test, y_test = data.mnist(tmp_path, seed=0)
    assert len(x_train) == 50 and len(x_test) == 10 and y_test.tolist() == list(range(10))


def test_mnist_loader_refuses_a_truncated_file(tmp_path: Path) -> None:
    _write_idx(tmp_path / "x", np.zeros((3, 28, 28)))
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"header says \(3, 28, 28\)"):
        data.read_idx(tmp_path / "x")


def test_cli_trains_lenet_on_mnist_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (50, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(50) % 10)
    out = tmp_path / "models"
    assert train_main(["lenet", "--quick", "--data", f"mnist:{tmp_path}", "--out", str(out)]) == 0
    card = modelrepo.read_card(out / "lenet" / "1")
    assert card.data["source"].startswith("MNIST IDX files")
    assert card.data["train_rows"] == 40 and card.data["test_rows"] == 10


@pytest.mark.parametrize("name", ["linear", "multilinear", "blobs"])
def test_the_card_and_the_onnx_file_record_the_seed_given(tmp_path: Path, name: str) -> None:
    assert train_main([name, "--quick", "--seed", "3", "--out", str(tmp_path)]) == 0
    card = modelrepo.read_card(tmp_path / name / "1")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / name / "1" / "model.onnx")).metadata_props}
    assert (card.seed, props["seed"]) == (3, "3")


def test_cli_refuses_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["resnet"])
    assert exit_info.value.code == 2
    assert "unknown model resnet: expected any of linear, multilinear, blobs, lenet" in capsys.readouterr().err
