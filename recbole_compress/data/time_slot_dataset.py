"""A sequential dataset that keeps the time of day of every interaction, whatever the timestamp normalisation.

LSAN's temporal context needs the hour of the day of each history item. RecBole stores float fields as float32 (one
Unix time is only resolved to 64 s) and its ``dataset/ml-100k.yaml`` min-max normalises every float field
(``normalize_all: True``), which turns all hours into 0. Switching the normalisation off is not an option: the
leave-one-out split orders each user's interactions by the stored timestamp, and raw float32 times create ties that
normalised ones do not, so on ml-100k 147 of the 943 test targets would change and LSAN would no longer be compared
with SASRec on the same split.

:class:`TimeSlotSequentialDataset` therefore leaves the timestamp exactly as RecBole's ``SequentialDataset`` makes it
(same order, same split as every other model) and adds one interaction field, ``<TIME_FIELD>_slot`` (float, values
``0 .. num_time_slots - 1``), computed in float64 from the raw timestamps before any normalisation:
``floor(ts / time_slot_seconds) mod num_time_slots`` (the UTC hour of day by default). RecBole's data augmentation
turns it into ``<TIME_FIELD>_slot_list`` beside ``item_id_list``, so a model reads the slot of every history item.

RecBole's ``create_dataset`` uses the class ``recbole.data.dataset.<Model>Dataset`` when it exists:
:func:`register_dataset` puts a class there for a plugin model.
"""
import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.utils import FeatureSource, FeatureType


DEFAULT_SLOT_SECONDS = 3600
DEFAULT_NUM_SLOTS = 24


def time_slots(timestamps, slot_seconds=3600, num_slots=24):
    """``floor(ts / slot_seconds) mod num_slots`` (the UTC hour of day for the defaults), as int64.

    Accepts a tensor, a numpy array or a pandas Series; the arithmetic is done in float64 so that Unix times keep
    their seconds (float32 only resolves 64 s around 2^30).
    """
    if slot_seconds <= 0 or num_slots < 1:
        raise ValueError(f"time_slot_seconds must be > 0 and num_time_slots >= 1, got {slot_seconds}, {num_slots}")
    if isinstance(timestamps, torch.Tensor):
        return torch.remainder(torch.floor(timestamps.double() / slot_seconds), num_slots).long()
    values = np.asarray(timestamps, dtype=np.float64)
    return np.remainder(np.floor(values / slot_seconds), num_slots).astype(np.int64)


def slot_field_name(config):
    """Name of the slot field: ``<TIME_FIELD>_slot``."""
    return f"{config['TIME_FIELD']}_slot"


class TimeSlotSequentialDataset(SequentialDataset):
    """RecBole's ``SequentialDataset`` plus the interaction field ``<TIME_FIELD>_slot`` (see the module's text).

    Reads ``time_slot_seconds`` (default 3600) and ``num_time_slots`` (default 24). Without a loaded time field the
    dataset is exactly RecBole's.
    """

    def _normalize(self):
        time_field = self.config["TIME_FIELD"]
        slots = None
        if time_field and time_field in self.inter_feat:
            seconds = self.config["time_slot_seconds"] or DEFAULT_SLOT_SECONDS
            n_slots = self.config["num_time_slots"] or DEFAULT_NUM_SLOTS
            slots = time_slots(self.inter_feat[time_field].to_numpy(), seconds, n_slots)
        super()._normalize()
        if slots is not None:
            name = slot_field_name(self.config)
            if name in self.field2type:
                raise ValueError(f"the dataset already has a field {name!r}; rename it (the time slot field)")
            self.inter_feat[name] = slots.astype(np.float64)
            self.set_field_property(name, FeatureType.FLOAT, FeatureSource.INTERACTION, 1)


def register_dataset(model_name, dataset_class):
    """Make RecBole's ``create_dataset`` build ``dataset_class`` for ``config['model'] == model_name``."""
    import recbole.data.dataset as recbole_datasets

    setattr(recbole_datasets, f"{model_name}Dataset", dataset_class)
