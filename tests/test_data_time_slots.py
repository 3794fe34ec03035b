"""Time slots of interactions (the hour of the day), computed in float64 before RecBole's normalisation."""
import numpy as np
import pytest
import torch

from recbole_compress.data.time_slot_dataset import time_slots


def test_time_slots_hour_of_day_in_float64():
    assert time_slots(torch.tensor([5 * 3600 + 17.0]), 3600, 24).item() == 5
    assert time_slots(np.array([0, 3599, 3600, 86_400 + 23 * 3600]), 3600, 24).tolist() == [0, 0, 1, 23]
    # a real Unix time keeps its seconds (float32 only resolves 64 s here): 893286000 is 23:00:00 UTC
    assert time_slots(np.array([893_285_999, 893_286_000]), 3600, 24).tolist() == [22, 23]
    assert time_slots(np.array([7 * 86_400 + 3]), 86_400, 7).tolist() == [0]  # day of week with other settings
    with pytest.raises(ValueError):
        time_slots(np.array([1.0]), 0, 24)

