"""The model repository: `models/<name>/<version>/{model.onnx, card.json}`.

This is the one contract shared by training (writes), the service and the client (read). It imports
nothing beyond the standard library so that every side can use it without torch or bentoml.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
CARD_SCHEMA_VERSION = 1
# Every input value must be finite and at most 1e30 in magnitude: the models compute in float32 (max ~3.4e38),
# and larger inputs overflow. Images (the classifiers of pictures) take pixels in [0, 1] instead.
# The bound is float32(1e30), exact in float32 and float64 alike, so that a value passes or fails the same
# whether it is checked as JSON text, as float64 or as float32 bytes.
MAX_MAGNITUDE = 1.0000000150474662e30
# Rows in one request on the typed JSON routes: the server's limit, which the client keeps to as well.
MAX_ROWS = 4096  # rows of features
MAX_IMAGES = 256  # pictures (a 32x32 picture is ~8 KB of JSON)
MNIST_PAD = 2  # a card with preprocessing "mnist_28x28" also takes pictures 2 pixels smaller on each side


class ModelRepositoryError(Exception):
    """A model directory is missing, malformed, or does not match its card."""


# numpy's dtype names (the card's) -> the Open Inference Protocol's datatypes
DATATYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


class ModelKind(enum.Enum):
    """What a model is, read off its card: it decides the typed route's request and answer."""

    REGRESSION = "regression"  # rows of features -> one number a row
    BINARY = "binary-classification"  # rows of features -> P(label 1) a row
    MULTICLASS = "multiclass-classification"  # rows of features -> logits over the card's labels
    IMAGE = "image-classification"  # [N, 1, H, W] pictures, pixels in [0, 1] -> logits over the labels

    @property
    def max_rows(self) -> int:
        """Most rows (or pictures) in one request on this kind's typed route."""
        return MAX_IMAGES if self is ModelKind.IMAGE else MAX_ROWS

    @property
    def classifies(self) -> bool:
        """Its answer is a class over the card's labels, with the probabilities of them all."""
        return self in (ModelKind.MULTICLASS, ModelKind.IMAGE)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from a classifier's logits, row by row, in the logits' dtype: the server, the client and
    --local compute them with this one function, so that their answers are equal to the bit."""
    import numpy as np  # only a caller that holds an array needs numpy; the module itself needs none

    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return probabilities


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a model; -1 marks the dynamic batch axis.

    `range` is an input's rule on values, [low, high] and finite; None: any finite number up to MAX_MAGNITUDE.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    range: tuple[float, float] | None = None

    @property
    def datatype(self) -> str:
        """The Open Inference Protocol's name of the dtype (FP32, INT64, ...)."""
        return DATATYPES.get(self.dtype, self.dtype.upper())

    @property
    def value_range(self) -> tuple[float, float]:
        return self.range if self.range is not None else (-MAX_MAGNITUDE, MAX_MAGNITUDE)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.range is not None:
            d["range"] = list(self.range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        bounds = d.get("range")
        value_range = (float(bounds[0]), float(bounds[1])) if bounds is not None else None
        if value_range is not None and not value_range[0] <= value_range[1]:
            raise ValueError(f"tensor {d['name']!r}: range {list(value_range)} is empty")
        return cls(
            name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(int(s) for s in d["shape"]), range=value_range
        )


@dataclass(frozen=True)
class ModelCard:
    """What a served model is, how it was made and how well it does. No wall-clock values."""

    name: str
    version: str
    task: str  # "regression" | "binary-classification" | "multiclass-classification"
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: dict[str, Any]
    recipe: dict[str, Any]
    seed: int
    metrics: dict[str, float]
    data: dict[str, Any]
    sha256: str
    opset: int
    producer: dict[str, str]
    labels: tuple[str, ...] | None = None
    schema_version: int = CARD_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_range(self) -> tuple[float, float]:
        """The one rule on input values, the same on every route and in the client: [low, high], finite."""
        return self.inputs[0].value_range

    @property
    def logits(self) -> bool:
        """A classifier whose output is named "logits": its probabilities are their softmax (else the output is
        the probabilities)."""
        return self.outputs[0].name == "logits"

    @property
    def padded_side(self) -> int:
        """A picture model that also takes MNIST-sized pictures, zero-padded to its side: their side (else 0)."""
        return int(self.inputs[0].shape[-1]) - 2 * MNIST_PAD if "mnist_28x28" in self.preprocessing else 0

    @property
    def kind(self) -> ModelKind:
        """The kind of model, from the task and the input's shape; ModelRepositoryError if none fits."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ModelRepositoryError(
                f"{self.name}/{self.version}: expected one input and one output, "
                f"the card has {len(self.inputs)} and {len(self.outputs)}"
            )
        (spec_in,), (spec_out,) = self.inputs, self.outputs
        try:
            task = ModelKind(self.task)
        except ValueError:
            known = ", ".join(k.value for k in ModelKind if k is not ModelKind.IMAGE)
            raise ModelRepositoryError(
                f"{self.name}/{self.version}: unknown task {self.task!r}; expected {known}"
            ) from None
        if task is ModelKind.MULTICLASS and len(spec_in.shape) == 4 and spec_in.shape[1] == 1:
            task = ModelKind.IMAGE  # [N, 1, H, W]: grayscale pictures
        elif len(spec_in.shape) != 2:
            raise ModelRepositoryError(
                f"{self.name}/{self.version}: input {spec_in.name!r} has shape {list(spec_in.shape)}; "
                "expected [-1, features] (or [-1, 1, height, width] for pictures)"
            )
        width = 1 if task in (ModelKind.REGRESSION, ModelKind.BINARY) else len(self.labels or ())
        if task is not ModelKind.REGRESSION and len(self.labels or ()) < 2:
            raise ModelRepositoryError(f"{self.name}/{self.version}: a classifier's card needs its labels")
        if len(spec_out.shape) != 2 or spec_out.shape[1] != width:
            raise ModelRepositoryError(
                f"{self.name}/{self.version}: output {spec_out.name!r} has shape {list(spec_out.shape)}; "
                f"expected [-1, {width}] for {self.task}"
            )
        return task

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["labels"] = list(self.labels) if self.labels is not None else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        try:
            labels = d.get("labels")
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                task=str(d["task"]),
                description=str(d["description"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
                preprocessing=dict(d["preprocessing"]),
                recipe=dict(d["recipe"]),
                seed=int(d["seed"]),
                metrics={k: float(v) for k, v in d["metrics"].items()},
                data=dict(d["data"]),
                sha256=str(d["sha256"]),
                opset=int(d["opset"]),
                producer={k: str(v) for k, v in d["producer"].items()},
                labels=tuple(str(x) for x in labels) if labels is not None else None,
                schema_version=int(d.get("schema_version", CARD_SCHEMA_VERSION)),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelRepositoryError(f"malformed card: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class ModelEntry:
    """One version of one model on disk."""

    card: ModelCard
    directory: Path

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_card(card: ModelCard, directory: Path) -> Path:
    path = directory / CARD_FILE
    path.write_text(card.to_json(), encoding="utf-8")
    return path


def read_card(directory: Path) -> ModelCard:
    path = directory / CARD_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelRepositoryError(f"{path}: card not found") from e
    except json.JSONDecodeError as e:
        raise ModelRepositoryError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ModelRepositoryError(f"{path}: expected a JSON object")
    try:
        return ModelCard.from_dict(raw)
    except ModelRepositoryError as e:
        raise ModelRepositoryError(f"{path}: {e}") from e


def verify(entry: ModelEntry) -> None:
    """Raise ModelRepositoryError naming the file if it is missing or its sha256 differs from the card."""
    path = entry.model_path
    if not path.is_file():
        raise ModelRepositoryError(f"{path}: model file is missing")
    actual = sha256_file(path)
    if actual != entry.card.sha256:
        raise ModelRepositoryError(
            f"{path}: sha256 mismatch (card says {entry.card.sha256}, file has {actual}); "
            "the file was modified or the card is stale"
        )


def version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def discover(root: Path) -> list[ModelEntry]:
    """Every `<root>/<name>/<version>/card.json`, sorted by name then version (numeric versions first)."""
    if not root.is_dir():
        raise ModelRepositoryError(f"{root}: model repository directory not found")
    entries = []
    for card_path in sorted(root.glob(f"*/*/{CARD_FILE}")):
        directory = card_path.parent
        card = read_card(directory)
        if (card.name, card.version) != (directory.parent.name, directory.name):
            raise ModelRepositoryError(
                f"{card_path}: card names {card.name}/{card.version} but lives in "
                f"{directory.parent.name}/{directory.name}"
            )
        entries.append(ModelEntry(card=card, directory=directory))
    return sorted(entries, key=lambda e: (e.name, version_key(e.version)))


def latest(entries: list[ModelEntry]) -> dict[str, ModelEntry]:
    """The newest version of each model name (entries as sorted by `discover`)."""
    return {e.name: e for e in entries}


# -- publishing and version policies (the repository that changes while a server runs)

POLICY_FILE = "config.json"  # <root>/<name>/config.json: {"version_policy": {...}}, as Triton's model config
STAGING_PREFIX = ".publishing-"  # <root>/.publishing-*/<name>/<version>: three deep, never seen by `discover`


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served, as Triton's `version_policy`: latest N, all, or specific ones."""

    kind: str = "all"  # "latest" | "all" | "specific"; all: what a repository without a config always served
    num_versions: int = 1
    versions: tuple[str, ...] = ()

    def select(self, versions: list[str]) -> list[str]:
        ordered = sorted(versions, key=version_key)
        if self.kind == "latest":
            return ordered[-self.num_versions :]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    def to_dict(self) -> dict[str, Any]:
        """Triton's JSON form, as the model metadata shows it."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind == "specific":
            return {"specific": {"versions": [int(v) if v.isdigit() else v for v in self.versions]}}
        return {"all": {}}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> VersionPolicy:
        expected = 'expected {"latest": {"num_versions": N}}, {"all": {}} or {"specific": {"versions": [...]}}'
        if not isinstance(d, dict) or len(d) != 1:
            raise ModelRepositoryError(f"{where}: version_policy must name one policy; {expected}")
        ((kind, body),) = d.items()
        body = body if isinstance(body, dict) else {}
        if kind == "all":
            return cls("all")
        if kind == "latest" and isinstance(body.get("num_versions"), int) and body["num_versions"] >= 1:
            return cls("latest", num_versions=body["num_versions"])
        if kind == "specific" and isinstance(body.get("versions"), list) and body["versions"]:
            return cls("specific", versions=tuple(str(v) for v in body["versions"]))
        raise ModelRepositoryError(f"{where}: version_policy {json.dumps(d)} is not valid; {expected}")


def read_policy(root: Path, name: str) -> VersionPolicy:
    """The model's version policy from `<root>/<name>/config.json`; all versions when there is none."""
    path = root / name / POLICY_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return VersionPolicy()
    except json.JSONDecodeError as e:
        raise ModelRepositoryError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or "version_policy" not in raw:
        raise ModelRepositoryError(f'{path}: expected {{"version_policy": {{...}}}}')
    return VersionPolicy.from_dict(raw["version_policy"], str(path))


def served_by_policy(root: Path, entries: list[ModelEntry]) -> list[ModelEntry]:
    """The entries each model's version policy picks (discover's order kept); the others are not checked or served."""
    chosen = set()
    for name in {e.name for e in entries}:
        versions = read_policy(root, name).select([e.version for e in entries if e.name == name])
        chosen |= {(name, version) for version in versions}
    return [e for e in entries if (e.name, e.version) in chosen]


def next_version(root: Path, name: str) -> str:
    """One more than the highest numeric version of `name` in the repository ("1" for a new model)."""
    numbers = [int(p.name) for p in (root / name).glob("*") if p.is_dir() and p.name.isdigit()]
    return str(max(numbers, default=0) + 1)


def publish(staged: Path, root: Path, name: str, version: str) -> Path:
    """Move a finished version directory into the repository in one rename: a reader sees all of it or none.

    `staged` must be on the repository's file system (under `root`, see STAGING_PREFIX): a rename across file
    systems is a copy, which a reader could see half done.
    """
    target = root / name / version
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise ModelRepositoryError(f"{target}: version {version} of {name} was published meanwhile; publish again")
    staged.rename(target)  # atomic on one file system; refuses a non-empty target
    return target
