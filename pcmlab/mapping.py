"""Weights to conductances and back: crossbar matrices, layer-serial placement, tiles.

A Linear layer's weight (out, in) and a convolution's (out, in / groups, *kernel) become
``groups`` crossbar matrices of ``in_dim x out_dim`` (conv through im2col: in_dim =
in / groups * prod(kernel), out_dim = out / groups); the groups of a grouped or depthwise
convolution see different inputs, so each is a block of its own on the array. Inputs
drive rows; each weight is a differential pair on two adjacent columns, G+ at
``col0 + 2j`` and G- at ``col0 + 2j + 1``. Per layer, G_T = |W| G_max / W_max on the device
carrying the sign, 0 on its partner; back: W = (G+ - G-) W_max / G_max.
Layers are placed one after another, in layer order, each block at the lowest free spot
(skyline packing); a layer larger than the array is split into tiles whose partial sums
are added digitally. A network larger than one array goes on several (``arrays``): a block
that finds no room in one array goes to the next, and cell indices run on across arrays
(array k's cell ``r * cols + c`` is ``k * rows * cols + r * cols + c``, the arrays stacked
as one tall array: what ``drivers.ChipGroup`` addresses).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt

from pcmlab.errors import ConfigError

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Tile:
    """A block of a layer's matrix on the array: matrix rows [in_start, in_stop) on array
    rows from ``row0``, outputs [out_start, out_stop) as pairs on columns from ``col0``."""

    row0: int
    col0: int
    in_start: int
    in_stop: int
    out_start: int
    out_stop: int
    group: int = 0  # which matrix of a grouped convolution
    array: int = 0  # which array (chip) holds the block

    @property
    def n_in(self) -> int:
        return self.in_stop - self.in_start

    @property
    def n_out(self) -> int:
        return self.out_stop - self.out_start


@dataclass(frozen=True)
class LayerMap:
    index: int  # ordinal of the weight matrix in the network
    name: str  # the module's path in the model, e.g. "layer1.0.conv1" or "lstm.ih_l0"
    kind: str  # "Linear", "Conv1d", "Conv2d"
    weight_shape: tuple[int, ...]
    in_dim: int  # rows of one group's matrix
    out_dim: int  # outputs of one group
    w_max: float  # the weight mapped to G_max
    tiles: tuple[Tile, ...] = field(default_factory=tuple)
    groups: int = 1

    @property
    def n_weights(self) -> int:
        return self.groups * self.in_dim * self.out_dim

    @property
    def n_cells(self) -> int:
        return 2 * self.n_weights


def weight_matrix(weight: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The crossbar matrix (in_dim x out_dim) of a Linear (out, in) or convolution
    (out, in, *kernel) weight: im2col ordering, the same as ``weight.reshape(out, -1)``."""
    w = np.asarray(weight, dtype=np.float64)
    return w.reshape(w.shape[0], -1).T


def group_matrices(weight: npt.ArrayLike, groups: int = 1) -> npt.NDArray[np.float64]:
    """The ``groups`` crossbar matrices (groups, in_dim, out_dim) of a weight whose outputs
    come in ``groups`` equal blocks (a grouped convolution's)."""
    w = np.asarray(weight, dtype=np.float64)
    out = w.shape[0]
    if groups < 1 or out % groups:
        raise ConfigError(f"{out} outputs do not split into {groups} groups")
    return w.reshape(groups, out // groups, -1).transpose(0, 2, 1)


def devices_needed(specs) -> int:
    """Devices a network's weight matrices take: two per weight (a differential pair).
    ``specs``: (index, name, kind, weight shape, W_max[, groups]) as ``layer_specs``."""
    return sum(2 * math.prod(spec[3]) for spec in specs)


@dataclass(frozen=True)
class NetworkMapping:
    """Where every weight of a network lives on the array, and at what scale."""

    rows: int
    cols: int
    g_max_us: float
    layers: tuple[LayerMap, ...]
    fingerprint: str = ""  # of the deployed network (architecture and weights)
    arrays: int = 1  # rows x cols arrays, stacked: cell indices run on across them

    # -- building --------------------------------------------------------------------------
    @classmethod
    def place(
        cls,
        layers: list[tuple],
        rows: int,
        cols: int,
        g_max_us: float = 25.0,
        *,
        tiling: bool = True,
        fingerprint: str = "",
        arrays: int = 1,
    ) -> NetworkMapping:
        """Place layers (index, name, kind, weight shape, W_max[, groups]) layer-serially
        on up to ``arrays`` arrays of rows x cols.

        Raises ConfigError when a layer needs tiles and ``tiling`` is off, or when the
        network does not fit the arrays.
        """
        if cols < 2:
            raise ConfigError(f"an array of {cols} column(s) cannot hold a differential pair")
        if arrays < 1:
            raise ConfigError(f"arrays = {arrays}: need at least one array")
        max_out = cols // 2
        placed: list[LayerMap] = []
        skylines = np.zeros((arrays, cols), dtype=np.int64)  # first free row of each column
        specs = [(*spec, 1) if len(spec) == 5 else tuple(spec) for spec in layers]
        total = devices_needed(specs)
        where = f"{arrays} arrays of {rows} x {cols}" if arrays > 1 else f"{rows} x {cols} array"
        if total > arrays * rows * cols:
            need = math.ceil(total / (rows * cols))
            raise ConfigError(f"the network needs {total} cells (two per weight) but the "
                              f"{where} has {arrays * rows * cols}; use a larger array, "
                              f"at least {need} arrays (a group of chips: --chips N, or "
                              "--resource RES1,RES2,...), or a smaller network")
        for index, name, kind, shape, w_max, groups in specs:
            if groups < 1 or shape[0] % groups:
                raise ConfigError(f"layer {index} ({name}): {shape[0]} outputs do not split "
                                  f"into {groups} groups")
            in_dim, out_dim = math.prod(shape[1:]), shape[0] // groups
            needs_tiles = in_dim > rows or out_dim > max_out
            if needs_tiles and not tiling:
                raise ConfigError(
                    f"layer {index} ({name}, {kind}) is a {in_dim} x {out_dim} matrix, "
                    f"{in_dim} x {2 * out_dim} devices, larger than the {rows} x {cols} "
                    "array; allow tiling or use a larger array")
            tiles = []
            blocks = [(g, i0, o0) for g in range(groups) for i0 in range(0, in_dim, rows)
                      for o0 in range(0, out_dim, max_out)]
            for g, i0, o0 in blocks:
                i1, o1 = min(i0 + rows, in_dim), min(o0 + max_out, out_dim)
                h, w = i1 - i0, 2 * (o1 - o0)
                # skyline packing: the lowest spot, leftmost among equals, in the first
                # array that has room
                for a in range(arrays):
                    skyline = skylines[a]
                    base = np.lib.stride_tricks.sliding_window_view(skyline, w).max(axis=1)
                    c = int(np.argmin(base))
                    r = int(base[c])
                    if r + h <= rows:
                        break
                else:
                    raise ConfigError(
                        f"the network does not fit the {where}: layer {index} ({name}) "
                        f"finds no room for a {h} x {w} block (placement leaves gaps); use "
                        "a larger array or more arrays")
                tiles.append(Tile(r, c, i0, i1, o0, o1, g, a))
                skyline[c:c + w] = r + h
            placed.append(LayerMap(index, name, kind, tuple(shape), in_dim, out_dim,
                                   float(w_max), tuple(tiles), groups))
        used = max((t.array for lm in placed for t in lm.tiles), default=0) + 1
        return cls(rows, cols, float(g_max_us), tuple(placed), fingerprint, used)

    # -- cells -----------------------------------------------------------------------------
    def pair_cells(self, layer: LayerMap) -> tuple[npt.NDArray[np.uint32],
                                                    npt.NDArray[np.uint32]]:
        """Flat indices of G+ and G- for every weight, each of shape
        (groups, in_dim, out_dim)."""
        plus = np.empty((layer.groups, layer.in_dim, layer.out_dim), dtype=np.int64)
        for t in layer.tiles:
            rr = t.array * self.rows + np.arange(t.row0, t.row0 + t.n_in)[:, None]
            cc = t.col0 + 2 * np.arange(t.n_out)[None, :]
            plus[t.group, t.in_start:t.in_stop, t.out_start:t.out_stop] = rr * self.cols + cc
        return plus.astype(np.uint32), (plus + 1).astype(np.uint32)

    def targets(self, weights: list[npt.ArrayLike]
                ) -> tuple[npt.NDArray[np.uint32], F32, npt.NDArray[np.int16]]:
        """(cells, target conductances µS, layer index) for every device of the network,
        layer after layer, G+ devices then G- devices, matrices row-major."""
        if len(weights) != len(self.layers):
            raise ConfigError(f"{len(weights)} weight tensors for {len(self.layers)} "
                              "mapped layers")
        cells, g, lay = [], [], []
        for layer, w in zip(self.layers, weights, strict=True):
            m = group_matrices(w, layer.groups)
            if m.shape != (layer.groups, layer.in_dim, layer.out_dim):
                raise ConfigError(f"layer {layer.index} ({layer.name}): weight matrix "
                                  f"{m.shape} does not match the mapping "
                                  f"{(layer.groups, layer.in_dim, layer.out_dim)}")
            g_t = np.abs(m) * (self.g_max_us / layer.w_max) if layer.w_max > 0 else 0 * m
            plus, minus = self.pair_cells(layer)
            cells += [plus.ravel(), minus.ravel()]
            g += [np.where(m > 0, g_t, 0).ravel(), np.where(m < 0, g_t, 0).ravel()]
            lay.append(np.full(2 * m.size, layer.index, dtype=np.int16))
        return (np.concatenate(cells), np.concatenate(g).astype(np.float32),
                np.concatenate(lay))

    def pair_positions(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Positions of each pair's G+ and G- in the ``targets`` order."""
        plus, minus, off = [], [], 0
        for layer in self.layers:
            m = layer.n_weights
            plus.append(np.arange(off, off + m))
            minus.append(np.arange(off + m, off + 2 * m))
            off += 2 * m
        return np.concatenate(plus), np.concatenate(minus)

    def matrices(self, g_of_cell: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float64]]:
        """Weight matrices from conductances: ``g_of_cell`` is indexed by flat cell index
        (length arrays * rows * cols). W = (G+ - G-) W_max / G_max. One (in_dim, out_dim) matrix per
        layer, (groups, in_dim, out_dim) for a grouped convolution."""
        out = []
        for layer in self.layers:
            plus, minus = self.pair_cells(layer)
            diff = g_of_cell[plus].astype(np.float64) - g_of_cell[minus]
            diff *= layer.w_max / self.g_max_us
            out.append(diff[0] if layer.groups == 1 else diff)
        return out

    # -- reporting and files ---------------------------------------------------------------
    def utilization(self) -> list[tuple[str, int, float]]:
        """(layer name, devices, share of the array) per layer."""
        n = self.rows * self.cols
        return [(f"{layer.index}:{layer.name}", layer.n_cells, layer.n_cells / n)
                for layer in self.layers]

    def array_utilization(self) -> float:
        """Share of the arrays' devices that hold a weight."""
        return sum(lm.n_cells for lm in self.layers) / (self.arrays * self.rows * self.cols)

    def utilization_per_array(self) -> list[float]:
        """Share of each array's devices that hold a weight."""
        used = np.zeros(self.arrays)
        for lm in self.layers:
            for t in lm.tiles:
                used[t.array] += 2 * t.n_in * t.n_out
        return list(used / (self.rows * self.cols))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NetworkMapping:
        try:
            d = json.loads(text)
            layers = tuple(
                LayerMap(index=lm["index"], name=lm["name"], kind=lm["kind"],
                         weight_shape=tuple(lm["weight_shape"]), in_dim=lm["in_dim"],
                         out_dim=lm["out_dim"], w_max=lm["w_max"],
                         tiles=tuple(Tile(**t) for t in lm["tiles"]),
                         groups=int(lm.get("groups", 1)))
                for lm in d["layers"])
            return cls(int(d["rows"]), int(d["cols"]), float(d["g_max_us"]), layers,
                       str(d.get("fingerprint", "")), int(d.get("arrays", 1)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a network mapping ({exc})") from None
