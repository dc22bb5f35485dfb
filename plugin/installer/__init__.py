"""Setting up the backend's virtual environment from inside QGIS ("Set up backend…").

Every module here except ``runner`` and ``backend_setup`` is pure stdlib, so the decisions (which
torch build, which Python, which folder, which commands, what an error means) are unit-tested
without Qt, QGIS or a network. ``runner`` executes the plan with QProcess; ``backend_setup``
drives the whole set-up. Nothing here imports torch, and nothing is ever installed into QGIS's
own Python.
"""
