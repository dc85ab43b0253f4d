"""The distributed layer: the Redis queue, its workers, remote nodes, the dashboard.

Imported lazily (``isopool.__getattr__``); it imports the API and the engine, never the
other way round. See the layout comment in ``isopool/__init__.py``.
"""
