"""The engine: the run state machine, apps and tasks, result handles and the worker.

It imports the canvas layer and never a driver: drivers implement the ports in
`stem.engine.ports` and are found by URL scheme.
"""
