"""Top-k right singular vectors of region-masked Jacobians d(mask * eps)/dh, matrix-free.

Krylov iteration on J_a^T J_a over panels of vectors (the literature's "block Krylov"; here a
*block* is a region or complement, see ``localedit.core.mining``): each iteration pushes one
new panel per region through one batched JVP and one batched VJP (``vmap``) through a single
reused linearisation. The JVP is reverse mode applied twice (the VJP of the linear map
u -> J^T u), so the products hold no process-wide forward-AD lock and threads of one process
compute Jacobians at once. The unmasked product J V is shared by every region (only the mask
differs), so R regions cost one stack of tangents, not R passes. Every panel
and its image under J^T J are kept, so a Rayleigh-Ritz step over the whole basis (a small
eigenproblem, no extra products) gives ordered singular vectors and values each iteration;
the basis grows by the residuals of the leading Ritz vectors. Keeping the history, rather
than only the latest panel as plain subspace iteration does, needs several times fewer
products when singular values are close. The basis is capped (the least useful Ritz vectors
make room), so memory is a few panels of h-space vectors; the Jacobian (output size x
h-dimension) is never formed.

The iteration itself (``top_eigenpairs``) needs only a batched product with a symmetric
operator, one per region, and finds its algebraically largest eigenpairs: ``subspaces`` runs
it on J_a^T J_a (singular values are the roots of its eigenvalues), region contrast
(``localedit.core.contrast``) on the indefinite sum_i J_i^T W_a J_i over a batch of images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import vjp, vmap
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from localedit.core.hspace import HState, decode
from localedit.core.models import DiffusionModel, prediction_type
from localedit.core.parameterisation import noise_gain
from localedit.core.settings import PRECISIONS, MiningSettings
from localedit.core.subspace import fix_signs, largest_angle_sine, project_out


@dataclass
class Subspace:
    """Top-k right singular vectors (columns of ``basis``, flat over h) of one masked Jacobian."""

    basis: torch.Tensor
    singular_values: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    seconds: float


BASIS_PANELS = 8  # the basis holds at most this many panels of k + oversample vectors


def _orthonormal(panels: torch.Tensor) -> torch.Tensor:
    """QR per region: (R, d, k) -> orthonormal columns."""
    return torch.linalg.qr(panels).Q


def _extension(basis: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning ``new`` outside span(basis), per region.

    Projected twice ("twice is enough"), so the columns stay orthogonal to the basis even when
    ``new`` lies almost inside it.
    """
    for _ in range(2):
        new = _orthonormal(project_out(new, basis))
    return new


def noise_prediction_gain(model: DiffusionModel, state: HState) -> float:
    """The scalar turning the model's output into its noise prediction at the state's timestep: the method is
    stated for the noise prediction, and the other parameterisations differ from it by this factor."""
    alpha_bar = model.scheduler.alphas_cumprod[int(state.timesteps.reshape(-1)[0])]
    return float(noise_gain(prediction_type(model), alpha_bar))


class _AdjointConv2d(torch.autograd.Function):
    """conv2d (stride 1, no dilation, one group, constant weights) whose backward is ``conv_transpose2d``, an ordinary
    differentiable op.

    Torch's own backward node is differentiated by ``_convolution_double_backward``, which runs two convolutions per
    layer (``torch.profiler``) where J v, the VJP of the VJP, needs one. Here the second-order product is
    conv_transpose2d's input gradient, one convolution: the same products up to float rounding (bundled model on
    this CPU: bitwise), J v in half the time (4 images: 68 -> 33 ms per tangent on one thread).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, padding):
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.padding = inputs[3]

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors  # under autocast the gradient is in the reduced precision, the weight not
        return F.conv_transpose2d(grad, weight.to(grad.dtype), padding=ctx.padding), None, None, None


class _AdjointConvolutions(TorchFunctionMode):
    """While active (in this thread only: torch function modes are per thread), eligible ``conv2d`` calls record
    ``_AdjointConv2d``; any other call, strided or with weights that need gradients, runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            call = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args), **kwargs)
            bias, padding = call.get("bias"), call.get("padding", 0)
            if (_all_ones(call.get("stride", 1)) and _all_ones(call.get("dilation", 1)) and call.get("groups", 1) == 1
                    and not isinstance(padding, str) and not call["weight"].requires_grad
                    and (bias is None or not bias.requires_grad)):
                return _AdjointConv2d.apply(call["input"], call["weight"], bias, padding)
        return func(*args, **kwargs)


def _all_ones(value) -> bool:
    return all(v == 1 for v in (value if isinstance(value, (tuple, list)) else (value,)))


# The autocast dtype of each precision name; fp32: none, the model's own.
AUTOCAST_DTYPES = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16), strict=True))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``localedit.core.settings.PRECISIONS``); ValueError for another."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return AUTOCAST_DTYPES[precision]


class MaskedJacobian:
    """Products with J_a = d(mask_a * eps)/dh at (x_t, t) for several masks at once.

    ``state`` may hold a batch of n images (``localedit.core.hspace.encode`` of n x_t): J then stacks
    the images' Jacobians J_i, a tangent v is the same h-direction for every image (J v = (J_i v)_i,
    one product for all images) and a VJP sums over them (J^T u = sum_i J_i^T u_i), so J^T J =
    sum_i J_i^T J_i. ``push`` and ``pull`` are the unmasked products; ``jvp`` and ``vjp`` mask them.

    ``precision`` (torch.float16 or torch.bfloat16; None: the model's own, fp32) runs the linearisation
    and the products under ``torch.autocast`` (for GPU workers: tensor cores); products come back in
    h's dtype. What it costs in angle, measured on CPU (``benchmarks/precision.py``, bundled model,
    k = 8): fp16, a bound for TF32, <= 0.4 degrees to the fp32 subspace; bf16 <= 0.9 degrees and 1-2
    more iterations (benchmarks/RESULTS.md, issue 14 seventh round).
    """

    def __init__(self, model: DiffusionModel, state: HState, masks: torch.Tensor, precision: torch.dtype | None = None):
        self.unet = model.unet
        self.state = state
        self._precision = precision
        self.gain = noise_prediction_gain(model, state)
        self.masks = masks.to(state.h).reshape(masks.shape[0], 1, 1, *masks.shape[-2:])
        self.h = state.h
        with self._autocast(), _AdjointConvolutions():  # convolutions whose J v costs one convolution
            noise_prediction, self._vjp = vjp(self._f, self.h)
        # J v as the VJP of the (linear) map u -> J^T u: reverse mode twice, no forward-mode AD. Forward
        # levels are process-global (``localedit.core.forward_ad``), so JVPs let one thread of a process in at a
        # time; this way Jacobians of several images run in threads of one process at once, as fast as a
        # JVP (bundled model, 40 tangents: 0.55-0.8 s against 0.6-0.9 s on one thread; same to 4e-8).
        with self._autocast():
            _, self._jvp = vjp(lambda u: self._vjp(u)[0], torch.zeros_like(noise_prediction))
        self.out_shape = noise_prediction.shape  # (n, C, H, W)
        self.dim = self.h[0].numel()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.h.device.type, dtype=self._precision, enabled=self._precision is not None)

    def _f(self, h: torch.Tensor) -> torch.Tensor:
        """h -> the noise prediction eps (n, C, H, W): the U-Net's model_output times the parameterisation's gain."""
        return self.gain * decode(self.unet, h, self.state)

    def _jvp_one(self, v: torch.Tensor) -> torch.Tensor:
        return self._jvp(v.view(1, *self.h.shape[1:]).expand_as(self.h))[0]

    def _vjp_one(self, u: torch.Tensor) -> torch.Tensor:
        return self._vjp(u)[0].sum(0).reshape(-1)

    def _masks(self, regions: torch.Tensor | None) -> torch.Tensor:
        """(R', 1, 1, 1, H, W): the masks of ``regions`` (indices; None: all), broadcast over tangents."""
        return (self.masks if regions is None else self.masks[regions]).unsqueeze(1)

    def push(self, V: torch.Tensor) -> torch.Tensor:
        """(R', d, k) -> unmasked J V as (R', k, *out): every column through every image, one batched product."""
        R, d, k = V.shape
        with self._autocast():
            out = vmap(self._jvp_one)(V.transpose(1, 2).reshape(R * k, d))
        return out.view(R, k, *self.out_shape).to(self.h.dtype)

    def pull(self, U: torch.Tensor) -> torch.Tensor:
        """(R', k, *out) -> unmasked J^T U as (R', d, k), summed over the images."""
        R, k = U.shape[:2]
        with self._autocast():
            out = vmap(self._vjp_one)(U.reshape(R * k, *self.out_shape))
        return out.view(R, k, -1).transpose(1, 2).to(self.h.dtype)

    def jvp(self, V: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """(R', d, k) -> masked outputs (R', k, *out): slice a sees the mask of region ``regions[a]``."""
        return self.push(V) * self._masks(regions)

    def vjp(self, U: torch.Tensor, regions: torch.Tensor | None = None) -> torch.Tensor:
        """(R', k, *out) -> J_a^T U_a as (R', d, k); the mask is applied here too (soft masks square)."""
        return self.pull(U * self._masks(regions))


@dataclass
class Eigenpairs:
    """Top-k Ritz pairs of R symmetric operators: ``vectors`` (R, d, k) orthonormal, ``values`` (R, k) descending.

    Per operator: ``iterations`` run, ``residuals`` ||A x_j - lambda_j x_j|| of each pair relative to
    the largest |Ritz value| (an estimate of ||A||), and whether the top-k span had stopped moving.
    """

    vectors: torch.Tensor
    values: torch.Tensor
    iterations: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor


def top_eigenpairs(
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    operators: int,
    dim: int,
    k: int,
    like: torch.Tensor,
    max_iter: int = 30,
    tol: float = 1e-3,
    oversample: int = 2,
    seed: int = 0,
    psd: bool = False,
    basis_panels: int = BASIS_PANELS,
    progress: bool = False,
    desc: str = "eigenpairs",
) -> Eigenpairs:
    """Algebraically largest k eigenpairs of ``operators`` symmetric (d x d) operators given by their products.

    ``apply(V, active)`` maps panels V (R', d, p) of the operators numbered ``active`` (R',) to A_a V_a;
    one call serves every operator still iterating. Block Krylov with Rayleigh-Ritz over the whole
    (capped) basis, see the module docstring; each iteration costs p = k + ``oversample`` products
    per operator still iterating. An operator stops when its top-k Ritz subspace moves less than
    ``tol`` (sine of the largest principal angle between successive iterates) or after ``max_iter``
    iterations. ``psd``: the operators are positive semidefinite (J^T J); Ritz values are clamped at 0.
    The basis holds at most ``basis_panels`` panels (then the least useful Ritz vectors make room).
    Every operator starts from the same random panel (from ``seed``), so each result is the same
    whichever others share the call. ``like`` gives the dtype and device of the vectors.
    """
    d, p = dim, min(k + oversample, dim)
    if k > d:
        raise ValueError(f"k={k} exceeds the h-space dimension {d}")
    R = operators
    cap = min(d, basis_panels * p)
    g = torch.Generator().manual_seed(seed)
    panel = _orthonormal(torch.randn(1, d, p, generator=g).to(like)).expand(R, d, p)
    basis = images = panel[:, :, :0]  # orthonormal columns and their images under A, per active operator
    active = torch.arange(R)  # the operators still iterating, in the order of basis' first axis
    top = torch.zeros(R, d, k).to(panel)
    values = torch.zeros(R, k).to(panel)
    done = torch.zeros(R, dtype=torch.bool)
    iters = torch.zeros(R, dtype=torch.long)
    residuals = torch.full((R, k), float("nan"))
    bar = tqdm(range(max_iter), desc=desc, disable=not progress, leave=False)
    for it in bar:
        basis = torch.cat([basis, panel], 2)
        images = torch.cat([images, apply(panel, active)], 2)
        # Rayleigh-Ritz: eigenpairs of basis^T A basis, largest first, rotate the basis onto them.
        gram = basis.transpose(1, 2).double() @ images.double()
        lam, W = torch.linalg.eigh((gram + gram.transpose(1, 2)) / 2)
        lam, W = lam.flip(-1), W.flip(-1).to(basis)
        if psd:
            lam = lam.clamp_min(0)
        basis, images = basis @ W, images @ W
        lam_p = lam[:, :p].to(basis)
        resid = images[:, :, :p] - basis[:, :, :p] * lam_p.unsqueeze(1)  # A x - lambda x
        scale = lam.abs().amax(-1).to(basis).clamp_min(1e-30)
        residuals[active] = (torch.linalg.vector_norm(resid[:, :, :k], dim=1) / scale.unsqueeze(1)).cpu()
        new_top = basis[:, :, :k]
        change = largest_angle_sine(top[active], new_top).cpu() if it else torch.ones(len(active))
        # ``top`` and ``values`` come from the same Rayleigh-Ritz step, so values match vectors.
        top[active], values[active] = new_top, lam_p[:, :k]
        iters[active] = it + 1
        converged = change < tol
        done[active] = converged
        bar.set_postfix(change=f"{change.max():.1e}")
        keep = min(basis.shape[2], max(k, cap - p))
        width = min(p, cap - keep)
        if width == 0:  # the basis spans all of h: the Ritz pairs are exact
            done[:] = True
        if bool(done.all()):
            break
        going = ~converged
        active, basis, images, resid = active[going], basis[going, :, :keep], images[going, :, :keep], resid[going]
        # Grow by the leading Ritz vectors' residuals: the next Krylov directions. Residuals, not
        # images: they are orthogonal to the basis already, so no cancellation spoils the projection.
        panel = _extension(basis, resid[:, :, :width])
    return Eigenpairs(top, values, iters, residuals, done)


def subspaces(
    model: DiffusionModel,
    state: HState,
    masks: torch.Tensor,
    k: int = MiningSettings.k,
    max_iter: int = 30,
    tol: float = 1e-3,
    oversample: int = 2,
    seed: int = 0,
    progress: bool = False,
    precision: torch.dtype | None = None,
) -> list[Subspace]:
    """Top-k subspace of each masked Jacobian (masks: (R, H, W) in {0, 1}), sharing one linearisation.

    Each iteration costs k + ``oversample`` JVPs and VJPs per region still iterating (the extra
    vectors speed convergence when s_k ~ s_{k+1}). A region stops when its top-k Ritz subspace
    moves less than ``tol`` (sine of the largest principal angle between successive iterates)
    or after ``max_iter`` iterations, and leaves the batch: the others' products get cheaper.
    Every region starts from the same random panel, so a region's result does not depend on
    which other regions share the call: a pipeline that computes an image's regions together,
    or only the ones a resumed run still lacks, gets each region's subspace as if alone.
    ``precision``: the products' autocast dtype (``MaskedJacobian``; None: fp32).
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (regions, H, W), got {tuple(masks.shape)}")
    if state.h.shape[0] != 1:
        raise ValueError("subspaces are computed one image at a time (state batch must be 1)")
    start = time.perf_counter()
    op = MaskedJacobian(model, state, masks, precision)  # Rayleigh-Ritz stays in h's dtype
    found = top_eigenpairs(lambda V, active: op.vjp(op.jvp(V, active), active), masks.shape[0], op.dim, k,
                           like=state.h, max_iter=max_iter, tol=tol, oversample=oversample, seed=seed, psd=True,
                           progress=progress, desc="subspace")
    seconds = time.perf_counter() - start
    singular_values = found.values.sqrt()
    residual = found.residuals.max(1).values
    # Each vector's sign fixed (``fix_signs``): Rayleigh-Ritz returns it either way, and which one followed the
    # rounding, so a block computed alone (a resumed run) came out flipped against the same block computed beside
    # others.
    return [
        Subspace(fix_signs(found.vectors[a]), singular_values[a], int(found.iterations[a]), float(residual[a]),
                 bool(found.converged[a]), seconds)
        for a in range(masks.shape[0])
    ]


def exact_jacobian(model: DiffusionModel, state: HState, mask: torch.Tensor) -> torch.Tensor:
    """The full masked Jacobian (out x d). Tests and small-model references only."""
    op = MaskedJacobian(model, state, mask[None])
    eye = torch.eye(op.dim).to(state.h)
    return op.jvp(eye[None]).reshape(op.dim, -1).T
