"""converter_chatter_to: what converters print at any level goes to the log, not the console."""
import ctypes
import logging
import os
import subprocess
import sys

from bilayer_mobile.console import converter_chatter_to


def test_python_c_and_child_process_output_and_the_tools_log_records_go_to_the_log(tmp_path, capfd):
    log_path = tmp_path / "reports" / "export.log"
    with converter_chatter_to(log_path) as console:
        os.write(1, b"fd1 from python\n")
        os.write(2, b"fd2 from python\n")
        ctypes.CDLL(None).write(2, b"fd2 from the C library\n", 23)  # as a C++ converter writes
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'fd2 from a child process\\n')"], check=True)
        logging.getLogger("bilayer_mobile.export.tflite").info("converting FrameGraph")
        print("progress line", file=console)
    log = log_path.read_text()
    for line in ("fd1 from python", "fd2 from python", "fd2 from the C library", "fd2 from a child process",
                 "[bilayer_mobile.export.tflite] converting FrameGraph"):
        assert line in log, line
    seen = capfd.readouterr()
    assert "progress line" in seen.err and "progress line" not in log  # the console is the real stderr
    assert "fd2 from" not in seen.err + seen.out
    os.write(2, b"after the block\n")  # the descriptors are restored
    assert "after the block" in capfd.readouterr().err and "after the block" not in log_path.read_text()
