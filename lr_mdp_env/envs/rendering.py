"""``rgb_array`` frames of the environments, drawn with numpy (no display, no figure).

A frame shows one user's world at one step, placed by a layout (:mod:`lr_mdp_env.layouts`):

- grid: the cells coloured by the user's reward (a heat map), walls dark, the agent a black disk;
- graph: the nodes coloured by the reward, the edges (arrows when one-way), the agent ringed;
- table (random MDPs, the contextual bandit, the chain): one cell per state and action coloured by
  the reward ``r_i[h, s, a]``, the current state outlined, the cell just played dotted, and the
  chain's advancing actions outlined in green.

A strip at the bottom shows the step ``h`` out of ``H``. Colours are those of the figures of
:mod:`lr_mdp_env.plotting` (a diverging map symmetric about 0, scaled by the user's largest
absolute reward, so every frame of a user's video has the same scale). Frame sides are multiples
of 16 pixels, as video encoders want.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from ..layouts import REWARD_COLORMAP, GraphLayout, GridLayout, Layout, TableLayout

WHITE = np.array([255, 255, 255], dtype=np.uint8)
BLACK = np.array([0, 0, 0], dtype=np.uint8)
WALL = np.array([64, 64, 64], dtype=np.uint8)
EDGE = np.array([150, 150, 150], dtype=np.uint8)
KEY = np.array([0, 140, 0], dtype=np.uint8)
DONE = np.array([90, 90, 90], dtype=np.uint8)
TO_DO = np.array([215, 215, 215], dtype=np.uint8)
RULE = np.array([225, 225, 225], dtype=np.uint8)

GRID_CELL = 48
GRAPH_SIDE = 384
TABLE_SIDE = 480
STRIP = 12


@lru_cache(maxsize=1)
def _colormap() -> Callable[[np.ndarray], np.ndarray]:
    # Imported on first use: environments that never render do not load matplotlib.
    import matplotlib

    return matplotlib.colormaps[REWARD_COLORMAP]


def reward_colors(values: np.ndarray, scale: float) -> np.ndarray:
    """RGB ``uint8`` colours of rewards on the diverging map over ``[-scale, scale]``."""
    unit = 0.5 + 0.5 * np.clip(np.asarray(values, dtype=float) / max(scale, 1e-12), -1.0, 1.0)
    return (np.asarray(_colormap()(unit))[..., :3] * 255).round().astype(np.uint8)


# -- primitives: each paints the pixels of one shape, vectorised over its bounding box ----------


def _pixel_grid(image: np.ndarray, low: np.ndarray, high: np.ndarray):
    rows = slice(max(int(np.floor(low[0])), 0), min(int(np.ceil(high[0])) + 1, image.shape[0]))
    columns = slice(max(int(np.floor(low[1])), 0), min(int(np.ceil(high[1])) + 1, image.shape[1]))
    y, x = np.mgrid[rows, columns]
    return rows, columns, y + 0.5, x + 0.5


def fill_disk(image: np.ndarray, center: np.ndarray, radius: float, color: np.ndarray, inner: float = -1.0) -> None:
    """Paint the disk (or, with ``inner >= 0``, the ring ``inner < d <= radius``) around ``center`` (row, column)."""
    rows, columns, y, x = _pixel_grid(image, center - radius, center + radius)
    distance = np.hypot(y - center[0], x - center[1])
    image[rows, columns][(distance <= radius) & (distance > inner)] = color


def fill_segment(image: np.ndarray, start: np.ndarray, end: np.ndarray, width: float, color: np.ndarray) -> None:
    """Paint the segment from ``start`` to ``end`` (row, column), ``width`` pixels thick."""
    half = width / 2
    rows, columns, y, x = _pixel_grid(image, np.minimum(start, end) - half, np.maximum(start, end) + half)
    direction = end - start
    length2 = max(float(direction @ direction), 1e-12)
    t = np.clip(((y - start[0]) * direction[0] + (x - start[1]) * direction[1]) / length2, 0.0, 1.0)
    distance = np.hypot(y - start[0] - t * direction[0], x - start[1] - t * direction[1])
    image[rows, columns][distance <= half] = color


def fill_triangle(image: np.ndarray, corners: np.ndarray, color: np.ndarray) -> None:
    """Paint the triangle with ``corners`` ``(3, 2)`` (row, column)."""
    rows, columns, y, x = _pixel_grid(image, corners.min(axis=0), corners.max(axis=0))
    signs = []
    for k in range(3):
        a, b = corners[k], corners[(k + 1) % 3]
        signs.append((b[1] - a[1]) * (y - a[0]) - (b[0] - a[0]) * (x - a[1]))
    inside = ((signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)) | ((signs[0] <= 0) & (signs[1] <= 0) & (signs[2] <= 0))
    image[rows, columns][inside] = color


def outline_box(image: np.ndarray, top: int, left: int, bottom: int, right: int, width: int, color: np.ndarray) -> None:
    """Paint a frame ``width`` pixels thick inside the box ``[top, bottom) x [left, right)``."""
    image[top:top + width, left:right] = color
    image[bottom - width:bottom, left:right] = color
    image[top:bottom, left:left + width] = color
    image[top:bottom, right - width:right] = color


def _padded(image: np.ndarray, time: int, horizon: int) -> np.ndarray:
    """Add the step strip below ``image`` and pad both sides to multiples of 16 pixels."""
    height, width = image.shape[:2]
    full_height = -(-(height + STRIP) // 16) * 16
    full_width = -(-width // 16) * 16
    frame = np.empty((full_height, full_width, 3), dtype=np.uint8)
    frame[:] = WHITE
    frame[:height, :width] = image
    edges = np.linspace(0, full_width, horizon + 1).round().astype(int)
    strip = frame[full_height - STRIP + 2:full_height - 2]
    for step in range(horizon):
        strip[:, edges[step] + 1:edges[step + 1] - 1] = DONE if step < time else TO_DO
    return frame


# -- the three kinds of frame --------------------------------------------------------------------


def _grid_frame(layout: GridLayout, colors: np.ndarray, state: int) -> np.ndarray:
    cell = GRID_CELL
    tiles = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    tiles[:] = WALL
    # Row 0 of the image is the top of the grid: y = height - 1.
    tiles[layout.height - 1 - layout.cells[:, 1], layout.cells[:, 0]] = colors.mean(axis=1).round().astype(np.uint8)
    image = np.repeat(np.repeat(tiles, cell, axis=0), cell, axis=1)
    image[::cell] = RULE
    image[:, ::cell] = RULE
    x, y = layout.cells[state]
    center = np.array([(layout.height - 1 - y + 0.5) * cell, (x + 0.5) * cell])
    fill_disk(image, center, 0.3 * cell, WHITE)
    fill_disk(image, center, 0.3 * cell - 2, BLACK)
    return image


def node_pixels(layout: GraphLayout) -> tuple[np.ndarray, float]:
    """Pixel centres (row, column) of a graph frame's nodes, ``(S, 2)``, and their radius."""
    side = GRAPH_SIDE
    radius = float(np.clip(side / (4 * np.sqrt(layout.positions.shape[0])), 5, 22))
    margin = radius + 8
    # Node positions in [-1, 1]^2 to pixels (row, column), y upwards.
    span = np.abs(layout.positions).max() or 1.0
    scaled = layout.positions / span
    return np.stack([(1 - scaled[:, 1]) / 2, (1 + scaled[:, 0]) / 2], axis=1) * (side - 2 * margin) + margin, radius


def _graph_frame(layout: GraphLayout, colors: np.ndarray, state: int) -> np.ndarray:
    side = GRAPH_SIDE
    n_states = layout.positions.shape[0]
    centers, radius = node_pixels(layout)
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[:] = WHITE
    for source, target in layout.edges:
        start, end = centers[source], centers[target]
        fill_segment(image, start, end, 2.0, EDGE)
        if layout.directed:
            direction = (end - start) / max(np.linalg.norm(end - start), 1e-12)
            tip = end - direction * radius
            normal = np.array([-direction[1], direction[0]])
            base = tip - direction * 9
            fill_triangle(image, np.stack([tip, base + normal * 5, base - normal * 5]), EDGE)
    node_colors = colors.mean(axis=1).round().astype(np.uint8)
    for node in range(n_states):
        fill_disk(image, centers[node], radius, BLACK)
        fill_disk(image, centers[node], radius - 1.5, node_colors[node])
    fill_disk(image, centers[state], radius + 7, BLACK, inner=radius + 3)
    return image


def table_cell(layout: TableLayout) -> int:
    """Side in pixels of a table frame's cells."""
    return int(np.clip(TABLE_SIDE // max(layout.n_states, layout.n_actions), 8, 48))


def _table_frame(layout: TableLayout, colors: np.ndarray, state: int, played: tuple[int, int] | None) -> np.ndarray:
    if layout.states_across:
        colors = colors.transpose(1, 0, 2)
    cell = table_cell(layout)

    def box(s: int, a: int) -> tuple[int, int, int, int]:
        row, column = (a, s) if layout.states_across else (s, a)
        return row * cell, column * cell, (row + 1) * cell, (column + 1) * cell

    image = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)
    image[::cell] = RULE
    image[:, ::cell] = RULE
    border = max(cell // 16, 1)
    if layout.key_actions is not None:
        for s, a in enumerate(layout.key_actions):
            outline_box(image, *box(s, a), border, KEY)
    if played is not None:
        top, left, bottom, right = box(*played)
        fill_disk(image, np.array([(top + bottom) / 2, (left + right) / 2]), cell / 6, BLACK)
    top, left, _, _ = box(state, 0)
    _, _, bottom, right = box(state, layout.n_actions - 1)
    outline_box(image, top, left, bottom, right, 2 * border, BLACK)
    return image


def render_frame(
    layout: Layout, rewards: np.ndarray, *, time: int, state: int, played: tuple[int, int] | None = None,
) -> np.ndarray:
    """One ``rgb_array`` frame of a user's world.

    Parameters
    ----------
    layout : GridLayout, GraphLayout or TableLayout
    rewards : ndarray, shape (H, S, A)
        The user's reward table ``r_i[h, s, a]``; the frame colours step ``min(time, H - 1)``
        (grid cells and graph nodes by the mean over actions).
    time, state : int
        The step ``h`` (``0..H``) and the state ``s_h`` shown.
    played : (state, action), optional
        The last step's state and action, dotted in table frames.

    Returns
    -------
    ndarray of uint8, shape (height, width, 3)
        Sides are multiples of 16 and depend only on the layout.
    """
    horizon = rewards.shape[0]
    colors = reward_colors(rewards[min(time, horizon - 1)], float(np.abs(rewards).max()))
    if isinstance(layout, GridLayout):
        image = _grid_frame(layout, colors, state)
    elif isinstance(layout, GraphLayout):
        image = _graph_frame(layout, colors, state)
    else:
        image = _table_frame(layout, colors, state, played)
    return _padded(image, time, horizon)


__all__ = ["GRID_CELL", "node_pixels", "render_frame", "reward_colors", "table_cell"]
