"""An experiment: a main study and its stages (search phases, growth, validation), their state, decision.

``state.py`` reads an experiment from the database and moves it on; ``growth.py`` and ``validation.py``
are its stages' rules; ``on_demand.py`` enqueues a validation round for ``skiptune validate``.
"""
