"""The harness we measure SPP with, and its command lines (``python -m benchmarks.<command>``).

Harness modules: ``streams`` (the benchmark registry and the tensor data sets), ``image_data``
(file-based image data sets), ``trunks``, ``cnn`` and ``models`` (MLP, VGG-9, ResNet-18),
``baselines`` (the nine methods), ``spp_variants`` (SPP experiments that are not library options),
``errors`` (data-set and checkpoint errors), ``checkpoint`` (resume after a kill), ``experiment``
(one run, and the strength tuner), ``report`` (records, tables and plots) and ``analysis``
(importance and weight change figures). Command lines: ``run``, ``sweep``, ``table``, ``analyze``,
``docs_tables``, ``penalty_speed``, ``importance_speed``, ``spp_defaults`` and ``mutation``.

The library a plugin user imports is :mod:`avalanche_spp`; nothing there imports from here.
"""
