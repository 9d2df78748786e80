"""The daemon: scheduling, run processes, sd_notify, metrics, pings."""
