"""A reference kas (GitLab agent server) in Python, for tests, benchmarks and the local demo."""
