"""Preparing raw T1 scans for the models: registration to the template with SimpleITK, QC, batches.

A raw scan (NIfTI, MGZ, NRRD, MHA or a DICOM series, any storage orientation) is registered affinely to
the template T1 (mutual information, multi-resolution), resampled onto the 91x109x91 2 mm template grid
and masked with the template brain mask. See ``docs/prepare.md``.

- :mod:`.batch`: ``prepare_scan`` / ``prepare_scans``, one scan / a batch (manifest, QC images,
  resumable), ``MANIFEST_COLUMNS``, ``output_name``.
- :mod:`.io`: ``read_scan``, ``find_inputs``, ``IMAGE_SUFFIXES``: reading and finding scans.
- :mod:`.registration`: ``register_to_template``, ``resample_to_template_grid``, ``n4_correct``,
  ``DEFAULT_DOF``, ``DOF_CHOICES``: the registration itself.
- :mod:`.qc`: ``qc_png``, ``write_overview``: the QC images and page.

This file imports nothing: import a name from its module
(``from mri_slice_transfer.prepare.batch import prepare_scans``), so that importing one module does not
pull in SimpleITK and pandas. The command line is :mod:`mri_slice_transfer.commands.prepare`.
"""
