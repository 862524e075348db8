"""An experiment: a main study and its stages (search phases, growth, validation), their state, decision.

``state.py`` reads an experiment from the database and moves it on; ``growth.py`` (box growth and the
refinement box), ``validation.py`` (held-out decision) and ``window.py`` (the window stage's candidate
windows) are its stages' rules; ``on_demand.py`` enqueues a validation round for ``skiptune validate``.
"""
