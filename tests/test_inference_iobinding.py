"""The IO-binding run path (inference/sessions.py), run on the CPU.

There is no GPU in CI: binding is forced on with device 'cpu' (io_binding="always"), which
runs the very code CUDA/TensorRT sessions use (device buffers per thread, preallocated
output, one copy back) and must give exactly what session.run gives."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from cephnode.inference import contract
from cephnode.inference.pack import default_pack_dir, load_pack
from cephnode.inference.pipeline import Pipeline
from cephnode.inference.sessions import ModelSessions, binding_device
from tests.support.standin import build_standin_pack
from cephnode.training import isbi

CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
TRT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return load_pack(build_standin_pack(tmp_path_factory.mktemp("pack"), kind="small"))


@pytest.fixture(scope="module")
def bound(standin):
    return ModelSessions(standin, device="cpu", threads=1, io_binding="always")


@pytest.fixture(scope="module")
def default_bound():
    return ModelSessions(load_pack(default_pack_dir()), device="cpu", threads=1, io_binding="always")


def _input(sessions: ModelSessions, key: str, rng: np.random.Generator, batch: int = 1) -> np.ndarray:
    shape = (batch,) + tuple(sessions.io[key].input_shape[1:])
    return rng.random(shape, dtype=np.float32)


def _plain(sessions: ModelSessions, key: str, x: np.ndarray) -> np.ndarray:
    info = sessions.io[key]
    return sessions.sessions[key].run([info.output_name], {info.input_name: x})[0]


def test_binding_device_per_provider():
    assert binding_device(CUDA) == "cuda"
    assert binding_device(TRT) == "cuda"
    assert binding_device(CPU) is None                       # CPU keeps session.run ...
    assert binding_device(CPU, "always") == "cpu"            # ... unless forced
    assert binding_device(CUDA, "never") is None
    assert binding_device(TRT, "always") == "cuda"
    # A provider whose memory we do not know (e.g. DirectML) is never bound, even when forced.
    assert binding_device(["DmlExecutionProvider", "CPUExecutionProvider"], "always") is None
    assert binding_device([]) is None
    with pytest.raises(ValueError, match="io_binding"):
        binding_device(CUDA, "yes")


def test_sessions_bind_what_the_selection_says(standin, bound):
    auto = ModelSessions(standin, device="cpu", threads=1)
    assert auto.bound == {}                                  # this host runs on the CPU
    assert set(bound.bound) == {m.key for m in contract.MODELS}
    assert {t.device for t in bound.bound.values()} == {"cpu"}
    assert all(t.input_dtype is np.float32 and t.output_dtype is np.float32 for t in bound.bound.values())


@pytest.mark.parametrize("key", [m.key for m in contract.MODELS])
def test_each_model_bound_equals_session_run(bound, key):
    rng = np.random.default_rng(len(key))
    x1, x2 = _input(bound, key, rng), _input(bound, key, rng)
    want1, want2 = _plain(bound, key, x1), _plain(bound, key, x2)
    got1 = bound.run(key, x1)
    assert key in bound._local.buffers                       # it really went through the binding
    got2 = bound.run(key, x2)
    assert got1.shape == want1.shape and got1.dtype == want1.dtype
    assert np.array_equal(got1, want1) and np.array_equal(got2, want2)
    assert not np.array_equal(want1, want2)                  # the inputs make a difference
    # The second call reused this thread's device buffers; the first answer is a host copy
    # of its own, not a view of them.
    assert np.array_equal(got1, want1)


def test_dynamic_batch_stage1_bound_equals_session_run(default_bound):
    key = contract.STAGE1.key
    assert default_bound.io[key].dynamic_batch
    rng = np.random.default_rng(7)
    for batch in (3, 1, 2):                                  # buffers reallocated on each change
        x = _input(default_bound, key, rng, batch)
        got = default_bound.run(key, x)
        assert got.shape == (batch, 25, 256, 256)
        assert np.array_equal(got, _plain(default_bound, key, x))
        # Each image of the batch gets the answer it gets alone.
        assert np.allclose(got[-1:], _plain(default_bound, key, x[-1:]), atol=1e-5)


def test_concurrent_bound_calls_from_threads(default_bound):
    rng = np.random.default_rng(11)
    keys = [contract.STAGE1.key, contract.PROFILE.key, contract.ZONE3.key]
    jobs = [(k, _input(default_bound, k, rng)) for _ in range(3) for k in keys]
    want = [_plain(default_bound, k, x) for k, x in jobs]
    got: dict[int, np.ndarray] = {}
    n_threads = 4
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait()
            for _ in range(2):                               # each thread reuses its own buffers
                for i in range(t, len(jobs), n_threads):
                    got[i] = default_bound.run(*jobs[i])
        except BaseException as exc:                         # surfaced below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert sorted(got) == list(range(len(jobs)))
    for i, w in enumerate(want):
        assert np.array_equal(got[i], w), f"job {i} ({jobs[i][0]})"


def test_whole_pipeline_bound_equals_plain(standin):
    grey = cv2.imread(str(isbi.load_cases("train")[0].image_path), cv2.IMREAD_GRAYSCALE)
    plain = Pipeline(standin, ModelSessions(standin, device="cpu", threads=1, io_binding="never"))
    bound = Pipeline.load(standin.root, device="cpu", threads=1, io_binding="always")
    a, b = plain.run(grey), bound.run(grey)
    assert set(bound.sessions._local.buffers) == {m.key for m in contract.MODELS}
    assert not a.degraded and a.stage0 == b.stage0
    assert [(lm.name, lm.x, lm.y, lm.confidence) for lm in a.landmarks] == \
           [(lm.name, lm.x, lm.y, lm.confidence) for lm in b.landmarks]


def test_batch_pipeline_on_dynamic_stage1_bound_equals_plain():
    cases = isbi.load_cases("train")[1:4]
    imgs = [cv2.imread(str(c.image_path), cv2.IMREAD_GRAYSCALE) for c in cases]
    plain = Pipeline.load(default_pack_dir(), device="cpu", threads=1, io_binding="never")
    bound = Pipeline.load(default_pack_dir(), device="cpu", threads=1, io_binding="always")
    items = [{"image": im, "name": f"i{i}"} for i, im in enumerate(imgs)]
    for a, b in zip(plain.run_batch(items, batch_stage1=True), bound.run_batch(items, batch_stage1=True)):
        assert a.image_name == b.image_name
        assert [(lm.x, lm.y, lm.confidence) for lm in a.landmarks] == \
               [(lm.x, lm.y, lm.confidence) for lm in b.landmarks]
    assert bound.sessions._local.buffers[contract.STAGE1.key].input_shape == (3, 28, 512, 512)
