"""A fifth model no code knows: three Gaussian blobs told apart by a 2 -> 8 -> 3 MLP, trained in seconds.

Issue 19's proof that what a model is comes from its card: trained and exported with the training
package's own `Trained` and `export` into a temporary repository, it is served and scored with no change
to the service or the client.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import modelrepo
import training  # noqa: F401  # pins torch's kernels before torch is first imported
from training.common import Trained, export

NAME = "colors"
LABELS = ("red", "green", "blue")
CENTRES = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=np.float32)  # one blob per label, far apart


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, len(LABELS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the exporter names the ONNX input after `x`
        return self.layers(x)  # (B, 2) -> (B, 3) logits


def points(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` points around each centre (std 0.5), shuffled, with their labels' indices."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(LABELS)), per_class)
    x = CENTRES[labels] + rng.normal(0, 0.5, (len(labels), 2)).astype(np.float32)
    order = rng.permutation(len(labels))
    return x[order].astype(np.float32), labels[order]


def train(out: Path) -> modelrepo.ModelEntry:
    """Train the classifier (full-batch Adam, 200 steps) and export it as `out/colors/1`."""
    torch.manual_seed(0)
    x, y = points(100, seed=0)
    module = Classifier()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(200):
        loss = nn.functional.cross_entropy(module(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((module(inputs).argmax(1) == targets).float().mean())
    trained = Trained(
        name=NAME,
        module=module,
        task="multiclass-classification",
        description="Three Gaussian blobs (red, green, blue) told apart by a 2-8-3 MLP.",
        input_shape=(2,),
        output_name="logits",
        output_shape=(len(LABELS),),
        parity_inputs=lambda n: points(n, seed=1)[0][:n],
        preprocessing={"x": "the point's two coordinates, raw"},
        recipe={"optimizer": "Adam", "lr": 0.05, "steps": 200},
        data={"source": "three Gaussian blobs, std 0.5", "train_rows": len(x)},
        metrics={"train_accuracy": accuracy},
        seed=0,
        labels=LABELS,
        input_range=(-100.0, 100.0),
    )
    return export(trained, out)
