"""Background jobs: the SQLite queue (store), the scheduler that starts worker processes
(scheduler), one job's process (worker), process helpers (processes) and hardware probing
(hardware)."""
