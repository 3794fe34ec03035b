"""Plugin sequential recommenders, one model per module (file name = class name lower-cased).

Models are found by :func:`recbole_compress.utils.plugin_models`, which scans this package: adding a module is enough
to register its model. A model class may declare

- ``aliases``: other CLI names (case-insensitive), e.g. ``("CpRec-NextItNet",)``;
- ``trainer_class``: the trainer it needs (a class, or a dotted path), default :class:`recbole_compress.trainer.Trainer`;
- ``runnable``: ``False`` for classes that are not trained on their own (search supernets, internal parts);
- ``counterpart``: the uncompressed model the benchmark compares it against, e.g. ``"SASRec"``.
"""
