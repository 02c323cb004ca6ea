"""Feature extraction: plan rows in, backbone features in HDF5 shards out."""
