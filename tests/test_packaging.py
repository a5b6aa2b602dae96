"""README's install (`pip install -r requirements.txt`, whose last line is `pip install -e .`)
makes the library importable from any folder, from this checkout, and the scripts then run
from anywhere without editing sys.path.

The check runs the interpreter of the tests from another folder, with nothing on PYTHONPATH:
it needs no network, no build tools and no second environment, so it holds in a fresh
virtualenv and in a system Python alike."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses or compilation: outside the inner loop

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_package_is_this_checkout_from_any_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = ("import importlib.metadata as md, bntt\n"
             "from bntt import BNTT, LIFNeuron, poisson_spikes, SNN_VGG9_BNTT, SpikingBlock\n"
             "from bntt.data import load_arrays\n"
             "print(bntt.__file__)\n"
             "print(md.distribution('bntt').version)\n"
             "print(tuple(load_arrays('fashionmnist_subset', '.')[0].shape))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, ("bntt is not importable outside the checkout; run "
                                    "`python -m pip install -e .`: " + result.stderr[-2000:])
    module, version, shape = result.stdout.split("\n")[:3]
    assert Path(module) == ROOT / "bntt" / "__init__.py", (
        f"bntt is installed from {Path(module).parent.parent}, not from this checkout: run "
        "`python -m pip install -e .` here")
    assert version == "0.1.0"
    assert shape == "(2000, 1, 32, 32)"  # the bundled data is found from anywhere

    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "speed" / "benchmark.py"), "--help"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert script.returncode == 0 and "peak memory" in script.stdout, script.stderr[-2000:]
