"""Dataset engine: registry, downloads, synthetic sets, HDF5 shards and loaders."""
