"""Android benchmarks over adb: the tools' output formats, the exact commands, and a run end to end
against a fake `adb` on PATH (no phone, no network)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bilayer_mobile.reference.errors import BilayerError, InputError
from bilayer_mobile.runtime_bench.android import (AndroidBenchmark, BenchmarkOutputError, NoAndroidDevice,
                                                  adb_command, benchmark_command, connected_devices,
                                                  executor_runner_command, parse_adb_devices,
                                                  parse_benchmark_model, parse_executor_runner, push_commands,
                                                  run_android_benchmarks)

DATA = Path(__file__).parent / "data" / "android"  # the committed tool outputs (conftest.ANDROID_DATA)
DIR = "/data/local/tmp/bilayer-mobile"


def text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


# -- benchmark_model output -------------------------------------------------------------------

def test_cpu_run_new_memory_format():
    r = parse_benchmark_model(text("benchmark_cpu.txt"))
    assert r.init_ms == pytest.approx(31.546)
    assert r.first_ms == pytest.approx(74.210)
    assert r.warmup_avg_ms == pytest.approx(60.8734)
    assert r.inference_avg_ms == pytest.approx(58.1142)
    s = r.inference
    assert (s.count, s.min_ms, s.max_ms, s.avg_ms, s.std_ms) == (50, pytest.approx(56.012), pytest.approx(63.350),
                                                                 pytest.approx(58.1142), pytest.approx(1.520))
    assert (s.first_ms, s.curr_ms) == (pytest.approx(59.876), pytest.approx(57.215))
    assert (s.p5_ms, s.median_ms, s.p95_ms) == (pytest.approx(56.240), pytest.approx(57.903), pytest.approx(61.288))
    assert (r.memory_init_mb, r.memory_overall_mb, r.memory_format) == (52.5664, 104.5, "delta")
    assert r.peak_memory_mb == 110.773
    assert r.model_size_mb == 35.2417
    assert not r.op_profiling
    assert any("Replacing 250 out of 256 node(s)" in d for d in r.delegation)


def test_warmup_statistics_are_not_taken_for_inference():
    r = parse_benchmark_model(text("benchmark_cpu.txt"))
    assert r.warmup.count == 9 and r.warmup.avg_ms == pytest.approx(60.8734)
    assert r.inference.count == 50 and r.count == 50
    assert r.inference.avg_ms != r.warmup.avg_ms


def test_old_peak_memory_format_without_log_prefix():
    r = parse_benchmark_model(text("benchmark_cpu_old_memory.txt"))
    assert (r.memory_init_mb, r.memory_overall_mb, r.memory_format) == (48.3008, 97.2031, "peak")
    assert r.peak_memory_mb is None
    assert (r.init_ms, r.first_ms, r.warmup_avg_ms) == (pytest.approx(29.811), pytest.approx(81.377),
                                                         pytest.approx(65.4421))
    assert (r.inference.count, r.inference.min_ms, r.inference.max_ms, r.inference.avg_ms, r.inference.std_ms) == (
        50, pytest.approx(60.018), pytest.approx(68.831), pytest.approx(62.4076), pytest.approx(1.794))
    assert r.inference.median_ms is None  # builds of that time print no percentiles
    assert r.warmup.count == 8


def test_gpu_run_and_its_delegation_lines():
    r = parse_benchmark_model(text("benchmark_gpu.txt"))
    assert r.init_ms == pytest.approx(1402.770)
    assert r.inference.count == 69  # --min_secs made the tool run past --num_runs
    assert r.inference.avg_ms == pytest.approx(14.5023)
    assert r.inference.min_ms == pytest.approx(13.977)
    assert r.peak_memory_mb == 201.445
    assert "Created TensorFlow Lite delegate for GPU." in r.delegation
    assert any(d.startswith("Replacing 256 out of 256 node(s) with delegate (TfLiteGpuDelegateV2)") for d in r.delegation)
    assert any("completely executed by the delegate" in d for d in r.delegation)


def test_delegate_that_took_no_node_is_reported():
    out = text("benchmark_gpu.txt").replace(
        "Explicitly applied GPU delegate, and the model graph will be completely executed by the delegate.",
        "Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate.")
    r = parse_benchmark_model(out)
    assert "Though GPU delegate is explicitly applied, the model graph will not be executed by the delegate." in r.delegation


def test_failed_run_raises_with_the_tools_error():
    with pytest.raises(BenchmarkOutputError) as info:
        parse_benchmark_model(text("benchmark_nnapi_failed.txt"))
    message = str(info.value)
    assert "Failed to apply NNAPI delegate." in message
    assert "\n" not in message
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("output, said", [
    ("", "(no output at all)"),
    ("/system/bin/sh: /data/local/tmp/bilayer-mobile/benchmark_model: not found\n", "benchmark_model: not found"),
    ('CANNOT LINK EXECUTABLE "/data/local/tmp/bilayer-mobile/benchmark_model": library "libc++_shared.so" not found\n',
     "libc++_shared.so"),
    ("INFO: STARTING!\nERROR: Please specify the name of your TF Lite input file with --graph\n"
     "ERROR: Benchmarking failed.\n", "Please specify the name"),
])
def test_failures_quote_the_most_specific_line(output, said):
    with pytest.raises(BenchmarkOutputError, match="no inference timings") as info:
        parse_benchmark_model(output)
    assert said in str(info.value)


def test_op_profiling_run_takes_the_run_statistics_not_the_profilers():
    r = parse_benchmark_model(text("benchmark_op_profiling.txt"))
    assert r.op_profiling
    # the profiler prints its own "Timings (microseconds): count=50 ... avg=61336.9"
    assert r.inference.avg_ms == pytest.approx(60.3108)
    assert r.inference.max_ms == pytest.approx(66.028)
    assert r.warmup.count == 8
    # the last "Summary by node type" table: that of the regular runs, not of initialisation
    assert [row[0] for row in r.op_summary] == ["TfLiteXNNPackDelegate", "GRID_SAMPLE", "GATHER_ND"]
    assert r.op_summary[0] == ("TfLiteXNNPackDelegate", 2, 51.687, 86.185)
    assert r.memory_overall_mb == 105.324 and r.peak_memory_mb is None


def test_all_same_statistics_and_scientific_notation():
    out = ("Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.\n"
           "count=1 curr=2413337\n\n"
           "Running benchmark for at least 3 iterations and at least 0 seconds but terminate if exceeding 150 seconds.\n"
           "count=3 first=2.41e+06 curr=2.39e+06 min=2.39e+06 max=2.41e+06 avg=2.40333e+06 std=9428\n\n"
           "Inference timings in us: Init: 51003, First inference: 2413337, Warmup (avg): 2.41334e+06, "
           "Inference (avg): 2.40333e+06\n")
    r = parse_benchmark_model(out)
    assert r.warmup.count == 1 and r.warmup.min_ms == r.warmup.max_ms == pytest.approx(2413.337)
    assert r.warmup.std_ms == 0.0
    assert r.inference.avg_ms == pytest.approx(2403.33) and r.warmup_avg_ms == pytest.approx(2413.34)
    assert r.memory_overall_mb is None


def test_oldest_average_timings_line():
    out = ("count=1 curr=83235\n\ncount=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929\n\n"
           "Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9\n")
    r = parse_benchmark_model(out)
    assert (r.init_ms, r.warmup_avg_ms, r.inference_avg_ms) == (38.467, 83.235, pytest.approx(79.7609))
    assert r.first_ms == pytest.approx(83.235)
    assert r.inference.count == 50 and r.inference.min_ms == pytest.approx(77.385)


# -- executor_runner output -------------------------------------------------------------------

def test_executor_runner_with_iterations():
    r = parse_executor_runner(text("executor_runner.txt"))
    assert (r.executions, r.total_ms, r.load_ms, r.method) == (5, 322.5, 97.402, "forward")
    assert r.iterations_ms == [79.204, 61.571, 60.338, 60.702, 60.685]
    assert r.mean_ms == pytest.approx(64.5)


def test_executor_runner_total_only():
    r = parse_executor_runner(text("executor_runner_total_only.txt"))
    assert (r.executions, r.total_ms, r.load_ms, r.iterations_ms) == (10, 625.127, None, [])
    assert r.mean_ms == pytest.approx(62.5127)


def test_executor_runner_failure():
    out = ("I 00:00:00.001257 executorch:executor_runner.cpp:82] Model file m.pte is loaded.\n"
           "E 00:00:00.002001 executorch:method.cpp:764] Missing operator: [0] aten::grid_sampler_2d.out\n"
           "E 00:00:00.002020 executorch:method.cpp:1010] There are 1 instructions don't have corresponding operator registered.\n"
           "F 00:00:00.002031 executorch:executor_runner.cpp:161] In function main(), assert failed (method.ok()): "
           "Loading of method forward failed with status 0x14\n"
           "Aborted\n")
    with pytest.raises(BenchmarkOutputError, match="Loading of method forward failed with status 0x14"):
        parse_executor_runner(out)


# -- commands ---------------------------------------------------------------------------------

def test_cpu_command_exact():
    cfg = AndroidBenchmark(threads=4, warmup_runs=5, num_runs=50)
    assert benchmark_command(cfg, f"{DIR}/frame_fp32.tflite", "cpu") == [
        "adb", "shell", f"{DIR}/benchmark_model", f"--graph={DIR}/frame_fp32.tflite", "--num_threads=4",
        "--warmup_runs=5", "--num_runs=50", "--use_xnnpack=true", "--report_peak_memory_footprint=true"]


def test_taskset_serial_and_options():
    cfg = AndroidBenchmark(adb="/opt/platform-tools/adb", serial="2A131FDH2005UC", cpu_mask="f0", threads=2,
                           op_profiling=True, memory_check_interval_ms=20, min_secs=2.5)
    command = benchmark_command(cfg, f"{DIR}/m.tflite", "cpu")
    assert command[:6] == ["/opt/platform-tools/adb", "-s", "2A131FDH2005UC", "shell", "taskset", "f0"]
    assert command[6] == f"{DIR}/benchmark_model"
    for flag in ("--num_threads=2", "--min_secs=2.5", "--enable_op_profiling=true",
                 "--report_peak_memory_footprint=true", "--memory_footprint_check_interval_ms=20"):
        assert flag in command


def test_gpu_precision_and_nnapi_accelerator():
    fp16 = benchmark_command(AndroidBenchmark(), "/d/m.tflite", "gpu")
    assert "--use_gpu=true" in fp16 and "--gpu_precision_loss_allowed=true" in fp16
    assert "--use_xnnpack=true" not in fp16
    fp32 = benchmark_command(AndroidBenchmark(gpu_precision_loss_allowed=False), "/d/m.tflite", "gpu")
    assert "--gpu_precision_loss_allowed=false" in fp32
    nnapi = benchmark_command(AndroidBenchmark(nnapi_accelerator="qti-dsp"), "/d/m.tflite", "nnapi")
    assert "--use_nnapi=true" in nnapi and "--nnapi_accelerator_name=qti-dsp" in nnapi
    plain = benchmark_command(AndroidBenchmark(report_peak_memory=False), "/d/m.tflite", "nnapi")
    assert not any(a.startswith("--nnapi_accelerator_name") or a.startswith("--report_peak") for a in plain)


def test_push_adb_and_executor_runner_commands():
    cfg = AndroidBenchmark(serial="XYZ")
    assert adb_command(cfg, "devices") == ["adb", "-s", "XYZ", "devices"]
    assert push_commands(cfg, "/host/benchmark_model", f"{DIR}/benchmark_model", executable=True) == [
        ["adb", "-s", "XYZ", "push", "/host/benchmark_model", f"{DIR}/benchmark_model"],
        ["adb", "-s", "XYZ", "shell", "chmod", "+x", f"{DIR}/benchmark_model"]]
    assert push_commands(AndroidBenchmark(), "/h/m.tflite", f"{DIR}/m.tflite") == [
        ["adb", "push", "/h/m.tflite", f"{DIR}/m.tflite"]]
    assert executor_runner_command(AndroidBenchmark(num_runs=7, cpu_mask="f0", executorch_threads=4),
                                   f"{DIR}/m.pte") == [
        "adb", "shell", "taskset", "f0", f"{DIR}/executor_runner", f"--model_path={DIR}/m.pte",
        "--num_executions=7", "--cpu_threads=4"]


@pytest.mark.parametrize("kwargs", [dict(cpu_mask="zz"), dict(cpu_mask="0"), dict(threads=0), dict(num_runs=0),
                                    dict(serial="a b"), dict(device_dir="relative/dir")])
def test_invalid_configuration(kwargs):
    with pytest.raises(InputError):
        AndroidBenchmark(**kwargs)


def test_unknown_delegate():
    with pytest.raises(InputError, match="unknown Android delegate 'hexagon'"):
        benchmark_command(AndroidBenchmark(), "/d/m.tflite", "hexagon")


def test_parse_adb_devices():
    assert parse_adb_devices(text("adb_devices_none.txt")) == []
    assert parse_adb_devices(text("adb_devices_one.txt")) == [("2A131FDH2005UC", "device")]
    assert parse_adb_devices(text("adb_devices_unauthorized.txt")) == [("R58M41XYZ0K", "unauthorized")]


# -- a fake adb on PATH (the `fake_adb` fixture of tests/conftest.py) -----------------------------


def host_files(tmp_path):
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake arm64 binary")
    runner = tmp_path / "xnn_executor_runner"
    runner.write_bytes(b"\x7fELF fake arm64 runner")
    frame = tmp_path / "frame_fp32.tflite"
    frame.write_bytes(b"TFL3" + b"\0" * 1000)
    identity = tmp_path / "identity_fp16.tflite"
    identity.write_bytes(b"TFL3" + b"\0" * 500)
    program = tmp_path / "frame_fp32.pte"
    program.write_bytes(b"ET12" + b"\0" * 700)
    return binary, runner, frame, identity, program


def test_end_to_end_with_fake_adb(tmp_path, fake_adb):
    calls = fake_adb("adb_devices_one.txt")
    binary, runner, frame, identity, program = host_files(tmp_path)
    cfg = AndroidBenchmark(benchmark_model=binary, executor_runner=runner, cpu_mask="f0", threads=4,
                           warmup_runs=5, num_runs=50)
    artifacts = [("frame_fp32_tflite", frame, "frame", "fp32", 123_000_000),
                 ("identity_fp16_tflite", identity, "identity", "fp16", None),
                 ("frame_fp32_pte", program, "frame", "fp32", 123_000_000)]
    messages = []
    out = tmp_path / "android"
    records, failures = run_android_benchmarks(cfg, artifacts, ["cpu", "gpu", "nnapi"], output_dir=out,
                                               progress=messages.append)
    log = calls()
    serial = "2A131FDH2005UC"
    assert log[0] == ["devices"]
    assert all(c[:2] == ["-s", serial] for c in log[1:])  # the chosen phone is named in every later call
    log = [c[2:] for c in log[1:]]
    assert ["shell", "getprop", "ro.product.model"] in log
    assert ["shell", "mkdir", "-p", DIR] in log
    # the binaries are pushed and made executable once, however many models use them
    assert log.count(["push", str(binary), f"{DIR}/benchmark_model"]) == 1
    assert log.count(["shell", "chmod", "+x", f"{DIR}/benchmark_model"]) == 1
    assert log.count(["push", str(runner), f"{DIR}/executor_runner"]) == 1
    assert ["push", str(frame), f"{DIR}/frame_fp32.tflite"] in log
    assert ["push", str(program), f"{DIR}/frame_fp32.pte"] in log
    assert log.index(["push", str(binary), f"{DIR}/benchmark_model"]) < log.index(
        ["shell", "chmod", "+x", f"{DIR}/benchmark_model"])
    runs = [c for c in log if c[0] == "shell" and f"{DIR}/benchmark_model" in c and c[1] == "taskset"]
    assert len(runs) == 6  # 2 models x 3 delegates
    cpu_run = ["shell", "taskset", "f0", f"{DIR}/benchmark_model", f"--graph={DIR}/frame_fp32.tflite",
               "--num_threads=4", "--warmup_runs=5", "--num_runs=50", "--use_xnnpack=true",
               "--report_peak_memory_footprint=true"]
    assert cpu_run in log
    assert any("--use_gpu=true" in c and "--gpu_precision_loss_allowed=true" in c for c in runs)
    assert ["shell", "taskset", "f0", f"{DIR}/executor_runner", f"--model_path={DIR}/frame_fp32.pte",
            "--num_executions=50"] in log

    by_name = {r.name: r for r in records}
    assert sorted(by_name) == sorted([
        "frame_fp32_tflite @ android litert xnnpack 4 threads", "frame_fp32_tflite @ android litert gpu fp16",
        "identity_fp16_tflite @ android litert xnnpack 4 threads", "identity_fp16_tflite @ android litert gpu fp16",
        "frame_fp32_pte @ android executorch"])
    cpu = by_name["frame_fp32_tflite @ android litert xnnpack 4 threads"]
    assert (cpu.kind, cpu.runtime, cpu.device, cpu.configuration) == ("device", "android litert", "Pixel 7",
                                                                      "XNNPACK 4 threads, big cores f0")
    assert (cpu.stats.count, cpu.stats.mean_ms, cpu.stats.min_ms, cpu.stats.max_ms, cpu.stats.stdev_ms) == (
        50, pytest.approx(58.1142), pytest.approx(56.012), pytest.approx(63.35), pytest.approx(1.52))
    assert cpu.stats.p50_ms == pytest.approx(57.903) and cpu.runs_ms is None  # the tool's printed median
    assert (cpu.first_run_ms, cpu.load_ms, cpu.peak_memory_mb) == (pytest.approx(74.21), pytest.approx(31.546), 104.5)
    assert (cpu.model_bytes, cpu.macs, cpu.graph, cpu.precision, cpu.artifact) == (
        1004, 123_000_000, "frame", "fp32", "frame_fp32_tflite")
    assert any("GS201" in n and "Android 14" in n for n in cpu.notes)
    assert any("110.773" in n for n in cpu.notes)
    gpu = by_name["frame_fp32_tflite @ android litert gpu fp16"]
    assert gpu.configuration == "GPU fp16, big cores f0"
    assert gpu.stats.count == 69 and gpu.stats.mean_ms == pytest.approx(14.5023)
    assert any("fp16" in n for n in gpu.notes)
    assert any("TfLiteGpuDelegateV2" in n for n in gpu.notes)
    et = by_name["frame_fp32_pte @ android executorch"]
    assert et.runtime == "android executorch" and et.stats.count == 5
    assert et.stats.mean_ms == pytest.approx(64.5) and et.load_ms == pytest.approx(97.402)
    assert et.runs_ms == [79.204, 61.571, 60.338, 60.702, 60.685]
    assert LatencyRoundTrip.ok(records)
    assert cfg.serial is None  # the caller's configuration is left as it was

    assert sorted((f.name, f.delegate) for f in failures) == [("frame_fp32_tflite", "nnapi"),
                                                              ("identity_fp16_tflite", "nnapi")]
    assert all("Failed to apply NNAPI delegate." in f.message for f in failures)
    saved = sorted(p.name for p in out.iterdir())
    assert "frame_fp32_tflite.cpu.txt" in saved and "frame_fp32_tflite.nnapi.txt" in saved
    assert "frame_fp32_pte.executorch.txt" in saved
    assert (out / "frame_fp32_tflite.gpu.txt").read_text() == text("benchmark_gpu.txt")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert any("Pixel 7" in m for m in messages)


class LatencyRoundTrip:
    @staticmethod
    def ok(records) -> bool:
        from bilayer_mobile.runtime_bench.latency import LatencyRecord, latency_document

        document = latency_document(records, machine={}, settings={})
        return [LatencyRecord.from_dict(d) for d in document["records"]] == records


def test_pte_without_executor_runner_is_a_failure_not_an_abort(tmp_path, fake_adb):
    calls = fake_adb("adb_devices_one.txt")
    binary, _, frame, _, program = host_files(tmp_path)
    records, failures = run_android_benchmarks(
        AndroidBenchmark(benchmark_model=binary),
        [("frame_fp32_pte", program, "frame", "fp32", None), ("frame_fp32_tflite", frame, "frame", "fp32", None),
         ("frame_fp32_onnx", tmp_path / "frame_fp32.onnx", "frame", "fp32", None)],
        ["gpu"])
    assert [r.name for r in records] == ["frame_fp32_tflite @ android litert gpu fp16"]
    assert [(f.name, f.delegate) for f in failures] == [("frame_fp32_pte", "executorch"), ("frame_fp32_onnx", "-")]
    assert "executor_runner" in failures[0].message
    assert not any("executor_runner" in " ".join(c) for c in calls())


def test_no_device_attached(tmp_path, fake_adb):
    fake_adb("adb_devices_none.txt")
    with pytest.raises(NoAndroidDevice, match=r"no Android device attached \(adb devices lists none\)"):
        connected_devices()
    binary, _, frame, _, _ = host_files(tmp_path)
    with pytest.raises(NoAndroidDevice, match="drop --android"):
        run_android_benchmarks(AndroidBenchmark(benchmark_model=binary), [("f", frame, "frame", "fp32", None)])


def test_unauthorized_device(fake_adb):
    fake_adb("adb_devices_unauthorized.txt")
    with pytest.raises(NoAndroidDevice) as info:
        connected_devices()
    assert "R58M41XYZ0K (unauthorized)" in str(info.value) and "USB debugging prompt" in str(info.value)
    assert isinstance(info.value, BilayerError) and not isinstance(info.value, InputError)


def test_serial_not_attached(tmp_path, fake_adb):
    fake_adb("adb_devices_one.txt")
    binary, _, frame, _, _ = host_files(tmp_path)
    with pytest.raises(NoAndroidDevice, match="OTHER123 is not attached"):
        run_android_benchmarks(AndroidBenchmark(benchmark_model=binary, serial="OTHER123"),
                               [("f", frame, "frame", "fp32", None)])


def test_adb_missing_from_path(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(NoAndroidDevice, match="adb \\(adb\\) not found on PATH"):
        connected_devices("adb")


def test_missing_binary_is_an_input_error(tmp_path, fake_adb):
    fake_adb("adb_devices_one.txt")
    _, _, frame, _, _ = host_files(tmp_path)
    with pytest.raises(InputError, match="benchmark_model binary .* does not exist"):
        run_android_benchmarks(AndroidBenchmark(benchmark_model=tmp_path / "nope"), [("f", frame, "frame", "fp32", None)])
