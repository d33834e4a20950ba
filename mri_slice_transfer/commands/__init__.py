"""The ``mri-slice-transfer`` sub-commands, one module each.

Every module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
code); :mod:`mri_slice_transfer.cli` assembles them. A command module imports at the top only the
standard library and the light modules whose names its options use (choices, defaults); the module
that does the work is imported inside ``run()``, so building the parser imports no torch, MONAI,
pandas, SimpleITK or nibabel (the import rule of ``docs/architecture.md``).
"""
