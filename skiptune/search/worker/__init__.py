"""The worker: its loop and the runners of its units of work, and what keeps them safe.

``loop.py`` (load the model once, pick work, run it) runs search trials (``trial_run.py``; a window
stage's screen is a phase of enqueued search trials, one per sigma window) and
validation jobs (``validation_run.py``) under a heartbeat (``heartbeat.py``), sweeps dead workers'
units (``stale.py``), rides out outages (``resilience.py``), stops gracefully (``stopping.py``), keeps
one precision per study (``precision.py``) and builds the objective a study describes (``objective.py``).
"""
