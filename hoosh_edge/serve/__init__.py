"""Running the process: gevent set-up, the listener and its connections, systemd, the watchdog."""
