"""Weights -> conductances -> weights, placement, tiles."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcmlab.errors import ConfigError
from pcmlab.mapping import NetworkMapping, weight_matrix


def roundtrip(shapes, rows, cols, tiling=True, seed=0):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s) for s in shapes]
    specs = [(i, f"l{i}", "Conv2d" if len(s) == 4 else "Linear", s, float(np.abs(w).max()))
             for i, (s, w) in enumerate(zip(shapes, weights, strict=True))]
    mapping = NetworkMapping.place(specs, rows, cols, 25.0, tiling=tiling)
    cells, g, layer = mapping.targets(weights)
    g_of_cell = np.zeros(rows * cols, dtype=np.float32)
    g_of_cell[cells] = g
    back = mapping.matrices(g_of_cell)
    return mapping, weights, back, cells, g, layer


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.one_of(
        st.tuples(st.integers(1, 40), st.integers(1, 70)),
        st.tuples(st.integers(1, 12), st.integers(1, 4), st.integers(1, 3),
                  st.integers(1, 3))), min_size=1, max_size=4),
    rows=st.integers(8, 64), cols=st.integers(8, 64),
)
def test_round_trip_is_exact_without_noise(shapes, rows, cols) -> None:
    need = sum(2 * int(np.prod(s)) for s in shapes)
    try:
        mapping, weights, back, cells, g, layer = roundtrip(shapes, rows, cols)
    except ConfigError as exc:  # honest refusals only
        assert need > rows * cols or "does not fit" in str(exc)
        return
    for w, m, lm in zip(weights, back, mapping.layers, strict=True):
        # exact up to float32 conductance storage
        np.testing.assert_allclose(m, weight_matrix(w), rtol=1e-6, atol=1e-6 * lm.w_max)
    assert np.unique(cells).size == cells.size  # no device shared
    assert cells.max() < rows * cols and g.min() >= 0 and g.max() <= 25.0 + 1e-5
    # one device of each pair is zero
    plus, minus = mapping.pair_positions()
    assert (np.minimum(g[plus], g[minus]) == 0).all()
    assert layer.size == cells.size


def test_layers_split_into_tiles_when_larger_than_the_array() -> None:
    mapping, weights, back, *_ = roundtrip([(30, 100), (6, 3, 3, 3)], rows=64, cols=128)
    big = mapping.layers[0]
    assert len(big.tiles) > 1
    assert sum(t.n_in * t.n_out for t in big.tiles) == 100 * 30
    np.testing.assert_allclose(back[0], weight_matrix(weights[0]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back[1], weight_matrix(weights[1]), rtol=1e-6, atol=1e-6)


def test_tiling_off_refuses_a_large_layer_and_too_big_networks() -> None:
    with pytest.raises(ConfigError, match="larger than the 64 x 128 array; allow tiling"):
        roundtrip([(30, 100)], rows=64, cols=128, tiling=False)
    with pytest.raises(ConfigError, match="needs 6000 cells"):
        roundtrip([(30, 100)], rows=32, cols=16)


def test_conv_matrix_is_im2col() -> None:
    w = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    m = weight_matrix(w)
    assert m.shape == (12, 2)
    np.testing.assert_array_equal(m[:, 1], w[1].ravel())


def test_scale_and_json_round_trip() -> None:
    mapping, weights, *_ = roundtrip([(4, 5)], rows=8, cols=16)
    _, g, _ = mapping.targets(weights)
    w_max = np.abs(weights[0]).max()
    assert g.max() == pytest.approx(25.0)
    i = np.unravel_index(np.argmax(np.abs(weights[0])), weights[0].shape)
    assert abs(weights[0][i]) == pytest.approx(w_max)
    again = NetworkMapping.from_json(mapping.to_json())
    assert again == mapping
    _, devices, share = mapping.utilization()[0]
    assert devices == 40 and share == pytest.approx(40 / 128)
