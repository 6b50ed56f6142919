"""split_subspaces: the paper's JIVE and our extension (each region's complement as one more block)."""

import pytest
import torch

from localedit.core.mining import split_subspaces


def planted(d: int = 24):
    """eyes = [shared with mouth, shared with not_eyes, own]; the strongest is the one shared with its complement."""
    e = torch.eye(d, dtype=torch.float64)
    eyes = (e[:, [0, 1, 2]], torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64))
    mouth = (e[:, [0, 3, 4]], torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64))
    not_eyes = (e[:, [1, 5, 6]], torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    not_mouth = (e[:, [7, 8, 9]], torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    return [eyes, mouth], [not_eyes, not_mouth], e


def test_paper_form_keeps_what_a_region_shares_with_its_complement():
    regions, _, e = planted()
    split = split_subspaces(regions)
    assert split.ranks["joint"] == 1 and abs(float(split.joint[:, 0] @ e[:, 0])) == pytest.approx(1, abs=1e-6)
    assert abs(float(split.individual[0][:, 0] @ e[:, 1])) == pytest.approx(1, abs=1e-6)  # the shared one leads


def test_complements_leave_out_what_a_region_shares_with_its_complement():
    regions, complements, e = planted()
    split = split_subspaces(regions, complements)
    eyes = split.individual[0]
    assert eyes.shape[1] == 1 and abs(float(eyes[:, 0] @ e[:, 2])) == pytest.approx(1, abs=1e-6)
    mouth = split.individual[1]  # mouth shares nothing with its complement: both own directions stay, strongest first
    assert mouth.shape[1] == 2 and abs(float(mouth[:, 0] @ e[:, 3])) == pytest.approx(1, abs=1e-6)
    assert split.individual_singular_values[1][0] > split.individual_singular_values[1][1]
    for basis in split.individual:
        assert (split.joint.T @ basis).abs().max() < 1e-8
    assert split.ranks == {"joint": 1, "individual": [1, 2]}


def test_complements_must_match_regions():
    regions, complements, _ = planted()
    with pytest.raises(ValueError, match="1 complement subspaces for 2 regions"):
        split_subspaces(regions, complements[:1])
