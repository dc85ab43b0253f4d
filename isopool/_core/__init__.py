"""The process engine: workers, the fork server, frames, and the monitor that supervises them.

Knows nothing of the Task API above it nor of Redis: what it needs of a task is
``run.Runnable``, and it imports only ``isopool._errors`` and ``isopool._spec`` from outside.
See the layout comment in ``isopool/__init__.py``.
"""
