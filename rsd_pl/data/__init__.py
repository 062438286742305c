"""Demonstration data: LIBERO-format HDF5, normalisation, chunking, observation processing."""
