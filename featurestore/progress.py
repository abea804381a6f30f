"""The one progress-callback type: the library never prints, it reports progress through this.

``progress(advanced, total)``: ``advanced`` units (rows, vectors) were done since the last call,
out of ``total``. The CLI turns these calls into a progress bar with rate and ETA.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[float, int], None]
