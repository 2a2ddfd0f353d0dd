"""What a running process holds, shared by the server, the gateway and the release controller:
the database engine, the key cache, the model catalog and the ingest pipeline, built once from
:class:`~bastion.settings.Settings`."""

from bastion.services.state import SIMULATOR_PRICES, STATE, AppState, build_state, load_catalog

__all__ = ["SIMULATOR_PRICES", "STATE", "AppState", "build_state", "load_catalog"]
