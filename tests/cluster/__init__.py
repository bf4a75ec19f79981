"""The cluster layer: tests on a real kube-apiserver + etcd (see conftest.py).

A package, so that its conftest is imported as ``cluster.conftest`` and does not
shadow ``tests/conftest.py``, which other tests import as ``conftest``.
"""
