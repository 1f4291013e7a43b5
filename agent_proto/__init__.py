"""The project's own .proto files for GitLab's agentk <-> kas wire protocol, and the generated code."""
