"""WorldStereo 2.0 on diffusers (the ``"worldstereo"`` backbone; needs the ``neural`` extra).

Modules: ``transformer`` / ``controlnet`` (the model classes, official state-dict names),
``conditioning`` (Plücker rays, camera normalisation, keyframes, buckets), ``dmd`` (4-step scheduler),
``checkpoint`` (released folders and the Wan base model), ``sampling`` (the pipelines' steps),
``neural`` (the Backbone), ``training`` (random models, loss, features).
"""

from __future__ import annotations

__all__ = ["WorldStereoBackbone", "WorldStereoModel", "WorldStereoRefSModel", "load_components"]


def __getattr__(name: str):
    if name == "WorldStereoBackbone":
        from .neural import WorldStereoBackbone

        return WorldStereoBackbone
    if name in ("WorldStereoModel", "WorldStereoRefSModel"):
        from . import transformer

        return getattr(transformer, name)
    if name == "load_components":
        from .checkpoint import load_components

        return load_components
    raise AttributeError(name)
