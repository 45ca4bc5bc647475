"""The package as pip installs it: a wheel built from the project, installed outside the checkout.

The wheel must hold the pipeline under the `bilayer_mobile` namespace only (no top-level
`reference`, `export`, `runtime_bench`), the face photos as package data and the console script;
installed into a bare directory, it must import, find its photos there (not in the checkout) and
run `bilayer-mobile info` from a directory outside the checkout. The development venv has the
project installed editable; the subprocesses check every module's `__file__`, so that install
cannot make this pass.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bilayer_mobile.reference.face_samples import PHOTO_NAMES

PROJECT = Path(__file__).resolve().parents[1]
TINY_RUN = PROJECT.parent / "shared" / "spec" / "golden_tiny" / "runs" / "bilayer_tiny"
SOURCES = ["pyproject.toml", "README.md", "bilayer_mobile", "reference", "export", "runtime_bench"]

# About 20-25 s on 2 cores (a wheel build, a pip install and three interpreters that import torch).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (no isolation, no dependencies) from a copy of the project's sources."""
    root = tmp_path_factory.mktemp("packaging")
    copy = root / "src"
    copy.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=ignore)
        else:
            shutil.copy2(source, copy / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--quiet", "-w", str(root / "dist"), str(copy)],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    wheels = list((root / "dist").glob("bilayer_mobile-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def site(wheel) -> Path:
    """The wheel installed (no dependencies) into a bare directory, as `pip install --target`."""
    target = wheel.parent.parent / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-warn-script-location",
                           "--disable-pip-version-check", "--quiet", "--target", str(target), str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return target


def run_outside(site: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c code args` from a directory outside the checkout, the installed copy first."""
    cwd = site.parent / "elsewhere"
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_wheel_holds_one_namespace_the_photos_and_the_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    tops = {n.split("/")[0] for n in names}
    assert tops == {"bilayer_mobile", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    for module in ("cli.py", "reference/__init__.py", "reference/face_samples.py", "export/__init__.py",
                   "export/calibration.py", "runtime_bench/__init__.py", "runtime_bench/validate.py"):
        assert f"bilayer_mobile/{module}" in names, module
    for photo in (*PHOTO_NAMES, "README.md"):
        assert f"bilayer_mobile/reference/photos/{photo}" in names, photo
    assert "bilayer-mobile = bilayer_mobile.cli:main" in entry_points
    for dependency in ("torch==2.13.0", "onnxruntime", "litert-torch", "ai-edge-litert", "matplotlib"):
        assert f"Requires-Dist: {dependency}" in metadata, dependency


CHECK_INSTALLED = """
import json, sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
import bilayer_mobile, bilayer_mobile.cli, bilayer_mobile.export.calibration, bilayer_mobile.runtime_bench.validate
from bilayer_mobile.reference import face_samples
modules = [m for name, m in sys.modules.items() if name == "bilayer_mobile" or name.startswith("bilayer_mobile.")]
outside = [m.__name__ for m in modules if not Path(m.__file__).resolve().is_relative_to(site)]
photos = {name: str(face_samples.photo_path(name)) for name in face_samples.PHOTO_NAMES}
loaded = [p.name for p in face_samples.load_face_photos()]
print(json.dumps({"outside": outside, "photos": photos, "loaded": loaded, "count": len(modules)}))
"""


def test_installed_package_imports_and_finds_its_photos_in_site(site):
    done = run_outside(site, CHECK_INSTALLED, str(site))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["count"] > 10 and found["outside"] == [], found
    assert found["loaded"] == ["source", "target"]
    for name, path in found["photos"].items():
        path = Path(path).resolve()
        assert path == (site / "bilayer_mobile" / "reference" / "photos" / name).resolve()
        assert path.is_file() and not path.is_relative_to(PROJECT)


RUN_CLI = """
import sys
from pathlib import Path
import bilayer_mobile.cli as cli
assert Path(cli.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), cli.__file__
sys.exit(cli.main(sys.argv[2:]))
"""


def test_installed_command_runs_info_outside_the_checkout(site):
    if not TINY_RUN.is_dir():
        pytest.fail(f"{TINY_RUN} is missing: the tests need ../shared beside the project")
    done = run_outside(site, RUN_CLI, str(site), "info", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    done = run_outside(site, RUN_CLI, str(site), "info", str(TINY_RUN), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["networks"] and 0 < report["mean_uv_displacement_px"] < 1000


def test_installed_console_script(site):
    script = site / "bin" / "bilayer-mobile"
    assert script.is_file()
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                          cwd=site.parent / "elsewhere" if (site.parent / "elsewhere").is_dir() else site.parent,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    assert "info" in done.stdout and "export" in done.stdout
