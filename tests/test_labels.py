import torch

from localedit.core.ddim import denoise
from localedit.core.editing import edit
from localedit.core.hspace import h_shape
from localedit.evaluation.labels import PROBE_ALPHA, read_edits
from localedit.evaluation.metrics import total_change
from localedit.utils.pixels import to_unit


def test_edits_are_read_at_matched_strength(tiny_model):
    """Each direction is read at the alpha whose RMS change is near the target, however strong it is per unit alpha."""
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 3, 16, 16, generator=g)
    d = torch.Size(h_shape(tiny_model.unet)).numel()
    V = torch.randn(3, d, generator=g)
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1
    readings = read_edits(tiny_model, x_T, V, ["eyes"] * 3, mask.expand(3, 16, 16), target=0.01, num_steps=6)
    reference = to_unit(denoise(tiny_model, x_T, 6))
    alphas = [r.alpha for r in readings]
    assert len(set(alphas)) == 3 and PROBE_ALPHA not in alphas
    for v, r in zip(V, readings):
        edited = edit(tiny_model, None, v, [r.alpha, -r.alpha], num_steps=6, x_T=x_T)
        change = total_change(reference.repeat_interleave(2, 0), edited.flatten(0, 1)).mean()
        assert 0.5 < change / 0.01 < 2.0
        assert 0 <= r.locality <= 1 and r.label == "" and r.purity != r.purity  # no probe: no label, purity NaN



def test_the_sign_says_which_way_the_label_grows(tiny_model):
    """Found by a second new user: eyes/individual/0, labelled eye_openness, opened the eyes at negative alpha.
    A reading's sign is +1 when +alpha raises its label's factor; the opposite vector reads the opposite sign."""
    from localedit.bundled.probe import FactorProbe, factor_change
    from localedit.bundled.synthetic import FACTOR_SCOPE

    torch.manual_seed(0)
    factors = list(FACTOR_SCOPE)
    probe = FactorProbe(factors, [0.0] * len(factors), [1.0] * len(factors), channels=(8,), size=16).eval()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(3, 3, 16, 16, generator=g)
    V = torch.randn(2, torch.Size(h_shape(tiny_model.unet)).numel(), generator=g)
    V = torch.cat([V, -V])
    mask = torch.ones(4, 16, 16)
    readings = read_edits(tiny_model, x_T, V, ["eyes"] * 4, mask, probe, target=0.01, num_steps=6)
    assert [r.label for r in readings[:2]] == [r.label for r in readings[2:]]
    assert [r.sign for r in readings[:2]] == [-r.sign for r in readings[2:]]
    reference = to_unit(denoise(tiny_model, x_T, 6))
    for v, r in zip(V, readings):
        raised = factor_change(probe, reference, edit(tiny_model, None, v, [r.alpha], num_steps=6, x_T=x_T)[:, 0])
        assert r.sign * float(raised[r.label].median()) > 0
