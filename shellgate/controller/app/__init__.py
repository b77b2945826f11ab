"""The application shell: command line, process options, serve, health and logging."""
