"""AdaRound (Nagel et al. 2020): learn whether each weight rounds up or down.

Why: at 4 bits, rounding every weight to its nearest level is what breaks a network
(EfficientNet-Lite0 W4A8: 20 % top-1), not the range or the bit-width. Rounding each weight
so that the *layer output* error is smallest, instead of each weight's own error, recovers
most of it: the errors of correlated inputs cancel.

The layer problem (one weight tensor at one bit-width, its scale fixed by calibration):
    minimize  ||W~ X - W X||^2 / (rows * outputs)  +  lambda * sum(1 - |2 h(V) - 1|^beta)
    W~ = s * clip(floor(W / s) + h(V), qmin, qmax),
    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)   (rectified sigmoid)
with beta annealed from 20 to 2 after a warm start without the regularizer, Adam on V, and
W~ = s * clip(floor(W/s) + [h(V) >= 0.5]) at the end. The weight is a batch of matrices
[groups, out, K] (a grouped Conv is one matrix per group), optimized all at once.

The reconstruction term needs X only through its Gram matrix G = X X^T / rows:
||(W~ - W) X||^2 = tr(D G D^T) with D = W~ - W, so an iteration costs the same whatever the
number of calibration rows. G is used as a factor F with G ~= F F^T (its leading
eigenvectors, see `gram_factor`): D G = (D F) F^T, cheaper when activations are low-rank.
Inputs from the quantized network (AIMET style: W~ x_q against W x_f) add a constant term:
the gradient is 2 (D G_qq - W (G_fq - G_qq)) = 2 (D G_qq - T) with T precomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True, slots=True)
class AdaRoundParams:
    """Hyper-parameters of the optimization; every field is part of the cache key.

    Full-batch gradients (the Gram form) converge in far fewer steps than the paper's
    10 000 mini-batch ones; the defaults were chosen on EfficientNet-Lite0 (README).
    """

    iterations: int = 300
    learning_rate: float = 0.05
    reg_weight: float = 1.0  # lambda, on the reconstruction error per row in units of the row's step
    warm_start: float = 0.2  # fraction of iterations without the regularizer
    beta_start: float = 20.0
    beta_end: float = 2.0
    energy: float = 0.9999  # fraction of tr(G) the factor keeps


@dataclass(frozen=True, slots=True)
class LayerProblem:
    """One weight tensor as matrices, with its quantizer and what its inputs contribute.

    `weight` [groups, out, K] float32; `scale` broadcastable to it (per output row);
    `factor` [groups, K, r] with G ~= F F^T, or G itself when `is_gram`; `target` [groups, out, K] or None: the
    constant T = W (G_fq - G_qq) of the quantized-input loss (None: float inputs).
    """

    weight: np.ndarray
    scale: np.ndarray
    qmin: int
    qmax: int
    factor: np.ndarray
    target: np.ndarray | None = None
    is_gram: bool = False


def gram_factor(gram: np.ndarray, energy: float) -> np.ndarray:
    """F [groups, K, r] with F F^T ~= G: the eigenvectors keeping `energy` of the trace.

    r is the same for every group (the largest any group needs), so one batched matmul does
    all groups. When r > K / 2, two products with F cost more than one with G: G itself is
    returned (a [groups, K, K] "factor" marked by `is_gram`).

    >>> f = gram_factor(np.array([[[4.0, 0.0], [0.0, 1e-9]]]), 0.999)
    >>> f.shape, float(f[0, 0, 0] ** 2)
    ((1, 2, 1), 4.0)
    """
    values, vectors = np.linalg.eigh(np.asarray(gram, np.float64))
    values = np.clip(values[:, ::-1], 0, None)
    vectors = vectors[:, :, ::-1]
    total = np.maximum(values.sum(axis=1, keepdims=True), 1e-300)
    needed = (np.cumsum(values, axis=1) / total < energy).sum(axis=1) + 1
    rank = int(min(values.shape[1], needed.max()))
    if 2 * rank > gram.shape[-1]:
        return np.asarray(gram, np.float32)
    return np.asarray(vectors[:, :, :rank] * np.sqrt(values[:, None, :rank]), np.float32)


def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    """h(V) in [0, 1]; exactly 0 or 1 once |V| is large enough (about 3.04).

    >>> rectified_sigmoid(np.array([-5.0, 0.0, 5.0])).round(3).tolist()
    [0.0, 0.5, 1.0]
    """
    return np.asarray(np.clip(1 / (1 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0, 1))


def initial_v(rest: np.ndarray) -> np.ndarray:
    """V with h(V) = `rest` (the fractional part of W / s), so the start is W itself."""
    p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p)).astype(np.float32)


def beta_at(step: int, params: AdaRoundParams) -> float | None:
    """The annealed exponent at `step`, None during the warm start (no regularizer).

    >>> p = AdaRoundParams(iterations=100, warm_start=0.2)
    >>> beta_at(10, p), beta_at(20, p), beta_at(99, p)
    (None, 20.0, 2.0)
    """
    warm = int(params.warm_start * params.iterations)
    if step < warm:
        return None
    progress = (step - warm) / max(1, params.iterations - 1 - warm)
    return params.beta_end + (params.beta_start - params.beta_end) * (1 - progress)


def adaround(problem: LayerProblem, params: AdaRoundParams) -> tuple[np.ndarray, np.ndarray]:
    """The rounded integers [groups, out, K] (int64) and the final h(V).

    Deterministic: no randomness inside (the data was sampled by the caller). Weights whose
    two neighbouring levels are not both on the grid (clipped outliers) stay at nearest.
    The loop runs in place on float32 arrays: its element-wise work, not the matrix
    product, is what costs on the large layers.
    """
    w = problem.weight.astype(np.float32)
    scale = np.broadcast_to(np.asarray(problem.scale, np.float32), w.shape)
    floor = np.floor(w / scale)
    movable = (floor >= problem.qmin) & (floor < problem.qmax)
    base = np.where(movable, floor, np.clip(np.round(w / scale), problem.qmin, problem.qmax)).astype(np.float32)
    v = np.where(movable, initial_v(w / scale - floor), -10.0).astype(np.float32)
    step_h = (scale * movable).astype(np.float32)  # d W~ / d h
    offset = scale * base - w  # W~ - W = step_h * h + offset
    with np.errstate(divide="ignore", over="ignore"):  # a dead input (tr G = 0) or a ~0 scale: no error to fit
        ratio = 2.0 * w.shape[2] / (scale.astype(np.float64) ** 2 * _trace(problem))
    grad_scale = (step_h * np.where(np.isfinite(ratio), np.minimum(ratio, 1e30), 0.0)).astype(np.float32)
    loop = _Loop(v.shape)
    adam = _Adam(v.shape, params.learning_rate)
    for step in range(params.iterations):
        sig, h = loop.sigmoid_h(v)
        grad_h = _reconstruction_grad(step_h * h + offset, problem)
        grad_h *= grad_scale
        beta = beta_at(step, params)
        if beta is not None:
            loop.add_regularizer_grad(grad_h, h, params.reg_weight, beta)
        loop.chain_to_v(grad_h, sig, h)
        adam.step(v, grad_h)
    h = rectified_sigmoid(v)
    q = np.where(movable, floor + (h >= 0.5), base).astype(np.int64)
    return q, h


class _Loop:
    """Scratch arrays of the element-wise steps, reused every iteration."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.sig = np.empty(shape, np.float32)
        self.h = np.empty(shape, np.float32)
        self.tmp = np.empty(shape, np.float32)

    def sigmoid_h(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        np.negative(v, out=self.sig)
        np.exp(self.sig, out=self.sig)
        self.sig += 1
        np.reciprocal(self.sig, out=self.sig)
        np.multiply(self.sig, np.float32(ZETA - GAMMA), out=self.h)
        self.h += np.float32(GAMMA)
        np.clip(self.h, 0, 1, out=self.h)
        return self.sig, self.h

    def add_regularizer_grad(self, grad: np.ndarray, h: np.ndarray, weight: float, beta: float) -> None:
        """grad += d/dh of weight * (1 - |2h - 1|^beta) = -2 beta weight |2h-1|^(beta-1) sign(2h-1)."""
        centered = np.multiply(h, np.float32(2), out=self.tmp)
        centered -= 1
        magnitude = np.abs(centered)
        np.power(magnitude, np.float32(beta - 1), out=magnitude)
        np.copysign(magnitude, centered, out=magnitude)
        magnitude *= np.float32(2 * beta * weight)
        grad -= magnitude

    def chain_to_v(self, grad: np.ndarray, sig: np.ndarray, h: np.ndarray) -> None:
        """grad (d/dh) becomes d/dV: times (zeta - gamma) sig (1 - sig) where 0 < h < 1."""
        np.subtract(np.float32(1), sig, out=self.tmp)
        self.tmp *= sig
        self.tmp *= (h > 0) & (h < 1)
        self.tmp *= np.float32(ZETA - GAMMA)
        grad *= self.tmp


def _trace(problem: LayerProblem) -> np.ndarray:
    """tr(G) per group, [groups, 1, 1]."""
    f = problem.factor.astype(np.float64)
    trace = np.trace(f, axis1=1, axis2=2) if problem.is_gram else np.sum(f * f, axis=(1, 2))
    return np.asarray(trace[:, None, None])


def _reconstruction_grad(diff: np.ndarray, problem: LayerProblem) -> np.ndarray:
    """D G (minus T with quantized inputs): half the gradient of the output error."""
    f = problem.factor
    grad = np.matmul(diff, f) if problem.is_gram else np.matmul(np.matmul(diff, f), f.transpose(0, 2, 1))
    if problem.target is not None:
        grad -= problem.target
    return np.asarray(grad)


def output_error(q: np.ndarray, problem: LayerProblem) -> float:
    """tr(D G D^T) / (groups * out) of integers `q` (float inputs), to compare roundings."""
    diff = np.asarray(problem.scale, np.float64) * q - problem.weight.astype(np.float64)
    projected = np.matmul(diff, problem.factor.astype(np.float64))
    total = np.sum(diff * projected) if problem.is_gram else np.sum(projected * projected)
    return float(total / (q.shape[0] * q.shape[1]))


class _Adam:
    """Adam (Kingma & Ba) on one array, updated in place; state is local to one layer."""

    def __init__(self, shape: tuple[int, ...], lr: float, b1: float = 0.9, b2: float = 0.999) -> None:
        self.m = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.tmp = np.empty(shape, np.float32)
        self.lr, self.b1, self.b2, self.t = lr, b1, b2, 0

    def step(self, x: np.ndarray, grad: np.ndarray) -> None:
        """x -= lr * m_hat / (sqrt(v_hat) + eps), with the bias corrections folded into scalars."""
        self.t += 1
        self.m *= np.float32(self.b1)
        self.m += np.multiply(grad, np.float32(1 - self.b1), out=self.tmp)
        self.v *= np.float32(self.b2)
        np.multiply(grad, grad, out=self.tmp)
        self.tmp *= np.float32(1 - self.b2)
        self.v += self.tmp
        correction = np.sqrt(1 - self.b2**self.t)
        np.sqrt(self.v, out=self.tmp)
        self.tmp += np.float32(1e-8 * correction)
        np.divide(self.m, self.tmp, out=self.tmp)
        self.tmp *= np.float32(self.lr * correction / (1 - self.b1**self.t))
        x -= self.tmp
