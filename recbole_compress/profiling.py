"""Measuring a model's own cost: peak memory of its allocations and wall-clock time, for the benchmarks.

Peak memory is the highest sum of bytes that torch's allocator holds for tensors created during the call (read from
the profiler's allocation events), not the process's resident size: data already alive before the call (parameters,
the input batch) is not counted, nor is anything outside torch. It works on CPU and GPU alike.

Times are only meaningful as ratios between models measured in the same process on the same batches (see
:func:`interleaved_times`): absolute seconds on a shared 2-core machine are noise.
"""
import json
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile


def peak_memory(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` once and return ``(result, peak_bytes)``.

    ``peak_bytes`` is the maximum, over the call, of the bytes allocated by torch during the call and not yet freed.
    """
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, profile_memory=True, record_shapes=False) as prof:
        result = fn(*args, **kwargs)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return result, peak


def timed(fn, *args, repeats=5, warmup=1, **kwargs):
    """Median wall-clock seconds of ``fn(*args, **kwargs)`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(fns, repeats=5, warmup=1):
    """Median seconds of each callable in ``fns`` (dict name -> zero-argument callable), run in turn.

    Interleaving (A, B, A, B, ...) exposes every model to the same machine load, so their ratio is fair even when
    the absolute times drift.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def state_dict_bytes(model):
    """Bytes of every tensor in the model's state_dict (parameters and buffers), as stored in a checkpoint."""
    seen = set()
    total = 0
    for tensor in model.state_dict().values():
        if not torch.is_tensor(tensor):
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel(), tensor.dtype)
        if key in seen:  # tied weights are stored once
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def count_parameters(model, trainable_only=False, inference=False):
    """Number of parameters (tied parameters counted once, as ``nn.Module.parameters()`` does).

    ``inference=True`` leaves out the submodules a model lists in its class attribute ``training_only_modules``
    (parts that only shape training, e.g. EODRec's distillation heads and code encoder): what the trained model
    needs to recommend, the size a compressed model is compared by."""
    skipped = set()
    if inference:
        for name in getattr(type(model), "training_only_modules", ()):
            module = getattr(model, name, None)
            if module is not None:
                skipped |= {id(p) for p in module.parameters()}
    return sum(p.numel() for p in model.parameters() if (p.requires_grad or not trainable_only) and id(p) not in skipped)


def report_json(result, output=None):
    """Print ``result`` as indented JSON and, when ``output`` is a path, write it there too (folders created).
    The benchmark scripts' common last step."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            f.write(text)
    return text
