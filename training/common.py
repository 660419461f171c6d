"""What every recipe shares: determinism, the training loop's progress bar, ONNX export and the card."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

import modelrepo

PARITY_BATCHES = (1, 7, 256)


def seed_everything(seed: int) -> None:
    """Same seed + one thread + the CPU-independent kernels (see training/__init__.py) = the same bytes."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise RuntimeError(
            f"torch runs its {capability} kernels: it was imported, with ATEN_CPU_CAPABILITY unset, before the "
            "training package pinned it; import training before torch"
        )
    torch.backends.mkldnn.enabled = False  # oneDNN chooses its convolution code by the CPU
    torch.backends.nnpack.set_flags(False)  # so does NNPACK, the next candidate for Conv2d
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # two threads give other LeNet weights than one
    torch.use_deterministic_algorithms(True)


def epochs_bar(epochs: int, desc: str) -> tqdm:  # type: ignore[type-arg]
    """A progress bar over epochs on a terminal; silent in logs and tests."""
    return tqdm(range(epochs), desc=desc, unit="epoch", file=sys.stderr, disable=None, leave=False)


@dataclass
class Trained:
    """What a recipe hands to the exporter: the fitted module and everything its card says."""

    name: str
    module: torch.nn.Module
    task: str
    description: str
    input_shape: tuple[int, ...]  # without the batch axis
    output_name: str
    output_shape: tuple[int, ...]  # without the batch axis
    parity_inputs: Callable[[int], np.ndarray]  # batch size -> float32 inputs from the data's range
    preprocessing: dict[str, Any]
    recipe: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, float]
    seed: int
    labels: tuple[str, ...] | None = None
    losses: list[float] = field(default_factory=list)
    input_range: tuple[float, float] | None = None  # the input's rule on values (None: any finite number)
    examples: list[Any] | None = None  # rows of an example request (the API docs show and send them)
    extra: dict[str, Any] = field(default_factory=dict)  # the card's `extra`: e.g. LeNet's recognition rule


def _strip_debug_metadata(model: onnx.ModelProto) -> None:
    """The exporter records source paths and stack traces per node; they are not reproducible."""
    graphs: list[onnx.GraphProto] = [model.graph]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        del graph.metadata_props[:]
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.doc_string = ""
            del value.metadata_props[:]
    for function in model.functions:
        function.doc_string = ""
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]
    model.doc_string = ""
    del model.metadata_props[:]


def _to_onnx(trained: Trained) -> onnx.ModelProto:
    module = trained.module.eval()
    example = (torch.from_numpy(trained.parity_inputs(4)),)
    program = torch.onnx.export(
        module,
        example,
        dynamo=True,
        input_names=["x"],
        output_names=[trained.output_name],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    assert program is not None
    proto: onnx.ModelProto = program.model_proto
    _strip_debug_metadata(proto)
    onnx.helper.set_model_props(
        proto, {"name": trained.name, "seed": str(trained.seed), "source": "tinyserve training"}
    )
    proto.model_version = 1
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_parity(trained: Trained, path: Path) -> float:
    """Torch and ONNX Runtime agree on batches of 1, 7 and 256; returns the worst absolute difference."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    regression = trained.task == "regression"
    worst = 0.0
    for batch in PARITY_BATCHES:
        x = trained.parity_inputs(batch)
        with torch.no_grad():
            expected = trained.module(torch.from_numpy(x)).numpy()
        (got,) = session.run(None, {"x": x})
        if got.shape != (batch, *trained.output_shape):
            raise AssertionError(f"{trained.name}: ONNX output shape {got.shape} for batch {batch}")
        if regression:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def export(trained: Trained, out: Path, version: str = "1") -> modelrepo.ModelEntry:
    """Export to `out/<name>/<version>/model.onnx`, check parity, write the card beside it."""
    directory = out / trained.name / version
    directory.mkdir(parents=True, exist_ok=True)
    proto = _to_onnx(trained)
    path = directory / modelrepo.MODEL_FILE
    onnx.save_model(proto, str(path), save_as_external_data=False)
    parity = check_parity(trained, path)
    card = modelrepo.ModelCard(
        name=trained.name,
        version=version,
        task=trained.task,
        description=trained.description,
        inputs=(modelrepo.TensorSpec("x", "float32", (-1, *trained.input_shape), trained.input_range),),
        outputs=(modelrepo.TensorSpec(trained.output_name, "float32", (-1, *trained.output_shape)),),
        preprocessing=trained.preprocessing,
        recipe=trained.recipe,
        seed=trained.seed,
        metrics=trained.metrics | {"parity_max_abs_diff": float(f"{parity:.3g}")},
        data=trained.data,
        sha256=modelrepo.sha256_file(path),
        opset=max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        producer={
            "name": proto.producer_name,
            "version": proto.producer_version,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
        labels=trained.labels,
        extra=trained.extra | ({"examples": trained.examples} if trained.examples is not None else {}),
    )
    modelrepo.write_card(card, directory)
    return modelrepo.ModelEntry(card=card, directory=directory)


def rounded(values: dict[str, float], digits: int = 6) -> dict[str, float]:
    """Card metrics rounded so they read well (and still compare exactly across identical runs)."""
    return {k: round(float(v), digits) for k, v in values.items()}


def save_figure(fig: Any, path: Path) -> None:
    """PNG next to the model, without the Matplotlib version in it (so that the bytes repeat)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_losses(ax: Any, losses: Iterable[float], title: str = "training loss") -> None:
    ax.plot(list(losses))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
