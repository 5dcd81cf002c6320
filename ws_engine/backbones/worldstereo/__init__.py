"""The neural WorldStereo 2.0 backbone on diffusers (work in progress: the pieces below are built and
tested; the generation pipelines and the ``vdm_config={"backbone": "worldstereo"}`` wiring follow).

- ``transformer``: the official model classes on ``WanTransformer3DModel`` (control branch, reference stream).
- ``camera``: Plücker rays and camera normalisation, the quaternion-translation camera embedding, the DMD schedule.
- ``checkpoint``: reading an official model folder (config.json + model.safetensors) with typed errors.

diffusers, transformers and huggingface_hub are the ``neural`` extra; importing a submodule without
them raises MissingDependencyError naming it.
"""
