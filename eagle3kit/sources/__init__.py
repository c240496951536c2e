"""The built-in sources. Each module is a plugin, registered through the ``eagle3kit``
entry points in eagle3kit's ``pyproject.toml`` exactly like a third-party one.

``samples/`` holds small raw files in each source's own format, written for this
project, used by the README's main job and by the tests.
"""

from pathlib import Path

SAMPLES = Path(__file__).parent / "samples"
