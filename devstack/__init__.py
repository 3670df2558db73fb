"""Development tooling outside the core: the ``keyun`` command (process supervisor),
the embedded stores and simulators it starts, and the demo province."""
