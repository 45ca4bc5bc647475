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
matching mesh contour, unless said otherwise. Points iBUG puts on the face's midline are on the
mesh's midline vertices, and contours crossing the midline are split there into halves: the
packaged photo's face is turned a little, so fractions of a whole lip's arc came out lopsided (iBUG
51 was 0.42 of the way from 0 to 267) and moved the points sideways on faces turned the other way
(a structural change: on its own it cost source.jpg's mouth 0.3% IOD, which the lopsided fractions
happened to suit, and gained 0.5 and 1.8% IOD on target and grace_hopper). Where a placement was
off from dlib's points in the same direction on all three packaged photos (source, target,
grace_hopper, and their mirrored, turned, scaled and darker views), the rule was changed and says
so (measured in inter-ocular distance, IOD); a change was kept only if, chosen on two of the
photos, it also helped on the third. Nothing was fitted point by point.
- jaw (0-16): the mesh's face oval, in two halves anchored at the chin (152 = iBUG 8, the lowest
  point of both contours): from the subject's right cheek at eye level (127, one vertex above the
  oval's widest point 234) down to the chin, 9 points, and up the other side to 356, 9 points. This
  is the hard part: iBUG's contour is the visible jaw line, the oval is the mesh's outer ring,
  which follows it on frontal faces but runs a little inside it at the chin (mesh chin points sit
  ~10% IOD above dlib's) and parts from it on a turned head's far side. One contour over the whole
  oval put iBUG 0 and 16 at the widest points, below where iBUG puts them, and let the chin slide
  sideways with yaw (12% IOD), hence the anchored halves starting one vertex up.
- brows (17-26): midway between the mesh's upper and lower brow edges (156-70-63-105-66-107 and
  46-53-52-65-55; 336-296-334-293-300-383 and 285-295-282-283-276), outer end to inner end on the
  right, inner to outer on the left, 5 points at even arc length (the upper edge alone put the
  points ~5% IOD above dlib's, which mark the brow's middle). The upper edges start at the brow's
  tail, 156 and 383, as MediaPipe's own brow outline does: ending them at 70 and 300 put the brow
  points 1-8% IOD inside dlib's (toward the nose) and the outer ends 1-8% IOD too high on all three
  photos (the brows were the worst group after the jaw). The lower edges keep their ends: starting
  them at the tail too (124, 353) put the outer ends 9% IOD below dlib's on target.jpg.
- nose bridge (27-30): the mesh's midline from between the eyes (168) down to the tip (1), 4 points
  at even arc length up to 0.93 of it, so that 30 lies midway between the tip's two vertices 4 and
  1 (at 1 it sat 4-5% IOD below dlib's tip on all three photos).
- nostrils (31-35): the lower edge of the nose from the right wing (98) through the base of the
  columella (2) to the left wing (327), each half at 0.2 and 0.6 of its arc from the wing (iBUG's
  outer points lie inside the wings' outermost vertices: 98 and 327 were 7% IOD outside dlib's 31
  and 35); 33, the subnasale where the columella meets the lip, midway between 2 and the lip's 164
  below it (at 2 it sat ~4% IOD above dlib's on all three photos).
- eyes (36-47): the lid contours; the corners are mesh vertices (33, 133 and 362, 263), the two
  points of each lid at thirds of the lid's arc, in iBUG's order (each eye clockwise in the image
  from its left corner).
- lips (48-67): the outer upper lip, corners (48, 54) included, midway between the mesh's outer lip
  contour and the next ring inside it (61-185-40-39-37-0 and 76-184-74-73-72-11 on the right,
  mirrored on the left: the outer contour alone put the upper lip's points 1-6% IOD above dlib's on
  all three photos), each half from the corner to the midline (51) with 49 and 50 at 0.37 and 0.7
  of its arc (at thirds they sat 1.5-3% IOD too near the corners: dlib's 50 and 52, the Cupid's
  bow's peaks, lie at or just inside the mesh's peak vertices 37 and 267, about 2/3 of the way).
  The outer lower lip (291 ... 17 ... 61): 57 on the midline vertex 17 and 55, 56, 58, 59 straight
  across from 53, 52, 50, 49 (at the same place along the corner-to-corner line), as iBUG pairs
  them (dlib's lower-lip points lie under its upper-lip points within 2% IOD on all three photos;
  at sixths of the arc they sat 3-5% IOD too near the corners). The inner lip from corner (78) to
  corner (308) in halves at the midline vertices 13 and 14: 61, 63, 65, 67 at 2/3 of each half's
  arc from its corner, as before at 1/3 and 2/3 of the whole (at quarters of the whole they sat
  5-10% IOD too near the corners: the mesh's inner contour runs along the fold at each corner,
  which iBUG's corner point ends).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Rule:
    """iBUG points placed at fractions of the arc length along a mesh contour, or midway
    between two contours (the same fraction along each); or, with `below`, where the contour
    crosses the perpendiculars to its end-to-end line through iBUG points placed before."""

    group: str
    points: tuple[int, ...]  # iBUG indices, in the order of `fractions` (or of `below`)
    contours: tuple[tuple[int, ...], ...]  # one or two mesh polylines
    fractions: tuple[float, ...] = ()  # of each contour's arc length, one per point
    below: tuple[int, ...] = ()  # instead of fractions: the iBUG points each point lies across from


def _even(count: int, first: float = 0.0, last: float = 1.0) -> tuple[float, ...]:
    return tuple(float(f) for f in np.linspace(first, last, count))


_JAW_R = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152)  # eye level -> chin
_JAW_L = (152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356)  # chin -> eye level
_UPPER_BROW_R = (156, 70, 63, 105, 66, 107)  # outer -> inner
_LOWER_BROW_R = (46, 53, 52, 65, 55)
_UPPER_BROW_L = (336, 296, 334, 293, 300, 383)  # inner -> outer
_LOWER_BROW_L = (285, 295, 282, 283, 276)
_NOSE_BRIDGE = (168, 6, 197, 195, 5, 4, 1)  # between the eyes -> tip
_UPPER_LID_R = (33, 246, 161, 160, 159, 158, 157, 173, 133)  # outer -> inner
_LOWER_LID_R = (133, 155, 154, 153, 145, 144, 163, 7, 33)  # inner -> outer
_UPPER_LID_L = (362, 398, 384, 385, 386, 387, 388, 466, 263)  # inner -> outer
_LOWER_LID_L = (263, 249, 390, 373, 374, 380, 381, 382, 362)  # outer -> inner
# The lips in halves, corner -> midline vertex -> corner (0, 17, 13, 14 lie on the midline).
_OUTER_UPPER_LIP_R, _OUTER_UPPER_LIP_L = (61, 185, 40, 39, 37, 0), (0, 267, 269, 270, 409, 291)
_UPPER_LIP_RING_R, _UPPER_LIP_RING_L = (76, 184, 74, 73, 72, 11), (11, 302, 303, 304, 408, 306)
_OUTER_LOWER_LIP = (291, 375, 321, 405, 314, 17, 84, 181, 91, 146, 61)
_INNER_UPPER_LIP_R, _INNER_UPPER_LIP_L = (78, 191, 80, 81, 82, 13), (13, 312, 311, 310, 415, 308)
_INNER_LOWER_LIP_L, _INNER_LOWER_LIP_R = (308, 324, 318, 402, 317, 14), (14, 87, 178, 88, 95, 78)

RULES: tuple[Rule, ...] = (
    Rule("jaw", tuple(range(0, 9)), (_JAW_R,), _even(9)),
    Rule("jaw", tuple(range(9, 17)), (_JAW_L,), _even(9)[1:]),
    Rule("brows", tuple(range(17, 22)), (_UPPER_BROW_R, _LOWER_BROW_R), _even(5)),
    Rule("brows", tuple(range(22, 27)), (_UPPER_BROW_L, _LOWER_BROW_L), _even(5)),
    Rule("nose", (27, 28, 29, 30), (_NOSE_BRIDGE,), _even(4, 0.0, 0.93)),
    Rule("nose", (31, 32), ((98, 97, 2),), (0.2, 0.6)),
    Rule("nose", (33,), ((2, 164),), (0.5,)),
    Rule("nose", (34, 35), ((2, 326, 327),), (0.4, 0.8)),
    Rule("eyes", (36, 37, 38, 39), (_UPPER_LID_R,), _even(4)),
    Rule("eyes", (40, 41), (_LOWER_LID_R,), (1 / 3, 2 / 3)),
    Rule("eyes", (42, 43, 44, 45), (_UPPER_LID_L,), _even(4)),
    Rule("eyes", (46, 47), (_LOWER_LID_L,), (1 / 3, 2 / 3)),
    Rule("mouth", (48, 49, 50, 51), (_OUTER_UPPER_LIP_R, _UPPER_LIP_RING_R), (0.0, 0.37, 0.7, 1.0)),
    Rule("mouth", (52, 53, 54), (_OUTER_UPPER_LIP_L, _UPPER_LIP_RING_L), (0.3, 0.63, 1.0)),
    Rule("mouth", (55, 56, 58, 59), (_OUTER_LOWER_LIP,), below=(53, 52, 50, 49)),
    Rule("mouth", (57,), (_OUTER_LOWER_LIP[5:6],), (0.0,)),
    Rule("mouth", (60, 61, 62), (_INNER_UPPER_LIP_R,), (0.0, 2 / 3, 1.0)),
    Rule("mouth", (63, 64), (_INNER_UPPER_LIP_L,), (1 / 3, 1.0)),
    Rule("mouth", (65, 66), (_INNER_LOWER_LIP_L,), (2 / 3, 1.0)),
    Rule("mouth", (67,), (_INNER_LOWER_LIP_R,), (1 / 3,)),
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


def _weights_at(contour: tuple[int, ...], along: np.ndarray, fraction: float) -> dict[int, float]:
    """Vertex weights of the point at `fraction` of `along` (a monotone position per vertex)."""
    if len(contour) == 1:
        return {contour[0]: 1.0}
    k = int(np.clip(np.searchsorted(along, fraction, side="right") - 1, 0, len(contour) - 2))
    t = round(float(np.clip((fraction - along[k]) / max(along[k + 1] - along[k], 1e-12), 0.0, 1.0)), 2)
    weights = {contour[k]: 1.0 - t, contour[k + 1]: t}
    return {v: w for v, w in weights.items() if w > 0}


def _place_on_contour(xy: np.ndarray, contour: tuple[int, ...], fraction: float) -> dict[int, float]:
    """Vertex weights that put a point `fraction` of the way along the contour's arc length."""
    if len(contour) == 1:
        return {contour[0]: 1.0}
    steps = np.linalg.norm(np.diff(xy[list(contour)], axis=0), axis=1)
    return _weights_at(contour, np.concatenate([[0.0], np.cumsum(steps)]) / steps.sum(), fraction)


def _place_across(xy: np.ndarray, contour: tuple[int, ...], point: np.ndarray) -> dict[int, float]:
    """Vertex weights of the contour's point across from `point`: at the same position along the
    line from the contour's first to its last vertex."""
    ends = xy[contour[-1]] - xy[contour[0]]
    along = (xy[list(contour)] - xy[contour[0]]) @ ends / (ends @ ends)
    return _weights_at(contour, along, float((point - xy[contour[0]]) @ ends / (ends @ ends)))


def derive_table(mesh: np.ndarray) -> tuple[Row, ...]:
    """The 68 rows of vertex weights that `RULES` give on one frontal mesh ([468, 2+] pixels)."""
    xy = np.asarray(mesh, np.float64)[:, :2]
    rows: dict[int, Row] = {}
    for rule in RULES:
        if rule.below:
            targets = [sum(w * xy[v] for v, w in rows[i]) for i in rule.below]
            placed = [_place_across(xy, rule.contours[0], p) for p in targets]
        else:
            placed = []
            for fraction in rule.fractions:
                weights: dict[int, float] = {}
                for contour in rule.contours:
                    for vertex, w in _place_on_contour(xy, contour, fraction).items():
                        weights[vertex] = weights.get(vertex, 0.0) + w / len(rule.contours)
                placed.append(weights)
        for point, weights in zip(rule.points, placed):
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
    ((46, 0.5), (156, 0.5)),  # 17
    ((52, 0.255), (53, 0.245), (63, 0.315), (70, 0.185)),  # 18
    ((52, 0.21), (65, 0.29), (66, 0.04), (105, 0.46)),  # 19
    ((55, 0.175), (65, 0.325), (66, 0.44), (107, 0.06)),  # 20
    ((55, 0.5), (107, 0.5)),  # 21
    ((285, 0.5), (336, 0.5)),  # 22
    ((285, 0.14), (295, 0.36), (296, 0.48), (336, 0.02)),  # 23
    ((282, 0.28), (293, 0.01), (295, 0.22), (334, 0.49)),  # 24
    ((282, 0.18), (283, 0.32), (293, 0.315), (300, 0.185)),  # 25
    ((276, 0.5), (383, 0.5)),  # 26
    ((168, 1.0),),  # 27
    ((6, 0.17), (197, 0.83)),  # 28
    ((5, 0.74), (195, 0.26)),  # 29
    ((1, 0.49), (4, 0.51)),  # 30
    ((97, 0.36), (98, 0.64)),  # 31
    ((2, 0.11), (97, 0.89)),  # 32
    ((2, 0.5), (164, 0.5)),  # 33
    ((2, 0.04), (326, 0.96)),  # 34
    ((326, 0.34), (327, 0.66)),  # 35
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
    ((61, 0.5), (76, 0.5)),  # 48
    ((39, 0.46), (40, 0.04), (73, 0.355), (74, 0.145)),  # 49
    ((0, 0.025), (11, 0.025), (37, 0.475), (72, 0.475)),  # 50
    ((0, 0.5), (11, 0.5)),  # 51
    ((267, 0.435), (269, 0.065), (302, 0.44), (303, 0.06)),  # 52
    ((269, 0.3), (270, 0.2), (303, 0.23), (304, 0.27)),  # 53
    ((291, 0.5), (306, 0.5)),  # 54
    ((321, 0.47), (405, 0.53)),  # 55
    ((314, 0.94), (405, 0.06)),  # 56
    ((17, 1.0),),  # 57
    ((84, 0.89), (181, 0.11)),  # 58
    ((91, 0.44), (181, 0.56)),  # 59
    ((78, 1.0),),  # 60
    ((81, 0.26), (82, 0.74)),  # 61
    ((13, 1.0),),  # 62
    ((311, 0.37), (312, 0.63)),  # 63
    ((308, 1.0),),  # 64
    ((317, 0.65), (402, 0.35)),  # 65
    ((14, 1.0),),  # 66
    ((87, 0.79), (178, 0.21)),  # 67
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
