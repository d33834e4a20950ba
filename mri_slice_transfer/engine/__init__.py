"""Everything the MONAI bundle configs reference by dotted path (``mri_slice_transfer.engine.*``).

One concept per module: :mod:`.bundle_root` (where the bundle lives), :mod:`.datasets` (user data or
demo cohort), :mod:`.network`, :mod:`.model_record` (``models/model.json``: what a trained model
is), :mod:`.precision` (bf16 autocast on CPU), :mod:`.losses`,
:mod:`.metrics` (and the AD decision threshold), :mod:`.schedule` (learning-rate schedules),
:mod:`.handlers` (metrics files, best model, atomic checkpoint + resume, the per-epoch training log, the
stop on a non-finite loss), :mod:`.checkpoint` (weight files checked by their sha256, one loader),
:mod:`.lock` and :mod:`.run_guard` (one training per bundle folder, no silent overwrite),
:mod:`.short_errors` (one message, not a traceback, for errors a user can act on),
:mod:`.precise_bn` (BatchNorm statistics recomputed before validation),
:mod:`.predictions`, :mod:`.inputs` and :mod:`.progress` (evaluation / inference outputs, inputs and
progress), :mod:`.raw_inputs` (inference on raw scans, prepared on the way), :mod:`.distributed`,
:mod:`.seeding`, :mod:`.recipe` (demo or real-data settings), :mod:`.disk_cache` (the training data
path: scans cached in RAM, on disk or not at all), :mod:`.run_info` (the run log),
:mod:`.allocator` (malloc settings for CPU training) and :mod:`.io` (atomic writes), :mod:`.pretrain` and
:mod:`.pretrain_data` (self-supervised pretraining of the slice encoder, ``pretrain.json``).
"""

from mri_slice_transfer.engine.allocator import keep_freed_memory
from mri_slice_transfer.engine.bundle_root import bundle_root
from mri_slice_transfer.engine.checkpoint import (
    WeightFileError,
    WeightsLoader,
    load_model_weights,
    load_weights,
)
from mri_slice_transfer.engine.datasets import DataSource, initial_output_bias, resolve_data
from mri_slice_transfer.engine.disk_cache import DiskCache, DiskCacheDataset, make_dataset
from mri_slice_transfer.engine.distributed import default_device, handlers_for_rank, pin_memory_for
from mri_slice_transfer.engine.features import FeatureWriter
from mri_slice_transfer.engine.handlers import (
    BestModelSaver,
    FullCheckpoint,
    MetricsWriter,
    NonFiniteLossError,
    StopOnNonFiniteLoss,
    TrainingLog,
    handler,
)
from mri_slice_transfer.engine.inputs import resolve_inputs, run_name
from mri_slice_transfer.engine.lock import RunLock, RunLockedError
from mri_slice_transfer.engine.losses import make_loss
from mri_slice_transfer.engine.metrics import (
    lower_is_better,
    make_additional_metrics,
    make_key_metric,
    metric_cmp_fn,
    operating_threshold,
    threshold_setting,
)
from mri_slice_transfer.engine.model_record import (
    ModelRecord,
    ModelRecordError,
    build_network_from_record,
    resolve_record,
)
from mri_slice_transfer.engine.network import build_network, set_output_bias
from mri_slice_transfer.engine.options import as_bool, as_optional, as_pretrained
from mri_slice_transfer.engine.precise_bn import PreciseBatchNorm
from mri_slice_transfer.engine.precision import (
    AutocastInferer,
    choose_precision,
    cpu_autocast_enabled,
    cuda_amp_enabled,
    make_inferer,
)
from mri_slice_transfer.engine.predictions import PredictionWriter, SafeTransform
from mri_slice_transfer.engine.pretrain import (
    ContrastiveTrainer,
    EncoderSaver,
    PairContrastiveLoss,
    SliceViews,
    build_contrastive_network,
)
from mri_slice_transfer.engine.pretrain_data import PretrainData, pretraining_data
from mri_slice_transfer.engine.progress import ScanProgress, training_progress_bar
from mri_slice_transfer.engine.raw_inputs import inference_datalist, prepare_inputs
from mri_slice_transfer.engine.recipe import TrainingRecipe, training_recipe
from mri_slice_transfer.engine.resize import ScaleInputd, scaled_size, with_resize
from mri_slice_transfer.engine.run_guard import ExistingRunError, TrainingGuard
from mri_slice_transfer.engine.run_info import log_run_info
from mri_slice_transfer.engine.schedule import make_lr_scheduler
from mri_slice_transfer.engine.seeding import seed_everything
from mri_slice_transfer.engine.short_errors import short_errors

__all__ = [
    "ContrastiveTrainer",
    "EncoderSaver",
    "PairContrastiveLoss",
    "PretrainData",
    "SliceViews",
    "build_contrastive_network",
    "pretraining_data",
    "load_weights",
    "load_model_weights",
    "WeightsLoader",
    "WeightFileError",
    "TrainingLog",
    "TrainingGuard",
    "StopOnNonFiniteLoss",
    "RunLockedError",
    "RunLock",
    "NonFiniteLossError",
    "ExistingRunError",
    "AutocastInferer",
    "BestModelSaver",
    "ModelRecord",
    "ModelRecordError",
    "build_network_from_record",
    "resolve_record",
    "DataSource",
    "DiskCache",
    "DiskCacheDataset",
    "FullCheckpoint",
    "MetricsWriter",
    "PreciseBatchNorm",
    "FeatureWriter",
    "PredictionWriter",
    "SafeTransform",
    "ScanProgress",
    "build_network",
    "default_device",
    "pin_memory_for",
    "handler",
    "handlers_for_rank",
    "inference_datalist",
    "initial_output_bias",
    "make_inferer",
    "ScaleInputd",
    "TrainingRecipe",
    "training_progress_bar",
    "training_recipe",
    "as_bool",
    "as_optional",
    "as_pretrained",
    "bundle_root",
    "choose_precision",
    "cpu_autocast_enabled",
    "cuda_amp_enabled",
    "keep_freed_memory",
    "log_run_info",
    "lower_is_better",
    "make_additional_metrics",
    "make_key_metric",
    "make_dataset",
    "make_loss",
    "make_lr_scheduler",
    "metric_cmp_fn",
    "operating_threshold",
    "prepare_inputs",
    "resolve_data",
    "resolve_inputs",
    "run_name",
    "seed_everything",
    "short_errors",
    "scaled_size",
    "set_output_bias",
    "threshold_setting",
    "with_resize",
]
