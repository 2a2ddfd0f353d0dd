"""The ``bastion`` command."""
