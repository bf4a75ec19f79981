"""Serving: Ray Serve applications that answer KServe v2/v1 requests with an ONNX model.

``app`` has the typed application builders (named in ``rayrelay_core.serveconfig``),
``gateway`` the shared HTTP ingress, ``model`` the onnxruntime replicas,
``artifacts`` the verified download of an artifact set, ``protocol`` the wire
formats and ``metrics`` the Prometheus series. To measure an endpoint, use the
benchmarks' load generator (``python -m bench.loadgen``, see docs/performance.md).
"""
