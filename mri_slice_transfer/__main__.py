"""``python -m mri_slice_transfer`` is the same as the ``mri-slice-transfer`` command."""

from mri_slice_transfer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
