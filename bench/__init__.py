"""rayrelay's benchmarks (not tests): ``python -m bench`` / ``make bench``.

Five benchmarks, each in its own module and its own process, each measuring
the product's own code paths against the baseline a user would otherwise pick:

- ``kernel``: PyTorch eager vs onnxruntime fp32 / fused / int8 (``rayrelay_workloads.export``);
- ``endpoint``: the rayrelay Serve endpoint vs a naive Flask server (``naive_server``, ``loadgen``);
- ``training``: Ray Train (``rayrelay_workloads.train``) with 1 and 2 workers vs a plain loop;
- ``control_plane``: the kopf operator (``rayrelay_operator.handlers``) against kmock's emulator;
- ``cold_start``: ModelDeployment created to Ready, and the replica's steps.

``model`` builds (once, cached in ``bench/.cache``) the fine-tuned model they
share; ``serving`` brings a ModelDeployment up the way ``rayrelay run`` does;
``report`` renders ``bench/results/*.json`` into ``docs/performance.md``.
"""
