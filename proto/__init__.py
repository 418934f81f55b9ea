"""Versioned wire definitions. The generated stubs are built by the install step (`proto.build`);
importing this package builds them if they are missing or older than the .proto files."""

from proto.build import generate as _generate

_generate()
