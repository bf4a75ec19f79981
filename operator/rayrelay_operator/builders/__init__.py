"""Builders: pure functions from typed work (``backends.base``) to child manifests.

No clock, uuid, environment or API access in here: what varies is passed in,
so the same input always gives the same manifest (and a unit test can compare
it field by field). ``kuberay`` builds KubeRay's RayJob and RayService.
"""
