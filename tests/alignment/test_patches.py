"""The normalized cross-correlations of `alignment.patches` (masked and whole) against their definition, offset by
offset, and its block means."""

import numpy as np

from connectome.alignment.patches import MIN_OVERLAP, _masked_ncc, _ncc


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
    whole = np.ones(search.shape, bool)  # a window that is all image: the unmasked NCC, and the masked one
    expected = np.array([[_pearson_over_valid(search, whole, template, y, x) for x in range(ncc.shape[1])]
                         for y in range(ncc.shape[0])])
    np.testing.assert_allclose(_ncc(search, template), expected, atol=1e-9)
    np.testing.assert_allclose(_masked_ncc(search, whole, template), expected, atol=1e-9)
    flat = search.copy()
    flat[20:40, 10:30] = 7.0  # a window of one grey level matches nothing
    assert _ncc(flat, template)[20, 10] == -1 and (_ncc(flat, template) > -1).sum() > 100


def test_downsample_is_the_mean_of_each_whole_box():
    from connectome.alignment.patches import downsample

    rng = np.random.default_rng(2)
    image = rng.integers(0, 65536, (23, 18)).astype(np.float32)  # neither side a multiple of 4
    for f in (1, 2, 4):
        for dtype in (np.float32, np.float64):
            got = downsample(image, f, dtype)
            h, w = 23 // f, 18 // f
            expected = np.array([[image[i * f:(i + 1) * f, j * f:(j + 1) * f].astype(np.float64).mean()
                                  for j in range(w)] for i in range(h)])
            assert got.dtype == dtype and got.shape == (h, w)
            np.testing.assert_array_equal(got, expected)  # exact: sums of up to 16 integers below 2**16
    mask = downsample(np.ones((9, 9), np.float32), 4)
    assert mask.shape == (2, 2) and (mask == 1).all()
