"""`pip install -e .` makes the library importable from any folder, and the scripts then run
from anywhere without editing sys.path."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_imports_from_another_folder(tmp_path):
    venv = tmp_path / "venv"
    # System packages stay visible (torch, and the pip and setuptools that do the install), so
    # nothing is downloaded; the install itself lands in the new environment.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--no-index", "--disable-pip-version-check", "-q", "-e", str(ROOT)],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import importlib.metadata as md, bntt\n"
             "from bntt import BNTT, LIFNeuron, poisson_spikes, SNN_VGG9_BNTT\n"
             "from bntt.data import load_arrays\n"
             "print(bntt.__file__)\n"
             "print(md.distribution('bntt').locate_file(''))\n"
             "print(tuple(load_arrays('fashionmnist_subset', '.')[0].shape))\n")
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env,
                            cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    module, dist_dir, shape = result.stdout.split("\n")[:3]
    assert Path(module) == ROOT / "bntt" / "__init__.py"  # editable: the checkout itself
    assert Path(dist_dir).resolve().is_relative_to(venv.resolve())  # installed in this venv
    assert shape == "(2000, 1, 32, 32)"  # the bundled data is found from anywhere

    script = subprocess.run([python, str(ROOT / "scripts" / "speed" / "benchmark.py"), "--help"],
                            capture_output=True, text=True, env=env, cwd=elsewhere)
    assert script.returncode == 0 and "peak memory" in script.stdout, script.stderr[-2000:]
