"""Ground truth of the ambiguous tier: what a caption asks for, and which scenes satisfy it.

A :class:`Request` is the reference scene plus the changes its caption states (object,
attribute, value). A scene satisfies it when its objects occupy exactly the reference's
cells and each cell holds the requested colour and shape where the caption asks for one,
the reference's elsewhere. Captions never say a size, so every size satisfies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dqe_cir_pipeline.data_sources.synthetic.scenes import Scene, SceneObject
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import POSITIONS

#: The attributes a caption can request; every other attribute of the reference's
#: objects is either kept (the cell) or free (the size).
REQUESTABLE: tuple[str, ...] = ("color", "shape")

#: A scene with sizes left out: ``(cell, colour, shape)`` per object in row-major order.
Signature = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Change:
    """One requested attribute: object ``object`` of the reference gets ``value``."""

    object: int
    attribute: str
    value: str

    def as_dict(self, reference: Scene) -> dict[str, Any]:
        """JSON-ready form (an ``edit["changes"]`` entry), with the reference's value."""
        before = getattr(reference[self.object], self.attribute)
        return {
            "object": self.object,
            "attribute": self.attribute,
            "from": before,
            "to": self.value,
        }


@dataclass(frozen=True)
class Request:
    """A query's meaning: the reference scene and the caption's requested changes."""

    reference: Scene
    changes: tuple[Change, ...]

    def required(self) -> dict[str, dict[str, str]]:
        """Cell -> the colour and shape a satisfying scene must show there."""
        out = {o.position: {"color": o.color, "shape": o.shape} for o in self.reference}
        for change in self.changes:
            out[self.reference[change.object].position][change.attribute] = change.value
        return out

    def requested_cells(self) -> set[tuple[str, str]]:
        """``(cell, attribute)`` of every requested change."""
        return {(self.reference[c.object].position, c.attribute) for c in self.changes}

    def signature(self) -> Signature:
        """The signature every satisfying scene has (and no other)."""
        required = self.required()
        return tuple(
            (cell, required[cell]["color"], required[cell]["shape"])
            for cell in sorted(required, key=POSITIONS.__getitem__)
        )

    @classmethod
    def from_edit(cls, edit: Mapping[str, Any]) -> Request:
        """Rebuild the request from a written record's ``edit`` dict."""
        return cls(
            reference=scene_from_dicts(edit["reference_objects"]),
            changes=tuple(
                Change(int(c["object"]), str(c["attribute"]), str(c["to"])) for c in edit["changes"]
            ),
        )


def scene_from_dicts(objects: Iterable[Mapping[str, Any]]) -> Scene:
    """A scene from JSON object dicts (``color``, ``shape``, ``size``, ``position``)."""
    return tuple(
        SceneObject(str(o["color"]), str(o["shape"]), str(o["size"]), str(o["position"]))
        for o in objects
    )


def signature(scene: Sequence[SceneObject]) -> Signature:
    """The scene without its sizes, objects in row-major cell order."""
    return tuple(
        (o.position, o.color, o.shape) for o in sorted(scene, key=lambda o: POSITIONS[o.position])
    )


def violations(scene: Sequence[SceneObject], request: Request) -> list[tuple[str, ...]]:
    """Every way ``scene`` fails ``request``; empty when it satisfies it.

    Entries: ``("layout",)`` when the occupied cells differ from the reference's, and
    ``("requested" | "kept", cell, attribute)`` for each wrong colour or shape in a
    reference cell (requested: the caption asked for it; kept: the reference's value).
    """
    cells = {o.position: o for o in scene}
    required = request.required()
    out: list[tuple[str, ...]] = []
    if len(cells) != len(scene) or set(cells) != set(required):
        out.append(("layout",))
    requested = request.requested_cells()
    for cell in sorted(required, key=POSITIONS.__getitem__):
        obj = cells.get(cell)
        if obj is None:
            continue
        for attribute, value in required[cell].items():
            if getattr(obj, attribute) != value:
                kind = "requested" if (cell, attribute) in requested else "kept"
                out.append((kind, cell, attribute))
    return out


def satisfies(scene: Sequence[SceneObject], request: Request) -> bool:
    """Whether ``scene`` is a valid target of ``request``."""
    return not violations(scene, request)


def is_near_miss(scene: Sequence[SceneObject], request: Request) -> bool:
    """Whether ``scene`` breaks exactly one requested attribute and nothing else."""
    found = violations(scene, request)
    return len(found) == 1 and found[0][0] == "requested"
