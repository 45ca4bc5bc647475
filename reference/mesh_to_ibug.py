"""From MediaPipe's 468-point face mesh to the 68-point iBUG 300-W layout the model was trained on.

The bi-layer model was trained on face-alignment's 68 landmarks (the iBUG 300-W order, as
dlib's). The mesh has no vertex exactly at most of them, so each of the 68 points is placed on
a mesh contour by a rule, and the rule becomes one fixed table that an app applies as is:

    point i = (1 - t_i) * mesh[a_i] + t_i * mesh[b_i]     (x, y only)

`MESH_TO_IBUG` is that table (68 rows of a, b, t). It was derived by `derive_table` from the
mesh of the packaged frontal photo `reference/photos/source.jpg` (a test re-derives it), using
the rules below and no dlib landmarks, so that measuring it against dlib is not measuring a fit.

The rules (`RULES`), group by group. iBUG spreads a feature's points evenly along its outline
between fixed end points, so each group's points sit at even fractions of the arc length of the
matching mesh contour, unless said otherwise. Where a first even placement was off from dlib's
points on all three packaged photos in the same direction, the rule was changed once and says so
(measured in inter-ocular distance, IOD); nothing was fitted point by point.
- jaw (0-16): the mesh's face oval, in two halves anchored at the chin (152 = iBUG 8, the lowest
  point of both contours): from the subject's right cheek at eye level (127, one vertex above the
  oval's widest point 234) down to the chin, 9 points, and up the other side to 356, 9 points.
  This is the hard part: iBUG's contour is the visible jaw line, the oval is the mesh's outer
  ring, which follows it on frontal faces but runs a little inside it at the chin (mesh chin
  points sit ~10% IOD above dlib's) and parts from it on a turned head's far side. One contour
  over the whole oval put iBUG 0 and 16 at the widest points, below where iBUG puts them, and
  let the chin slide sideways with yaw (12% IOD), hence the anchored halves starting one vertex up.
- brows (17-26): midway between the mesh's upper and lower brow edges (70-63-105-66-107 and
  46-53-52-65-55; 336-296-334-293-300 and 285-295-282-283-276), outer end to inner end on the
  right, inner to outer on the left, 5 points at even arc length (the upper edge alone put the
  points ~5% IOD above dlib's, which mark the brow's middle).
- nose bridge (27-30): the mesh's midline from between the eyes (168) down to the tip (1),
  4 points at even arc length (27 between the eyes, 30 the tip).
- nostrils (31-35): the lower edge of the nose from the right wing (98) through the base of the
  columella (2) to the left wing (327), at 0.1 ... 0.9 of its arc length: iBUG's outer points
  lie inside the wings' outermost vertices (98 and 327 were 7% IOD outside dlib's 31 and 35).
- eyes (36-47): the lid contours; the corners are mesh vertices (33, 133 and 362, 263), the two
  points of each lid at thirds of the lid's arc, in iBUG's order (each eye clockwise in the image
  from its left corner).
- lips (48-67): the outer lip from corner (61) to corner (291), its upper and lower halves each
  with 5 points at sixths of the arc; the inner lip from corner (78) to corner (308), 3 points per
  half at 1/3, 1/2 and 2/3 of the arc (at quarters they sat 5-10% IOD too near the corners: the
  mesh's inner contour runs along the fold at each corner, which iBUG's corner point ends).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Rule:
    """iBUG points placed at fractions of the arc length along a mesh contour, or midway
    between two contours (the same fraction along each)."""

    group: str
    points: tuple[int, ...]  # iBUG indices, in the order of `fractions`
    contours: tuple[tuple[int, ...], ...]  # one or two mesh polylines
    fractions: tuple[float, ...]  # of each contour's arc length, one per point


def _even(count: int, first: float = 0.0, last: float = 1.0) -> tuple[float, ...]:
    return tuple(float(f) for f in np.linspace(first, last, count))


_JAW_R = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152)  # eye level -> chin
_JAW_L = (152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356)  # chin -> eye level
_UPPER_BROW_R = (70, 63, 105, 66, 107)  # outer -> inner
_LOWER_BROW_R = (46, 53, 52, 65, 55)
_UPPER_BROW_L = (336, 296, 334, 293, 300)  # inner -> outer
_LOWER_BROW_L = (285, 295, 282, 283, 276)
_UPPER_LID_R = (33, 246, 161, 160, 159, 158, 157, 173, 133)  # outer -> inner
_LOWER_LID_R = (133, 155, 154, 153, 145, 144, 163, 7, 33)  # inner -> outer
_UPPER_LID_L = (362, 398, 384, 385, 386, 387, 388, 466, 263)  # inner -> outer
_LOWER_LID_L = (263, 249, 390, 373, 374, 380, 381, 382, 362)  # outer -> inner
_OUTER_UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
_OUTER_LOWER_LIP = (291, 375, 321, 405, 314, 17, 84, 181, 91, 146, 61)
_INNER_UPPER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
_INNER_LOWER_LIP = (308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78)

RULES: tuple[Rule, ...] = (
    Rule("jaw", tuple(range(0, 9)), (_JAW_R,), _even(9)),
    Rule("jaw", tuple(range(9, 17)), (_JAW_L,), _even(9)[1:]),
    Rule("brows", tuple(range(17, 22)), (_UPPER_BROW_R, _LOWER_BROW_R), _even(5)),
    Rule("brows", tuple(range(22, 27)), (_UPPER_BROW_L, _LOWER_BROW_L), _even(5)),
    Rule("nose", (27, 28, 29, 30), ((168, 6, 197, 195, 5, 4, 1),), _even(4)),
    Rule("nose", (31, 32, 33, 34, 35), ((98, 97, 2, 326, 327),), _even(5, 0.1, 0.9)),
    Rule("eyes", (36, 37, 38, 39), (_UPPER_LID_R,), _even(4)),
    Rule("eyes", (40, 41), (_LOWER_LID_R,), (1 / 3, 2 / 3)),
    Rule("eyes", (42, 43, 44, 45), (_UPPER_LID_L,), _even(4)),
    Rule("eyes", (46, 47), (_LOWER_LID_L,), (1 / 3, 2 / 3)),
    Rule("mouth", (48, 49, 50, 51, 52, 53, 54), (_OUTER_UPPER_LIP,), _even(7)),
    Rule("mouth", (55, 56, 57, 58, 59), (_OUTER_LOWER_LIP,), tuple(k / 6 for k in range(1, 6))),
    Rule("mouth", (60, 61, 62, 63, 64), (_INNER_UPPER_LIP,), (0.0, 1 / 3, 0.5, 2 / 3, 1.0)),
    Rule("mouth", (65, 66, 67), (_INNER_LOWER_LIP,), (1 / 3, 0.5, 2 / 3)),
)

# The regions errors are reported by (iBUG index ranges).
REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "brows": tuple(range(17, 27)),
    "nose": tuple(range(27, 36)),
    "eyes": tuple(range(36, 48)),
    "mouth": tuple(range(48, 68)),
}


Row = tuple[tuple[int, float], ...]  # (mesh vertex, weight) pairs, weights summing to 1


def _place_on_contour(xy: np.ndarray, contour: tuple[int, ...], fraction: float) -> dict[int, float]:
    """Vertex weights that put a point `fraction` of the way along the contour's arc length."""
    points = xy[list(contour)]
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    along = np.concatenate([[0.0], np.cumsum(steps)]) / steps.sum()
    k = int(np.clip(np.searchsorted(along, fraction, side="right") - 1, 0, len(contour) - 2))
    t = round(float(np.clip((fraction - along[k]) / max(along[k + 1] - along[k], 1e-12), 0.0, 1.0)), 2)
    weights = {contour[k]: 1.0 - t, contour[k + 1]: t}
    return {v: w for v, w in weights.items() if w > 0}


def derive_table(mesh: np.ndarray) -> tuple[Row, ...]:
    """The 68 rows of vertex weights that `RULES` give on one frontal mesh ([468, 2+] pixels)."""
    xy = np.asarray(mesh, np.float64)[:, :2]
    rows: dict[int, Row] = {}
    for rule in RULES:
        for point, fraction in zip(rule.points, rule.fractions):
            weights: dict[int, float] = {}
            for contour in rule.contours:
                for vertex, w in _place_on_contour(xy, contour, fraction).items():
                    weights[vertex] = weights.get(vertex, 0.0) + w / len(rule.contours)
            rows[point] = tuple((v, round(w, 3)) for v, w in sorted(weights.items()))
    if sorted(rows) != list(range(68)):
        raise AssertionError("the rules do not place every iBUG point exactly once")
    return tuple(rows[i] for i in range(68))


# Derived by `derive_table` from the mesh of reference/photos/source.jpg (tests re-derive it).
MESH_TO_IBUG: tuple[Row, ...] = (
    ((127, 1.0),),  # 0
    ((93, 0.25), (234, 0.75)),  # 1
    ((93, 0.57), (132, 0.43)),  # 2
    ((58, 0.51), (132, 0.49)),  # 3
    ((58, 0.34), (172, 0.66)),  # 4
    ((136, 0.93), (150, 0.07)),  # 5
    ((149, 0.65), (150, 0.35)),  # 6
    ((148, 0.5), (176, 0.5)),  # 7
    ((152, 1.0),),  # 8
    ((377, 0.48), (400, 0.52)),  # 9
    ((378, 0.79), (379, 0.21)),  # 10
    ((365, 0.69), (379, 0.31)),  # 11
    ((288, 0.05), (397, 0.95)),  # 12
    ((288, 0.74), (361, 0.26)),  # 13
    ((323, 0.4), (361, 0.6)),  # 14
    ((323, 0.34), (454, 0.66)),  # 15
    ((356, 1.0),),  # 16
    ((46, 0.5), (70, 0.5)),  # 17
    ((52, 0.255), (53, 0.245), (63, 0.305), (105, 0.195)),  # 18
    ((52, 0.21), (65, 0.29), (66, 0.215), (105, 0.285)),  # 19
    ((55, 0.175), (65, 0.325), (66, 0.37), (107, 0.13)),  # 20
    ((55, 0.5), (107, 0.5)),  # 21
    ((285, 0.5), (336, 0.5)),  # 22
    ((285, 0.14), (295, 0.36), (296, 0.41), (336, 0.09)),  # 23
    ((282, 0.28), (295, 0.22), (296, 0.15), (334, 0.35)),  # 24
    ((282, 0.18), (283, 0.32), (293, 0.36), (334, 0.14)),  # 25
    ((276, 0.5), (300, 0.5)),  # 26
    ((168, 1.0),),  # 27
    ((6, 0.03), (197, 0.97)),  # 28
    ((4, 0.02), (5, 0.98)),  # 29
    ((1, 1.0),),  # 30
    ((97, 0.39), (98, 0.61)),  # 31
    ((2, 0.22), (97, 0.78)),  # 32
    ((2, 0.84), (326, 0.16)),  # 33
    ((326, 0.96), (327, 0.04)),  # 34
    ((326, 0.32), (327, 0.68)),  # 35
    ((33, 1.0),),  # 36
    ((159, 0.63), (160, 0.37)),  # 37
    ((157, 0.45), (158, 0.55)),  # 38
    ((133, 1.0),),  # 39
    ((145, 0.12), (153, 0.88)),  # 40
    ((144, 0.9), (145, 0.1)),  # 41
    ((362, 1.0),),  # 42
    ((384, 0.4), (385, 0.6)),  # 43
    ((386, 0.5), (387, 0.5)),  # 44
    ((263, 1.0),),  # 45
    ((373, 0.91), (390, 0.09)),  # 46
    ((374, 0.22), (380, 0.78)),  # 47
    ((61, 1.0),),  # 48
    ((39, 0.98), (40, 0.02)),  # 49
    ((0, 0.25), (37, 0.75)),  # 50
    ((0, 0.58), (267, 0.42)),  # 51
    ((267, 0.5), (269, 0.5)),  # 52
    ((269, 0.23), (270, 0.77)),  # 53
    ((291, 1.0),),  # 54
    ((321, 0.99), (405, 0.01)),  # 55
    ((314, 0.39), (405, 0.61)),  # 56
    ((17, 0.7), (314, 0.3)),  # 57
    ((84, 0.9), (181, 0.1)),  # 58
    ((91, 0.69), (181, 0.31)),  # 59
    ((78, 1.0),),  # 60
    ((13, 0.05), (82, 0.95)),  # 61
    ((13, 0.63), (312, 0.37)),  # 62
    ((311, 0.63), (312, 0.37)),  # 63
    ((308, 1.0),),  # 64
    ((317, 0.37), (402, 0.63)),  # 65
    ((14, 0.6), (317, 0.4)),  # 66
    ((14, 0.11), (87, 0.89)),  # 67
)


def weight_matrix(table: tuple[Row, ...] = MESH_TO_IBUG) -> np.ndarray:
    """The table as a dense [68, 468] matrix W: landmarks = W @ mesh_xy."""
    w = np.zeros((68, 468))
    for i, row in enumerate(table):
        for vertex, weight in row:
            w[i, vertex] = weight
    return w


def ibug68_from_mesh(mesh: np.ndarray, table: tuple[Row, ...] = MESH_TO_IBUG) -> np.ndarray:
    """68 iBUG landmarks [68, 2] (float32 pixels) from a face mesh [468, 2 or 3]."""
    mesh = np.asarray(mesh)
    if mesh.ndim != 2 or mesh.shape[0] != 468 or mesh.shape[1] not in (2, 3):
        raise InputError(f"face mesh has shape {mesh.shape}, expected (468, 2) or (468, 3)")
    return (weight_matrix(table) @ mesh[:, :2].astype(np.float64)).astype(np.float32)


def table_for_manifest(table: tuple[Row, ...] = MESH_TO_IBUG) -> dict:
    """The mapping as a bundle records it, for an app to apply the same one."""
    return {"formula": "landmark[i] = sum of weight * mesh[vertex] over row i (x, y; mesh in photo pixels)",
            "rows": [[[vertex, weight] for vertex, weight in row] for row in table],
            "regions": {name: list(points) for name, points in REGIONS.items()}}
