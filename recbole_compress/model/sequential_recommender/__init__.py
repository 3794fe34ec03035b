"""Plugin sequential recommenders, one model per module (file name = class name lower-cased).

Models are found by :func:`recbole_compress.registry.plugin_models`, which scans this package: adding a module is
enough to register its model (a model that needs a special trainer is listed in
:data:`recbole_compress.registry.PLUGIN_TRAINERS`). A model class may declare

- ``config_keys``, ``config_relations``, ``data_rules``, ``phases``: the keys it reads and their rules, and the phases
  of its run (see :mod:`recbole_compress.config_keys`);
- ``aliases``: other CLI names (case-insensitive), e.g. ``("CpRec-NextItNet",)``;
- ``runnable``: ``False`` for classes that are not trained on their own (search supernets, internal parts);
- ``counterpart``: the uncompressed model the benchmark compares it against, e.g. ``"SASRec"``.
"""
