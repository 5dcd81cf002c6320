"""What a reconstruction returns: a triangle mesh and the reconstruction record."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

__all__ = ["Mesh", "Reconstruction"]


@dataclass
class Mesh:
    """A triangle mesh: vertices (V,3) float32, faces (F,3) int64 (counter-clockwise seen from
    outside, i.e. the right-hand normal points to the observed free space), vertex_colors (V,3) in
    [0,1] or None, vertex_normals (V,3) unit or None."""

    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None
    vertex_normals: torch.Tensor | None = None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def face_normals(self) -> torch.Tensor:
        """Unit right-hand normals (F,3) of the faces (zero for degenerate faces)."""
        return face_normals(self.vertices, self.faces)

    def save(self, path):
        """Write the mesh (.glb, .obj or .ply, with vertex colours and normals) atomically; returns the path."""
        from ..io import save_mesh

        return save_mesh(path, self.vertices, self.faces, vertex_colors=self.vertex_colors, vertex_normals=self.vertex_normals)

    def to_trimesh(self):
        """A ``trimesh.Trimesh`` with the same vertices, faces, colours (RGBA uint8) and normals."""
        import trimesh

        colors = None
        if self.vertex_colors is not None:
            rgb = (self.vertex_colors.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            colors = trimesh.visual.color.to_rgba(rgb)
        normals = None if self.vertex_normals is None else self.vertex_normals.detach().cpu().numpy()
        return trimesh.Trimesh(
            vertices=self.vertices.detach().cpu().numpy(),
            faces=self.faces.detach().cpu().numpy(),
            vertex_colors=colors,
            vertex_normals=normals,
            process=False,
        )


def face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit right-hand normals (F,3) of triangles ``faces`` (F,3) over ``vertices`` (V,3)."""
    a, b, c = vertices[faces].unbind(1)
    n = torch.cross(b - a, c - a, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-20)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (V,3) of a triangle mesh (zero at unused vertices)."""
    a, b, c = vertices[faces].unbind(1)
    n = torch.cross(b - a, c - a, dim=-1)  # length = twice the area: area weighting for free
    acc = torch.zeros_like(vertices)
    for corner in range(3):
        acc.index_add_(0, faces[:, corner], n)
    return acc / acc.norm(dim=-1, keepdim=True).clamp(min=1e-20)


@dataclass
class Reconstruction:
    """A reconstructed scene.

    points (N,3) float32, colors (N,3) in [0,1], normals (N,3) unit; mesh: a :class:`Mesh` or None
    (for ``method="mesh"`` the points are its vertices); quality_metrics: plain ints and floats
    (JSON-serialisable); method: the method that made it. Dict-style access works too
    (``rec["points"]``, ``rec.keys()``), as the seed API documents.
    """

    points: torch.Tensor
    colors: torch.Tensor
    normals: torch.Tensor
    mesh: Mesh | None = None
    quality_metrics: dict[str, float | int] = field(default_factory=dict)
    method: str = "point_cloud"

    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))

    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(f"Reconstruction has no field {key!r}; fields are: {', '.join(self.keys())}.")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()
