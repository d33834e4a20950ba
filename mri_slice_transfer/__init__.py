"""mri_slice_transfer: 2D-slice set networks for 3D brain MRI, as a package and MONAI Bundles.

A newcomer's map:

- :mod:`mri_slice_transfer.template`: the FSL MNI152 2 mm grid every model expects.
- :mod:`mri_slice_transfer.transforms`: MONAI transforms from a NIfTI file to a ``[1, 91, 109, 91]`` tensor.
- :mod:`mri_slice_transfer.networks`: :class:`SliceSetNet` (the paper's model) and :class:`Conv3DNet`.
- :mod:`mri_slice_transfer.data`: data lists and the synthetic demo cohorts.
- :mod:`mri_slice_transfer.cli`: the ``mri-slice-transfer`` command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
