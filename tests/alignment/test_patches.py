"""The masked normalized cross-correlation of `alignment.patches` against its definition, offset by offset."""

import numpy as np

from connectome.alignment.patches import MIN_OVERLAP, _masked_ncc


def _pearson_over_valid(search, valid, template, y, x):
    """NCC of the template at offset (y, x), over the template pixels that land on valid search pixels."""
    h, w = template.shape
    keep = valid[y:y + h, x:x + w]
    if keep.sum() < MIN_OVERLAP * template.size:
        return -1.0
    s = np.where(valid, search - search[valid].mean(), 0.0)[y:y + h, x:x + w][keep]
    t = (template - template.mean())[keep]
    s, t = s - s.mean(), t - t.mean()
    return float((s * t).sum() / np.sqrt((s * s).sum() * (t * t).sum()))


def test_masked_ncc_is_the_correlation_over_the_overlap_at_every_offset():
    rng = np.random.default_rng(5)
    search = rng.normal(100, 20, (41, 37))
    valid = np.ones(search.shape, bool)
    valid[:, 30:] = False  # the window reaches past the section on the right and at the top
    valid[:6] = False
    template = search[12:28, 9:24] + rng.normal(0, 5, (16, 15))
    ncc = _masked_ncc(search, valid, template)
    assert ncc.shape == (41 - 16 + 1, 37 - 15 + 1)
    expected = np.array([[_pearson_over_valid(search, valid, template, y, x) for x in range(ncc.shape[1])]
                         for y in range(ncc.shape[0])])
    np.testing.assert_allclose(ncc, expected, atol=1e-9)
    assert (expected == -1).any() and (expected > -1).sum() > 100  # both kinds of offset were compared
    assert np.unravel_index(np.argmax(ncc), ncc.shape) == (12, 9)  # where the template was cut
