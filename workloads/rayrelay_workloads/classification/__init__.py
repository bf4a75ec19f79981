"""Sequence classification, the first task: its steps for the shared run are in ``task.py``.

Its data reader (``data.py``), Ray Train loop (``train_worker.py``), export
(``export.py``, ``prune.py``, ``distill.py``) and replica (``serve/model.py``)
predate the task seam and still sit at the package's top level, where the other
tasks reuse parts of them.
"""
