"""The paper's analyses of trained networks, one module per `analyze.py` subcommand: spike
rates and energy (activity.py) and robustness to noise and attacks (robustness.py)."""
