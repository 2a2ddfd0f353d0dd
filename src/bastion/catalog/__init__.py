"""The model catalog: prices per million tokens, context windows, deprecation dates, span cost."""

from bastion.catalog.catalog import Catalog, ModelInfo

__all__ = ["Catalog", "ModelInfo"]
