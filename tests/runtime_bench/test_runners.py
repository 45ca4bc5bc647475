"""The runner table: every runtime checks the model file it is given before opening it."""
import pytest

from bilayer_mobile.reference.errors import InputError
from bilayer_mobile.runtime_bench.runner import ModelFileError
from bilayer_mobile.runtime_bench.runners import RUNNERS, STAND_INS, make_runner

RUNTIMES = sorted(set(RUNNERS) | set(STAND_INS))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_file_of_another_format_is_a_user_error_naming_the_suffix(runtime, tmp_path):
    runner = STAND_INS.get(runtime, RUNNERS[runtime])
    other = next(s for s in (".onnx", ".tflite") if s != runner.file_suffix)
    wrong = tmp_path / f"model{other}"
    wrong.write_bytes(b"not a model of this runtime")
    with pytest.raises(ModelFileError, match=rf"model\{other} is not a \{runner.file_suffix} file") as caught:
        make_runner(runtime, wrong)
    assert isinstance(caught.value, InputError)  # one line and exit 2 in the CLI
    with pytest.raises(ModelFileError, match="does not exist"):
        make_runner(runtime, tmp_path / f"missing{runner.file_suffix}")


def test_a_directory_named_like_a_package_but_holding_none_is_refused(tmp_path):
    fake = tmp_path / "frame.mlpackage"
    fake.mkdir()
    with pytest.raises(ModelFileError, match="not a saved .mlpackage"):
        make_runner("coreml", fake)


def test_a_model_without_a_signature_runs_by_its_tensor_names():
    """MediaPipe's published models have no signature: the LiteRT runner addresses their tensors
    by the file's own names, and its default kernels agree with the reference kernels."""
    import numpy as np

    from bilayer_mobile.reference.face_tracking import FACE_MESH, driver_model_dir, litert_model

    path = driver_model_dir() / FACE_MESH.file
    runner = make_runner("litert", path)
    assert runner.signature is None
    assert runner.input_names == ["input_1"] and runner.output_names == ["conv2d_20", "conv2d_30"]
    x = np.random.default_rng(0).random((1, 192, 192, 3), dtype=np.float32)
    out = runner.infer({"input_1": x})
    reference = litert_model(path, reference_kernels=True)(x)
    assert out["conv2d_20"].shape == (1, 1, 1, 1404)
    for name, expected in zip(runner.output_names, reference):
        assert np.abs(out[name] - expected).max() < 1e-3
    with pytest.raises(ModelFileError, match="has no signature 'serving_default'; it has none"):
        RUNNERS["litert"](path, signature="serving_default")
