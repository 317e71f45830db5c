"""Suite-wide setup: the suite is hermetic against plugins installed beside ladle.

Only the ``ladle`` distribution's plugins load (``LADLE_PLUGIN_DISTRIBUTIONS``), in this process
and in every server or worker process a test starts; tests that install a third-party plugin on
purpose run their commands with ``offline_venv.open_environment()``.
"""

from __future__ import annotations

import os

from ladle.plugin_host import DISTRIBUTIONS_VARIABLE

os.environ[DISTRIBUTIONS_VARIABLE] = "ladle"
