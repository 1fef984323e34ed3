"""Build the small digits CNN used as onnxmp's real-model test fixture.

Why: the compiler needs a tiny but *real* trained network whose accuracy can
be measured before and after quantization, and whose graph exercises the
cases a quantizer has to handle: Conv with and without bias, un-folded
BatchNormalization (the compiler's BN-folding pass is tested on it), a
residual Add, a Concat of two branches, ReLU and ReLU6 (Clip with min/max as
constant inputs, opset-13+ style), MaxPool, a depthwise (grouped) Conv,
Flatten and two Gemm layers.

What: trains the network with PyTorch on scikit-learn's bundled 8x8 digits
data set (no download), exports it by hand with ``onnx.helper`` (not
``torch.onnx.export``, so the graph layout and names are fully under our
control), checks that ONNX Runtime agrees with PyTorch, and writes

* ``digits_cnn.onnx``   - the float32 model (opset 17), input "image"
  [N,1,8,8], output "logits" [N,10];
* ``digits_calib.npz``  - "image": 256 unlabeled training images for
  calibration;
* ``digits_eval.npz``   - "image" [500,1,8,8] float32 and "label" [500]
  int64, the held-out test split.

All outputs go next to this script. Everything is seeded, so reruns give the
same files. torch is a dev-time dependency of this script only:

    pip install torch==2.13.0 scikit-learn
    python models/make_digits_cnn.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

OUT_DIR = Path(__file__).resolve().parent
MODEL_PATH = OUT_DIR / "digits_cnn.onnx"
CALIB_PATH = OUT_DIR / "digits_calib.npz"
EVAL_PATH = OUT_DIR / "digits_eval.npz"

SEED = 0
TEST_SIZE = 500
CALIB_SIZE = 256
EPOCHS = 40
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 1  # random +-1 pixel translation augmentation
BN_EPS = 1e-5
OPSET = 17
IR_VERSION = 9
MIN_TOP1 = 0.95
MAX_ABS_DIFF = 1e-4


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test); x is float32 NCHW in [0, 1]."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )
    return x_train, y_train, x_test, y_test


def calibration_images(x_train: np.ndarray) -> np.ndarray:
    """First CALIB_SIZE images of a seeded permutation of the training split."""
    perm = np.random.default_rng(SEED).permutation(len(x_train))
    return np.ascontiguousarray(x_train[perm[:CALIB_SIZE]])


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels (zero fill)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (MAX_SHIFT,) * 4)
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """The PyTorch twin of the hand-built ONNX graph (see build_onnx)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.ModuleDict(
            {
                "conv": nn.Conv2d(1, 16, 3, padding=1, bias=False),
                "bn": nn.BatchNorm2d(16, eps=BN_EPS),
            }
        )
        self.branch_a = nn.ModuleDict({"conv": nn.Conv2d(16, 16, 3, padding=1)})
        self.branch_b = nn.ModuleDict({"conv": nn.Conv2d(16, 16, 1)})
        self.proj = nn.ModuleDict(
            {"conv": nn.Conv2d(32, 16, 1, bias=False), "bn": nn.BatchNorm2d(16, eps=BN_EPS)}
        )
        self.dw = nn.ModuleDict({"conv": nn.Conv2d(16, 16, 3, padding=1, groups=16)})
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = torch.relu(self.stem["bn"](self.stem["conv"](x)))
        a = torch.relu(self.branch_a["conv"](stem))
        b = torch.clamp(self.branch_b["conv"](stem), 0.0, 6.0)
        proj = self.proj["bn"](self.proj["conv"](torch.cat([a, b], dim=1)))
        y = nn.functional.max_pool2d(torch.relu(stem + proj), 2, 2)
        y = torch.relu(self.dw["conv"](y))
        y = torch.relu(self.fc1(torch.flatten(y, 1)))
        return self.fc2(y)


def seed_everything() -> torch.Generator:
    """Make training bit-reproducible on CPU; return the augmentation RNG."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    return torch.Generator().manual_seed(SEED)


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    """Train with Adam + cosine LR + random shifts; return the model in eval mode."""
    gen = seed_everything()
    model = DigitsCNN()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(xt) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), BATCH_SIZE):
            idx = perm[start : start + BATCH_SIZE]
            xb = random_shift(xt[idx], gen)
            loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(xt):.4f}")
    return model.eval()


def torch_logits(model: DigitsCNN, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------
# ONNX export (by hand)
# --------------------------------------------------------------------------


def weights(model: DigitsCNN) -> dict[str, np.ndarray]:
    """state_dict as float32 numpy arrays, minus BN bookkeeping counters."""
    return {
        k: v.detach().cpu().numpy().astype(np.float32)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def conv_node(
    name: str, x: str, w: str, b: str | None, out: str, *, k: int, group: int = 1
) -> onnx.NodeProto:
    pad = k // 2
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node(
        "Conv",
        inputs,
        [out],
        name=name,
        kernel_shape=[k, k],
        pads=[pad] * 4,
        strides=[1, 1],
        dilations=[1, 1],
        group=group,
    )


def bn_node(name: str, x: str, prefix: str, out: str) -> onnx.NodeProto:
    inputs = [
        f"{prefix}.weight",
        f"{prefix}.bias",
        f"{prefix}.running_mean",
        f"{prefix}.running_var",
    ]
    return helper.make_node("BatchNormalization", [x, *inputs], [out], name=name, epsilon=BN_EPS)


def build_nodes() -> list[onnx.NodeProto]:
    """The graph, in topological order; tensor names follow node names."""
    mk = helper.make_node
    return [
        conv_node("stem/conv", "image", "stem.conv.weight", None, "stem/conv_out", k=3),
        bn_node("stem/bn", "stem/conv_out", "stem.bn", "stem/bn_out"),
        mk("Relu", ["stem/bn_out"], ["stem"], name="stem/relu"),
        conv_node(
            "branch_a/conv",
            "stem",
            "branch_a.conv.weight",
            "branch_a.conv.bias",
            "branch_a/conv_out",
            k=3,
        ),
        mk("Relu", ["branch_a/conv_out"], ["branch_a"], name="branch_a/relu"),
        conv_node(
            "branch_b/conv",
            "stem",
            "branch_b.conv.weight",
            "branch_b.conv.bias",
            "branch_b/conv_out",
            k=1,
        ),
        mk(
            "Clip",
            ["branch_b/conv_out", "branch_b.clip.min", "branch_b.clip.max"],
            ["branch_b"],
            name="branch_b/relu6",
        ),
        mk("Concat", ["branch_a", "branch_b"], ["concat"], name="concat", axis=1),
        conv_node("proj/conv", "concat", "proj.conv.weight", None, "proj/conv_out", k=1),
        bn_node("proj/bn", "proj/conv_out", "proj.bn", "proj"),
        mk("Add", ["stem", "proj"], ["residual/add_out"], name="residual/add"),
        mk("Relu", ["residual/add_out"], ["residual"], name="residual/relu"),
        mk("MaxPool", ["residual"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        conv_node(
            "dw/conv", "pool", "dw.conv.weight", "dw.conv.bias", "dw/conv_out", k=3, group=16
        ),
        mk("Relu", ["dw/conv_out"], ["dw"], name="dw/relu"),
        mk("Flatten", ["dw"], ["flatten"], name="flatten", axis=1),
        mk(
            "Gemm",
            ["flatten", "fc1.weight", "fc1.bias"],
            ["fc1/gemm_out"],
            name="fc1/gemm",
            transB=1,
        ),
        mk("Relu", ["fc1/gemm_out"], ["fc1"], name="fc1/relu"),
        mk("Gemm", ["fc1", "fc2.weight", "fc2.bias"], ["logits"], name="fc2/gemm", transB=1),
    ]


def build_initializers(
    w: dict[str, np.ndarray], nodes: list[onnx.NodeProto]
) -> list[onnx.TensorProto]:
    """Initializers in order of first use by the nodes."""
    consts = dict(w)
    consts["branch_b.clip.min"] = np.array(0.0, dtype=np.float32)
    consts["branch_b.clip.max"] = np.array(6.0, dtype=np.float32)
    order: list[str] = []
    for node in nodes:
        order.extend(n for n in node.input if n in consts and n not in order)
    unused = set(consts) - set(order)
    if unused:
        raise RuntimeError(f"state_dict entries not used by the graph: {sorted(unused)}")
    return [numpy_helper.from_array(consts[name], name=name) for name in order]


def build_onnx(model: DigitsCNN) -> onnx.ModelProto:
    nodes = build_nodes()
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=build_initializers(weights(model), nodes),
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="onnxmp/models/make_digits_cnn.py",
        doc_string="8x8 digits CNN (sklearn load_digits), float32, BatchNorm not folded.",
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


# --------------------------------------------------------------------------
# Output + verification
# --------------------------------------------------------------------------


def atomic_write(path: Path, write, check=None) -> None:
    """Call write(fileobj) on a temp file in path's directory, optionally
    check(temp_path), then os.replace it onto path (removed on failure)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    # Deliberately plain onnxruntime, not onnxmp.runtime: this fixture generator
    # must not depend on the compiler it is used to test.
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # noqa: TID251
    return sess.run(["logits"], {"image": x})[0]


def verify(path: Path, model: DigitsCNN, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Check ORT(path) == torch on the test set and top-1 >= MIN_TOP1; return top-1."""
    ref = torch_logits(model, x_test)
    got = ort_logits(path, x_test)
    diff = float(np.max(np.abs(ref - got)))
    top1 = float(np.mean(got.argmax(axis=1) == y_test))
    print(f"torch vs onnxruntime max |diff| = {diff:.3g}")
    print(
        f"onnxruntime test top-1 = {top1 * 100:.2f}% ({int(round(top1 * len(y_test)))}/{len(y_test)})"
    )
    if diff >= MAX_ABS_DIFF:
        raise SystemExit(f"FAIL: torch/onnxruntime mismatch {diff:.3g} >= {MAX_ABS_DIFF}")
    if top1 < MIN_TOP1:
        raise SystemExit(f"FAIL: test top-1 {top1 * 100:.2f}% < {MIN_TOP1 * 100:.0f}%")
    return top1


def main() -> int:
    x_train, y_train, x_test, y_test = load_split()
    print(f"train {x_train.shape}, test {x_test.shape}")
    model = train(x_train, y_train)
    onnx_model = build_onnx(model)
    # The model only replaces MODEL_PATH once onnxruntime has verified it.
    atomic_write(
        MODEL_PATH,
        lambda f: f.write(onnx_model.SerializeToString()),
        check=lambda tmp: verify(tmp, model, x_test, y_test),
    )
    save_npz(CALIB_PATH, image=calibration_images(x_train))
    save_npz(EVAL_PATH, image=np.ascontiguousarray(x_test), label=y_test.astype(np.int64))
    for p in (MODEL_PATH, CALIB_PATH, EVAL_PATH):
        print(f"wrote {p.name} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
