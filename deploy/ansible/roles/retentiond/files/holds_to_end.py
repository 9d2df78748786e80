"""Print (JSON) the ids of the holds the deletion log shows in force that the config no longer
has: holds whose files were removed from the holds folder. retentiond refuses the runs of their
rules until they are ended explicitly (`run --once --end-hold ID`); the role ends them.

Run by the role with retentiond's own Python:
`python holds_to_end.py /etc/retentiond/retentiond.yaml`.
Reads only: the config, the holds folder and the deletion log.
"""

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from retentiond.config.loader import load_config
from retentiond.engine.holds import vanished_holds
from retentiond.evidence.history import read_history
from retentiond.evidence.log.opening import log_path

config = load_config(Path(sys.argv[1])).config
history = read_history(log_path(config))
print(json.dumps(vanished_holds(history.holds, config.holds, datetime.now(UTC), config.zone())))
