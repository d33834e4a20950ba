"""Data: data lists (``train/val/test.csv``) and synthetic demo cohorts.

- :mod:`.datalist` (``TASKS``, ``read_datalist``, ``read_split_datalists``, ``check_leakage``): the
  data list format of ``docs/data_lists.md``, checked up front (every problem reported at once).
- :mod:`.sources` (``build_datalist``) and :mod:`.bids` (``scan_entities``): one CSV of all scans from a
  BIDS dataset, ``prepare``'s manifest or any folder plus a clinical table (``docs/real_data.md``).
- :mod:`.synthetic` (``generate_cohort``, ``plan_cohort``): synthetic AD / brain-age cohorts derived
  from the ICBM152 template (``docs/demo_data.md``), with :mod:`.anatomy` and :mod:`.raw`.

This file imports nothing: import a name from its module
(``from mri_slice_transfer.data.datalist import read_datalist``), so that importing one module does not
import the others' dependencies (pandas, nibabel, torch).
"""
