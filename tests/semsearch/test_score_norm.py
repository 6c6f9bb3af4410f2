"""Score normalisation (semsearch.score_norm): the one z-score and min-max both fusions use."""

from __future__ import annotations

import numpy as np
import pytest

from semsearch.score_norm import minmax, normalize, zscore


def test_zscore_on_hand_made_numbers() -> None:
    np.testing.assert_allclose(zscore([1.0, 2.0, 3.0]), [-1.224744871, 0.0, 1.224744871])
    np.testing.assert_array_equal(zscore([4.0, 4.0]), [0.0, 0.0])  # constant list: no information
    np.testing.assert_allclose(zscore([3.0], mean=1.0, std=2.0), [1.0])
    np.testing.assert_array_equal(zscore([3.0], mean=1.0, std=0.0), [0.0])  # a degenerate stored std
    assert zscore([]).shape == (0,)


def test_minmax_on_hand_made_numbers() -> None:
    np.testing.assert_allclose(minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(minmax([7.0, 7.0]), [0.0, 0.0])
    assert minmax(np.zeros(0)).shape == (0,)


def test_normalize_dispatches_and_refuses_unknown_methods() -> None:
    x = np.array([1.0, 5.0, 2.0])
    np.testing.assert_array_equal(normalize(x, "zscore"), zscore(x))
    np.testing.assert_array_equal(normalize(x, "minmax"), minmax(x))
    with pytest.raises(ValueError, match="minmax, zscore"):
        normalize(x, "rrf")
