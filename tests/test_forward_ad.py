"""Forward-mode AD from several threads of one process (issue 15, kind 4): one guard for every use."""

import ast
import copy
import threading
from pathlib import Path

import torch

from localedit.core import forward_ad
from localedit.core.hspace import encode
from localedit.core.jacobian import MaskedJacobian
from localedit.evaluation.baselines import x_space_subspaces

REPO = Path(__file__).resolve().parent.parent
GUARD = REPO / "localedit" / "core" / "forward_ad.py"
FORWARD_NAMES = {"jvp", "jacfwd", "linearize", "forward_ad", "hessian"}  # what enters forward-AD levels


def _forward_mode_uses(tree: ast.AST) -> list[int]:
    """Lines that reach torch's forward mode directly: imports from torch.func/functorch/torch.autograd, or
    attribute chains such as torch.func.jvp and torch.autograd.forward_ad."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("torch", "functorch"):
            if node.module.startswith("functorch") or any(a.name in FORWARD_NAMES for a in node.names) \
                    or node.module.endswith("forward_ad"):
                lines.append(node.lineno)
        elif isinstance(node, ast.Import) and any(a.name.startswith(("functorch", "torch.autograd.forward_ad"))
                                                  for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr in FORWARD_NAMES and ast.unparse(node.value) in (
                "torch.func", "func", "torch.autograd", "autograd", "functorch"):
            lines.append(node.lineno)
    return lines


def test_every_forward_mode_call_goes_through_the_guard():
    offenders = []
    for folder in ("localedit", "tasks", "flows", "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path != GUARD:
                offenders += [f"{path.relative_to(REPO)}:{line}" for line in _forward_mode_uses(ast.parse(path.read_text()))]
    assert not offenders, f"use localedit.core.forward_ad instead of torch's forward mode: {offenders}"


def test_the_scan_sees_direct_uses():
    code = "from torch.func import jvp, vmap\nimport torch\ntorch.func.jacfwd(f)\nfrom torch.autograd import forward_ad\n"
    assert sorted(_forward_mode_uses(ast.parse(code))) == [1, 3, 4]


def test_two_threads_take_jacobians_at_once(tiny_model):
    """`localedit evaluate RUN --compare` ran two baseline tasks (x-space Jacobians) next to h-space ones, each on
    its own model copy; without the guard this fails within a few rounds with "Trying to access a forward AD
    level with an invalid index"."""
    masks = torch.zeros(2, 16, 16)
    masks[0, :8], masks[1, 8:] = 1, 1
    errors, results = [], {}

    def x_space(seed):
        model = copy.deepcopy(tiny_model)
        x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        for _ in range(6):
            results.setdefault(seed, []).append(x_space_subspaces(model, x_t, 500, masks, 2, iterations=1, seed=seed)[1])

    def h_space(seed):
        model = copy.deepcopy(tiny_model)
        x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        op = MaskedJacobian(model, encode(model.unet, x_t, 500), masks)
        V = torch.randn(2, op.dim, 2, generator=torch.Generator().manual_seed(seed))
        for _ in range(6):
            results.setdefault(seed, []).append(op.jvp(V).norm())

    def run(work, seed):
        try:
            work(seed)
        except Exception as err:  # noqa: BLE001 -- collected and asserted below
            errors.append(repr(err))

    threads = [threading.Thread(target=run, args=(work, seed))
               for seed, work in enumerate((x_space, x_space, h_space, h_space))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for values in results.values():  # and every round computed the same numbers
        assert len(values) == 6 and all(torch.equal(values[0], v) for v in values[1:])


def test_h_space_products_do_not_wait_for_the_forward_ad_guard(tiny_model):
    """The mining engine's JVP is reverse mode twice, so an image's Jacobian runs while another thread holds the
    forward-AD guard (before, a second subspace task waited for the first). Its JVP is the exact Jacobian's."""
    masks = torch.ones(1, 16, 16)
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    state = encode(tiny_model.unet, x_t, 500)
    V = torch.randn(1, state.h.numel(), 3, generator=torch.Generator().manual_seed(1))
    done, result = threading.Event(), {}

    def products():
        op = MaskedJacobian(tiny_model, state, masks)
        result["jv"] = op.jvp(V)
        done.set()

    with forward_ad.exclusive():  # held by this thread throughout
        worker = threading.Thread(target=products, daemon=True)
        worker.start()
        assert done.wait(timeout=60), "the products waited for the forward-AD guard"
    op = MaskedJacobian(tiny_model, state, masks)
    reverse = torch.autograd.functional.jacobian(op._f, state.h).reshape(-1, state.h.numel())  # rows by VJPs
    torch.testing.assert_close(result["jv"][0].reshape(3, -1), (reverse @ V[0]).T, atol=1e-5, rtol=1e-4)
