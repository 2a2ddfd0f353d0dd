"""The one C extension; everything else about the package is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # OTLP protobuf read straight from the wire bytes, a fast path. Optional: without a C
        # compiler the install still succeeds, and the protobuf runtime reads every request.
        Extension(
            "bastion.tracing._otlp_wire",
            sources=["src/bastion/tracing/_otlp_wire.c"],
            optional=True,
        )
    ]
)
