"""Parallel execution: a graph of chat calls, each run as soon as its dependencies finish.

One module, one job; callers import from the module that owns a name:

* :mod:`.graph`      the run's body parsed and checked, before anything is sent;
* :mod:`.templates`  ``{{id}}`` placeholders: found, filled, the filled size;
* :mod:`.answers`    a task's HTTP answer decoded, and its text;
* :mod:`.results`    one result per task, the run's summary;
* :mod:`.executor`   the graph run on a task group, ``max_workers`` at once;
* :mod:`.gate`       the process-wide upstream pool gate and its fan-out share;
* :mod:`.tenants`    runs and tasks in flight per credential;
* :mod:`.endpoint`   a caller's run: its tasks through the gateway, within those limits.

Nothing is imported here: the gateway imports the gate, and the endpoint the gateway.
"""
