"""WorldStereo for Blender: scene cameras to trajectories, generation out of process, results back in the scene.

An extension (see blender_manifest.toml). Importing this package has no side effects; Blender calls
:func:`register` / :func:`unregister`.
"""

_MODULES = ("preferences", "properties", "operators", "panel")


def _modules():
    import importlib

    return [importlib.import_module(f"{__package__}.{name}") for name in _MODULES]


def register():
    for module in _modules():
        module.register()


def unregister():
    for module in reversed(_modules()):
        module.unregister()
