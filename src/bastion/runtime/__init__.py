"""Process runtime pieces shared by every layer above it: blocking work on threads that
shutdown waits for, single-flight reloads and polling loops. Imports nothing of Bastion's."""
