"""Where a trained model looks: slice importance, Grad-CAM and occlusion maps on the template grid.

One module per concept: :mod:`.geometry` (slice positions in MNI space, maps back to the template grid,
NIfTI with the template affine), :mod:`.slices` (leave-one-slice-out importance and attention weights),
:mod:`.gradcam` and :mod:`.occlusion` (MONAI's ``monai.visualize`` on our networks), :mod:`.plots`
(PNG overlays on the MNI152 template, importance plots), :mod:`.model` (the trained network from its
record), :mod:`.methods` (method names) and :mod:`.run` (a list of scans -> per-scan files,
``interpret.csv`` and group averages). The command line is
:mod:`mri_slice_transfer.commands.interpret`; see ``docs/interpret.md``.

Import a name from its module (``from mri_slice_transfer.interpret.run import interpret_scans``):
this file imports nothing, so the command line stays quick to start.
"""
