"""The paper's analyses of trained networks, one module per `analyze.py` subcommand: early exit
(early_exit_report.py, also evaluate.py), spike rates and energy (activity.py) and robustness to
noise and attacks (robustness.py); the seeded pass over the test set they score with
(scoring.py) and the report they write (report.py)."""
